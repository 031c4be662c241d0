"""A poison shard, released visibly: `tsd release` refuses a job folder with planned shards missing,
unless `--allow-missing N` covers them; then the manifest, the index and the dataset card say
exactly which shards and how many samples are missing, and `tsd verify` reports them as missing,
not as damage."""
import json
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq

from pipeline.contract.layout import CARD, INDEX, MANIFEST, SHARD_SUFFIX, STATS_SUFFIX
from pipeline.stages import jobdir


def tsd(*args):
    env = dict(os.environ, RAY_ADDRESS="")
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)


def test_release_without_a_failed_shard_says_what_is_missing(small_release, tmp_path):
    root = tmp_path / "job"
    shutil.copytree(small_release["root"], root)
    for name in (MANIFEST, INDEX, CARD):   # as `tsd generate` leaves it: shards, no release files yet
        (root / name).unlink()
    base = small_release["manifest"]
    lost = next(s for s in base["shards"] if s["kind"] == "mix")   # the shard that failed every retry
    for suffix in (SHARD_SUFFIX, STATS_SUFFIX):
        (root / f"{lost['name']}{suffix}").unlink()
    job = root / jobdir.WORK / "job.yaml"

    refused = tsd("release", job, "--out", root)
    lines = [x for x in refused.stderr.splitlines() if x.strip()]
    assert refused.returncode != 0 and len(lines) == 1, refused.stderr
    assert f"1 planned shard(s) are not generated (first: {lost['name']})" in lines[0]
    assert "--allow-missing 1" in lines[0]
    assert not (root / MANIFEST).exists() and not (root / INDEX).exists()

    made = tsd("release", job, "--out", root, "--allow-missing", "1")
    assert made.returncode == 0, made.stderr
    assert f"MISSING 1 shard(s), {lost['count']} planned samples: {lost['name']}" in made.stdout
    manifest = json.loads((root / MANIFEST).read_text())
    assert manifest["missing"] == {"shards": [{"name": lost["name"], "kind": "mix", "split": "train",
                                               "planned": lost["count"]}], "samples": lost["count"]}
    assert lost["name"] not in {s["name"] for s in manifest["shards"]}
    assert manifest["counts"]["mix/train"] == base["counts"]["mix/train"] - lost["count"]
    index = pq.read_table(root / INDEX).to_pandas()
    assert len(index) == sum(base["counts"].values()) - lost["count"]
    assert lost["name"] not in set(index["shard"])
    card = (root / CARD).read_text()
    assert "Incomplete release" in card and f"| {lost['name']} | {lost['count']} |" in card

    verified = tsd("verify", root)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"MISSING {lost['name']}: {lost['count']} planned samples not generated" in verified.stdout
    assert "BAD" not in verified.stdout and verified.stdout.strip().endswith("OK")
