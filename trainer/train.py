"""`tsd train CONFIG --out RUN`: distil (or finetune) a student from releases, with no teacher,
Ray, diffusers or transformers in the process.

One process per device; under torchrun the processes form a DDP group (see `trainer.processes`).
Outputs (RUN = the run folder): log.jsonl, tb/ (TensorBoard), config.yaml, checkpoints/step-N/
{model.safetensors, projector.safetensors, state.pt, checksums.json}, and at the end metrics.json,
student.safetensors and student.json. `--resume` continues a killed or stopped run bitwise exactly
on the CPU (see `trainer.loop`). A folder holding a run is refused without `--resume` or
`--overwrite`, and `RUN/train.lock` keeps a second trainer out (see `trainer.runfolder`). SIGTERM
or SIGINT: a checkpoint at the next step boundary, then exit status 128 + the signal number.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.contract import storage
from pipeline.contract.configlib import ConfigError, load, parse_overrides
from pipeline.contract.errors import UserError

from .config import TrainConfig, check_releases, load_config
from .loop import train
from .processes import Processes
from .release import ReleaseSet
from .runconfig import SAVED, note_ignored, resume_command, saved_config
from .runfolder import claim
from .runlog import val_headline
from .stopping import Stopped


def run_training(config: TrainConfig, out_dir, resume: bool = False, releases: ReleaseSet | None = None,
                 overwrite: bool = False) -> dict:
    """Train a student as configured into `out_dir`; returns the metrics (also in metrics.json).

    Refuses a folder that holds a run unless `resume` (continue it) or `overwrite` (replace it), and
    a folder another trainer is running in. Raises `Stopped` after a SIGTERM/SIGINT checkpoint."""
    if storage.is_url(out_dir):  # checkpoints are folders renamed into place, which object stores lack
        raise UserError(f"--out {out_dir}: the run folder must be a local path (releases may be URLs); "
                        "copy the finished run to object storage afterwards")
    releases = releases if releases is not None else check_releases(config)
    out = Path(out_dir)
    procs = Processes(config.runtime.device)
    lock = None
    try:
        refusal = None
        if procs.main:  # rank 0 decides for every rank: one lock, one answer
            try:
                lock = claim(out, resume, overwrite)
            except UserError as e:
                refusal = str(e)
        refusal = procs.gather(refusal)[0]
        if refusal:
            raise UserError(refusal)
        metrics = train(config, releases, out, resume, procs)
        procs.barrier()  # on success only: after a failure torchrun stops the other ranks
        return metrics
    finally:
        if lock is not None:
            lock.release()
        procs.close()


def load_run_config(config_path: str | None, out: Path, resume: bool,
                    overrides: dict) -> tuple[TrainConfig, ReleaseSet]:
    """What the run trains with: CONFIG and its --sets for a new run; with --resume, the run's own
    saved config (see `trainer.runconfig`), or CONFIG when the folder holds no run yet."""
    if not (resume and (out / SAVED).is_file()):
        if config_path is None:
            raise UserError(f"a training config is needed: tsd train CONFIG --out {out}"
                            + (f" (--resume: {out} holds no {SAVED}, so no run to continue)" if resume else ""))
        return load_config(config_path, overrides)
    config = saved_config(out, overrides)
    if config_path is not None:
        note_ignored(config_path, load(TrainConfig, config_path, overrides), config)
    try:
        return config, check_releases(config)
    except ConfigError as e:
        raise ConfigError(f"{out / SAVED}: {e}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="training config (YAML), e.g. manifests/train-demo.yaml; not "
                        "needed with --resume, which trains with the run's own config.yaml (its --sets included)")
    parser.add_argument("--out", required=True, help="run folder: logs, checkpoints, the student")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its latest sound checkpoint, with its own config")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run in --out (its log, checkpoints and student are deleted)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=0.001 (repeatable); with --resume only "
                        "the device, checkpoint, log and eval cadences may change")


def run(args: argparse.Namespace) -> int:
    """`tsd train [CONFIG] --out DIR [--resume | --overwrite] [--set key=value ...]` (under torchrun for DDP)."""
    config, releases = load_run_config(args.config, Path(args.out), args.resume, parse_overrides(args.set))
    main = os.environ.get("RANK", "0") == "0"
    try:
        metrics = run_training(config, args.out, args.resume, releases, overwrite=args.overwrite)
    except Stopped as e:
        if main:
            print(f"tsd train: {e}; continue with: {resume_command(args.out)}", file=sys.stderr, flush=True)
        return e.exit_code
    train, val = metrics["train"], metrics["val"]
    if train["world"] > 1:
        print(f"[rank {os.environ.get('RANK', 0)}/{train['world']}] done: {train['steps_this_run']} steps "
              f"this run, {train['steps']} in all", flush=True)
    if main:
        skipped = f"; skipped {train['skipped']} corrupt sample(s), see metrics.json" if train["skipped"] else ""
        print(f"trained {config.student.arch} for {train['steps']} steps ({train['mode']}): val "
              f"{val_headline(val)} → {args.out}{skipped}", flush=True)
    return 0
