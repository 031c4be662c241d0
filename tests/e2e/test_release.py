"""The small release made by the real pipeline: counts agree across manifest, index and shards,
stock webdataset reads every shard, and verify catches a flipped byte."""
import json
import shutil

import pyarrow.parquet as pq
import webdataset as wds

from pipeline.contract.layout import INDEX, MANIFEST
from pipeline.tools.verify import verify_release


def test_counts_agree_between_manifest_index_and_shards(small_release):
    root = small_release["root"]
    manifest = json.loads((root / MANIFEST).read_text())
    index = pq.read_table(root / INDEX).to_pylist()
    for shard in manifest["shards"]:
        url = str(root / f"{shard['name']}.tar")
        keys = [s["__key__"] for s in wds.WebDataset(url, shardshuffle=False)]
        assert len(keys) == shard["count"]
        assert sorted(keys) == sorted(r["uid"] for r in index if r["shard"] == shard["name"])
    for key, n in manifest["counts"].items():
        kind, split = key.split("/")
        assert n == sum(1 for r in index if r["kind"] == kind and r["split"] == split) > 0


def test_verify_passes_then_names_the_shard_with_a_flipped_byte(small_release, tmp_path):
    root = tmp_path / "release"
    shutil.copytree(small_release["root"], root)
    assert verify_release(root) == []
    victim = json.loads((root / MANIFEST).read_text())["shards"][1]["name"]
    path = root / f"{victim}.tar"
    data = bytearray(path.read_bytes())
    data[700] ^= 0x01
    path.write_bytes(bytes(data))
    problems = verify_release(root)
    assert problems and {what for what, _ in problems} == {victim}


def _copy(small_release, tmp_path):
    root = tmp_path / "release"
    shutil.copytree(small_release["root"], root)
    return root, json.loads((root / MANIFEST).read_text())


def test_verify_names_a_deleted_shard_and_a_removed_index_row(small_release, tmp_path):
    import pyarrow as pa

    root, manifest = _copy(small_release, tmp_path)
    gone, thinned = manifest["shards"][0]["name"], manifest["shards"][-1]["name"]
    (root / f"{gone}.tar").unlink()
    table = pq.read_table(root / INDEX)
    drop = table.column("shard").to_pylist().index(thinned)
    pq.write_table(pa.concat_tables([table.slice(0, drop), table.slice(drop + 1)]), root / INDEX)
    problems = dict(verify_release(root))
    assert problems[gone] == "missing"
    assert "index has" in problems[thinned] and "manifest says" in problems[thinned]
    assert dict(verify_release(root, quick=True)).keys() == problems.keys()


def test_verify_cli_exit_codes(small_release, tmp_path):
    import subprocess
    import sys

    root, manifest = _copy(small_release, tmp_path)
    cmd = [sys.executable, "-m", "pipeline.cli", "verify", str(root)]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    victim = manifest["shards"][2]["name"]
    with open(root / f"{victim}.tar", "r+b") as f:  # same size: only the full check can see it
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 1 and f"BAD {victim}: sha256" in proc.stdout
    quick = subprocess.run(cmd + ["--quick"], capture_output=True, text=True)
    assert quick.returncode == 0  # sizes and counts only: documented as such


def test_every_output_file_has_the_plain_mode(small_release):
    """What a plain open() makes (0644 under the usual umask): shards, stats, manifest, index, card,
    the teacher head, the plan and the demo's model files (safetensors and diffusers write 0600)."""
    import os

    umask = os.umask(0o022)
    os.umask(umask)
    files = [p for p in small_release["root"].rglob("*") if p.is_file() and "source" not in p.parts]
    assert len(files) > 30 and any(p.suffix == ".safetensors" for p in files)
    wrong = [f"{p}: {oct(p.stat().st_mode & 0o777)}" for p in files if p.stat().st_mode & 0o777 != 0o666 & ~umask]
    assert not wrong, wrong
