"""Development measurement, not a test: how much the tiny teacher's pretraining helps the probe.

`python bench/measure_tiny_pretrain.py OUT [STEPS]` runs the demo's probe (the real ingest → probe
path) on the random teacher, then on the pretrained one, and prints both accuracies.
"""
import json
import os
import sys
from pathlib import Path

import yaml

from pipeline.config import load_job
from pipeline.demo.pretrain import pretrain_teacher
from pipeline.demo.runner import SIZES, job_config
from pipeline.testing.tiny import TinySizes, build_teacher
from pipeline.testing.toydata import write_toy_dataset
from pipeline.sources.ingest import ingest
from pipeline.stages.probe import run_probe


def measure(out: str | Path, steps: int = 600) -> dict:
    """The demo's probe (real ingest → probe path) on the random teacher, then on the pretrained one."""

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(out)
    sizes = TinySizes()
    write_toy_dataset(out / "source", num_classes=10, per_class=60, seed=0)
    if not (out / "ingest" / "index.parquet").is_file():
        ingest(out / "source", out / "ingest", val_fraction=0.15, seed=0)
    weights = build_teacher(out / "models", sizes, 0)

    def probe(tag):
        job = job_config({"teacher": str(weights), "image-mixer": str(out)}, str(out / "ingest" / "index.parquet"),
                         SIZES["demo"])
        path = out / f"job-{tag}.yaml"
        path.write_text(yaml.safe_dump(job, sort_keys=False))
        return run_probe(load_job(path), out / f"probe-{tag}", device="cpu")

    random_probe = probe("random")
    metrics = pretrain_teacher(weights, sizes, seed=0, corpus_dir=out / "corpus", steps=steps)
    trained_probe = probe("pretrained")
    report = {"pretrain": metrics, "probe_val_top1_random": random_probe["val_top1"],
              "probe_val_top1_pretrained": trained_probe["val_top1"],
              "probe_train_top1_pretrained": trained_probe["train_top1"]}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    measure(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
