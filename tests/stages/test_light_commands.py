"""`tsd plan --dry-run`, `tsd release` and `tsd status` load no model: they import no torch (about 5 s and 840 MiB
against 0.24 s and 48 MiB). Each runs as a user runs it, in its own interpreter, which then reports
what it imported."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.contract.files import atomic_write, write_json
from pipeline.contract.ids import make_uid
from pipeline.contract.layout import HEAD_FILE, INDEX_COLUMNS, PROBE_METRICS
from pipeline.contract.shards import publish_shard, shard_identity
from pipeline.sources.index import write_index
from paths import REPO

HEAVY = ("torch", "timm", "ray", "diffusers", "transformers")
# the CLI as `tsd` runs it, then the heavy modules this interpreter imported, as the last line
RUN_CLI = ("import json, sys\nfrom pipeline.cli import main\ncode = main(sys.argv[1:])\n"
           f"print(json.dumps([code, sorted(m for m in {HEAVY!r} if m in sys.modules)]))\n")


def tsd_imports(*args: str, cwd=REPO) -> tuple[int, list[str], str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", RUN_CLI, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    code, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    return code, heavy, done.stdout


def test_plan_dry_run_of_the_paper_recipe_imports_no_torch():
    code, heavy, out = tsd_imports("plan", "manifests/cub200.yaml", "--dry-run")
    assert code == 0 and "GPU" in out
    assert heavy == []


def small_job_folder(folder: Path) -> Path:
    """A job folder as generate leaves it (index, plan, published shards, probed head), built without
    a model: 6 train and 2 val images, a mixup pool of 6."""
    from pipeline.config import JobConfig
    from pipeline.contract.configlib import build
    from pipeline.stages.jobdir import JobFolder, plan_path
    from pipeline.stages.plan import write_plan

    classes = ["a", "b"]
    rows = [{"uid": make_uid("light", i), "path": f"/data/{i}.jpg", "relpath": f"{i}.jpg", "label": i % 2,
             "class_name": classes[i % 2], "split": "train" if i < 6 else "val", "sha256": "0" * 64,
             "width": 320, "height": 240, "source_mode": "RGB"} for i in range(8)]
    rows.sort(key=lambda r: r["uid"])
    write_index(folder / "index.parquet", rows, classes, {"min_size": 16})
    doc = {"seed": 0, "data": {"index": str(folder / "index.parquet"), "store_size": 64},
           "teacher": {"arch": "vit_small_patch14_dinov2", "img_size": 56}, "views": {"k": 2},
           "generator": {"kind": "mixup", "size": 64}, "generate": {"shard_size": 4}}
    job_file = folder / "job.yaml"
    job_file.write_text(yaml.safe_dump(doc))
    plan = write_plan(build(JobConfig, doc), plan_path(folder))
    atomic_write(folder / HEAD_FILE, b"not read: the release records its sha256")
    makers = JobFolder(build(JobConfig, doc), str(folder)).makers(plan.fingerprint)
    for name in plan.shard_names():
        uids = plan.table(name, ["uid"]).column("uid").to_pylist()
        samples = [{"uid": u, "teacher_top1": 0, "teacher_entropy": 0.5} for u in uids]
        publish_shard(str(folder), name, b"\0" * 1024,
                      {"kind": name.split("/")[0], "count": len(uids), "planned": len(uids), "failures": [],
                       "samples": samples, "seconds": 0.0, "device": "none", **shard_identity(name, **makers)})
    # what the probe records of its backbone (so the release need not build it)
    write_json(folder / PROBE_METRICS, {"val_top1": 0.5, "backbone": {"mean": [0.5] * 3, "std": [0.25] * 3,
                                                                      "feature_dim": 768}})
    return job_file


def test_release_imports_no_torch(tmp_path):
    job_file = small_job_folder(tmp_path)
    code, heavy, out = tsd_imports("release", str(job_file), "--out", str(tmp_path))
    assert code == 0 and "release:" in out
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["teacher"]["feature_dim"] == 768 and manifest["teacher"]["std"] == [0.25] * 3
    assert heavy == []
    # the index's columns are the contract's, in its order, with its types
    import pyarrow.parquet as pq

    schema = pq.read_schema(tmp_path / "index.parquet")
    # (Arrow spells float64 'double'; a list's item field is named 'element' once through Parquet)
    assert [(f.name, re.sub(r"list<\w+: ", "list<", str(f.type))) for f in schema] == \
        [(name, kind.replace("float64", "double")) for name, kind in INDEX_COLUMNS]
    assert pq.read_table(tmp_path / "index.parquet").num_rows == manifest["counts"]["real/train"] + \
        manifest["counts"]["real/val"] + manifest["counts"]["mix/train"]


def test_status_imports_no_torch(tmp_path):
    """`tsd status` reads markers, shard stats and manifests: no model, no Ray."""
    job_file = small_job_folder(tmp_path)
    code, heavy, out = tsd_imports("status", str(tmp_path), "--job", str(job_file))
    assert code == 0 and heavy == []
    assert "  probe    to do  not run yet" in out and "status: to run: probe, plan, generate, release, verify" in out
