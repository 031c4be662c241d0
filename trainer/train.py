"""`tsd train CONFIG --out RUN`: distil (or finetune) a student from releases, with no teacher,
Ray, diffusers or transformers in the process.

One process per device; under torchrun the processes form a DDP group (see `trainer.processes`).
Outputs (RUN = the run folder): log.jsonl, tb/ (TensorBoard), config.yaml, checkpoints/step-N/
{model.safetensors, projector.safetensors, state.pt}, and at the end metrics.json,
student.safetensors and student.json. `--resume` continues a killed run bitwise exactly on the
CPU (see `trainer.loop`).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline.contract import storage
from pipeline.contract.configlib import parse_overrides
from pipeline.contract.errors import UserError

from .config import TrainConfig, check_releases, load_config
from .loop import train
from .processes import Processes
from .release import ReleaseSet


def run_training(config: TrainConfig, out_dir, resume: bool = False, releases: ReleaseSet | None = None) -> dict:
    """Train a student as configured into `out_dir`; returns the metrics (also in metrics.json)."""
    if storage.is_url(out_dir):  # checkpoints are folders renamed into place, which object stores lack
        raise UserError(f"--out {out_dir}: the run folder must be a local path (releases may be URLs); "
                        "copy the finished run to object storage afterwards")
    releases = releases if releases is not None else check_releases(config)
    procs = Processes(config.runtime.device)
    try:
        metrics = train(config, releases, Path(out_dir), resume, procs)
        procs.barrier()  # on success only: after a failure torchrun stops the other ranks
        return metrics
    finally:
        procs.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training config (YAML), e.g. manifests/train-demo.yaml")
    parser.add_argument("--out", required=True, help="run folder: logs, checkpoints, the student")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=0.001 (repeatable)")


def run(args: argparse.Namespace) -> int:
    """`tsd train CONFIG --out DIR [--resume] [--set key=value ...]` (under torchrun for DDP)."""
    config, releases = load_config(args.config, parse_overrides(args.set))
    metrics = run_training(config, args.out, args.resume, releases)
    train, val = metrics["train"], metrics["val"]
    if train["world"] > 1:
        print(f"[rank {os.environ.get('RANK', 0)}/{train['world']}] done: {train['steps_this_run']} steps "
              f"this run, {train['steps']} in all", flush=True)
    if os.environ.get("RANK", "0") == "0":
        print(f"trained {config.student.arch} for {train['steps']} steps ({train['mode']}): val top1 "
              f"{val['top1']:.4f}, agreement with the teacher {val['agreement']:.4f} → {args.out}", flush=True)
    return 0

