"""`tsd`: one command, a subcommand per stage.

Arguments are declared here (light: argparse only); each subcommand imports its module when it
runs, so `tsd train` never loads the generation side."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__

SUBCOMMANDS = {}


def command(name: str, target: str, help: str, description: str | None = None):
    """Register a subcommand whose `target` ('module:function') receives the parsed args."""
    def wrap(add_args):
        SUBCOMMANDS[name] = (target, help, description or help, add_args)
        return add_args
    return wrap


def _job(p):
    p.add_argument("config", help="job manifest (YAML), e.g. manifests/demo.yaml")
    p.add_argument("--out", required=True, help="job folder: the release, plus work/ for intermediate files")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set generate.shard_size=128 (repeatable)")


def _device(p):
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where models run (default: auto)")


@command("ingest", "pipeline.ingest:main", "index a source dataset (ImageFolder tree, CSV or Parquet)",
         "Decode every image of SRC (an ImageFolder tree class/xxx.jpg, or a CSV/Parquet file with "
         "path,label[,split]) and write DIR/index.parquet and DIR/rejects.parquet. Unusable files are "
         "listed in rejects with a reason, never dropped silently.")
def _ingest(p):
    p.add_argument("src", help="ImageFolder root, or a .csv/.parquet file with columns path,label[,split]")
    p.add_argument("--out", required=True, help="output folder for index.parquet and rejects.parquet")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out share per class when SRC has no split (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the deterministic stratified split")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.add_argument("--min-size", type=int, default=16, help="reject images with a side shorter than this (px)")


@command("probe", "pipeline.cli:run_probe", "fit the teacher's task head on frozen features",
         "Compute teacher features on the training views of the stored images, fit a linear (or MLP) "
         "head on them and report the teacher's validation accuracy. Writes OUT/teacher/head.safetensors "
         "and OUT/teacher/probe.json; reuses them when nothing they depend on changed.")
def _probe(p):
    _job(p)
    _device(p)
    p.add_argument("--force", action="store_true", help="refit even when a matching head exists")


@command("plan", "pipeline.cli:run_plan", "decide every sample: pairs, mixing weights, seeds, views",
         "Write OUT/work/plan.parquet: real train/val samples and the SD-Mixup pool with parent pairs, "
         "mixing weights, per-sample seeds and the K recorded views, grouped into shards. Deterministic. "
         "With --dry-run, print what would run (samples, shards, disk, GPU-hours) and write nothing.")
def _plan(p):
    p.add_argument("config", help="job manifest (YAML)")
    p.add_argument("--out", help="job folder (not needed with --dry-run)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--dry-run", action="store_true", help="print the estimate only")


@command("generate", "pipeline.cli:run_generate", "make the shards on a Ray cluster (SD-Mixup + teacher outputs)",
         "Run every planned shard not yet done: one Ray actor per GPU (CPU actors when there is none), one "
         "shard per task, published atomically and marked done. Starts a local Ray cluster unless --address "
         "names one (or `ray job submit` provides RAY_ADDRESS). A rerun does only the missing shards.")
def _generate(p):
    _job(p)
    _device(p)
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local cluster)")


@command("release", "pipeline.cli:run_release", "write manifest.json, index.parquet and the dataset card",
         "Assemble the release from the generated shards: manifest (config, models and their sha256, "
         "counts, every shard's sha256/bytes/count), index.parquet (one row per sample) and README.md.")
def _release(p):
    _job(p)


@command("verify", "pipeline.cli:run_verify", "check a release against its manifest",
         "Check every shard's size, sha256, sample count and schema, and the index, against the manifest. "
         "Exits 0 when all is well; otherwise names each bad shard and exits 1.")
def _verify(p):
    p.add_argument("release", help="release folder")
    p.add_argument("--quick", action="store_true", help="sizes and counts only (no hashing, no decoding)")


@command("train", "trainer.train:main", "distil (or finetune) a student from releases; no teacher, no Ray",
         "Train a timm student on one or more releases: KD against the stored teacher logits on real and mix "
         "samples plus CE on real labels, or a baseline (finetune, kd-real). Checkpoints atomically; --resume "
         "continues a killed run. Multi-GPU with torchrun.")
def _train(p):
    p.add_argument("config", help="training config (YAML), e.g. manifests/train-demo.yaml")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, metrics)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")


@command("eval", "trainer.evaluate:main", "evaluate a student on a release's validation shards",
         "Top-1/top-5 accuracy and agreement with the teacher on the release's real/val shards. CKPT is a run "
         "folder or a student.safetensors with its student.json beside it.")
def _eval(p):
    p.add_argument("ckpt", help="run folder or student.safetensors")
    p.add_argument("release", help="release folder or URL")
    p.add_argument("--json", default=None, help="also write the metrics to this file")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


@command("demo", "pipeline.demo:main", "run every stage end to end on embedded defaults",
         "Write a procedural image dataset and tiny random-weight models of the real architectures, then run "
         "ingest → probe → plan → generate (local Ray) → release → verify → train (finetune baseline and "
         "distillation) → eval, and print a summary. Rerun on the same folder reuses finished work.")
def _demo(p):
    p.add_argument("--out", default="demo-out", help="output folder (default: ./demo-out)")
    p.add_argument("--size", default="demo", choices=["demo", "small"],
                   help="'demo' (default) or 'small' (fewer images and steps; what the tests run)")


@command("regenerate", "pipeline.regenerate:main", "rebuild samples from a release and compare them with the stored ones",
         "Rebuild each UID from the release alone (the job config in its manifest, its index row, the source images "
         "named by the config's ingest index, the teacher head) with the real shard worker, and compare member by "
         "member: identical bytes on the same hardware and software, else the largest pixel and logit differences. "
         "Exits 0 when every sample is identical or within the tolerances, 1 otherwise.")
def _regenerate(p):
    p.add_argument("release", help="release folder")
    p.add_argument("--uid", action="append", required=True, help="a sample's uid (repeatable)")
    _device(p)
    p.add_argument("--pixel-tol", type=int, default=0, help="largest pixel difference accepted, 0..255 (default 0)")
    p.add_argument("--logit-tol", type=float, default=0.0,
                   help="largest teacher logit (and feature) difference accepted (default 0)")


@command("subset", "pipeline.subset:main", "a smaller, valid release holding the listed samples",
         "Write a release with only the samples listed in FILE (one uid per line): shards keep their names, whole "
         "shards are copied, partial ones rewritten with their samples' members byte for byte; teacher/ copied, "
         "index filtered, a new manifest (with subset_of naming the parent) and card. `tsd verify` passes on it.")
def _subset(p):
    p.add_argument("release", help="release folder")
    p.add_argument("--uids", required=True, help="text file, one uid per line ('#' starts a comment)")
    p.add_argument("--out", required=True, help="new (or empty) folder for the subset")
    p.add_argument("--name", default=None, help="the subset's release name (default: the parent's + '-subset')")


@command("viz", "pipeline.viz:main", "pictures: SD-Mixup contact sheet, PCA of features, training curves",
         "mixes: parents, mixing weight, result and the teacher's top-1 per row. pca: the paper's figure, 2-D PCA of "
         "the features of real images (up to 30 classes) and mixes (grey) for the teacher and each student run. "
         "curves: loss, its CE/KD terms and the learning rate from each run's log.jsonl.")
def _viz(p):
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    mixes = sub.add_parser("mixes", help="contact sheet of SD-Mixup samples with their parents")
    mixes.add_argument("release", help="release folder")
    mixes.add_argument("--out", required=True, help="PNG file to write")
    mixes.add_argument("--rows", type=int, default=8, help="mixes shown (default 8)")
    mixes.add_argument("--seed", type=int, default=0, help="which mixes are picked")
    pca = sub.add_parser("pca", help="PCA of teacher and student features, mixes in grey")
    pca.add_argument("release", help="release folder")
    pca.add_argument("--runs", nargs="+", default=[], metavar="RUN_DIR",
                     help="student run folders (student.safetensors + student.json), e.g. distilled and finetuned")
    pca.add_argument("--out", required=True, help="PNG file to write")
    pca.add_argument("--per-class", type=int, default=20, help="real train images per class (default 20)")
    pca.add_argument("--mixes", type=int, default=300, help="mixes shown (default 300)")
    pca.add_argument("--seed", type=int, default=0, help="which images are picked")
    _device(pca)
    curves = sub.add_parser("curves", help="training curves from run folders' log.jsonl")
    curves.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders")
    curves.add_argument("--out", required=True, help="PNG file to write")


@command("convert", "pipeline.convert:main", "convert an original (LDM) checkpoint to a diffusers folder",
         "Write a diffusers-layout folder (unet/, vae/, scheduler/, image_encoder/, feature_extractor/) from an "
         "original single-file checkpoint such as ImageMixer's image-mixer-pruned.ckpt. The checkpoint is read "
         "without executing code (torch.load weights_only=True, or safetensors).")
def _convert(p):
    p.add_argument("ckpt", help="original checkpoint (.ckpt or .safetensors)")
    p.add_argument("--out", required=True, help="diffusers folder to write")
    p.add_argument("--kind", default="image-mixer", choices=["image-mixer", "sd-image-variations"])
    p.add_argument("--config", default=None, help="the checkpoint's original inference YAML (default: SD-1.x)")
    p.add_argument("--image-encoder", default=None,
                   help="a CLIP vision folder (e.g. openai/clip-vit-large-patch14) when the checkpoint has none")


@command("bench", "pipeline.cli:run_bench", "benchmarks: `tsd bench generate` and `tsd bench train`",
         "Measure speed against a reference in the same run. `generate`: the fused worker vs the stock diffusers "
         "pipeline. `train`: step rate from shards vs from in-memory tensors.")
def _bench(p):
    p.add_argument("what", choices=["generate", "train"])
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of that benchmark (see `tsd bench WHAT --help`)")


def load_job_args(args):
    from .config import load_job
    from .configlib import parse_overrides

    return load_job(args.config, parse_overrides(getattr(args, "set", [])))


def run_probe(args) -> int:
    from . import stages

    metrics, reused = stages.probe(load_job_args(args), args.out, args.device, args.force)
    print(f"probe: teacher val top-1 {metrics['val_top1']:.3f} (train {metrics['train_top1']:.3f}, "
          f"{metrics['n_train']} train / {metrics['n_val']} val images){' [reused]' if reused else ''}")
    return 0


def run_plan(args) -> int:
    from . import stages

    if args.dry_run:
        from .configlib import files_optional
        from .estimate import print_estimate

        with files_optional():  # a recipe can be estimated before its data and weights are downloaded
            job = load_job_args(args)
        print_estimate(job)
        return 0
    job = load_job_args(args)
    if not args.out:
        raise SystemExit("tsd plan: --out is required (or use --dry-run)")
    plan, reused = stages.plan(job, args.out)
    counts = ", ".join(f"{k} {v}" for k, v in plan.counts().items())
    print(f"plan: {counts}; {len(plan.shards())} shards{' [reused]' if reused else ''}")
    return 0


def run_generate(args) -> int:
    from . import stages

    job = load_job_args(args)
    address = args.address or os.environ.get("RAY_ADDRESS")
    s = stages.generate(job, args.out, address=address, device=args.device)
    print(f"generate: {s['done']} shards made, {s['skipped']} already done, {s['samples']} samples, "
          f"{s['failures']} failed samples, {s['seconds']} s")
    return 0


def run_release(args) -> int:
    from . import stages

    m = stages.release(load_job_args(args), args.out)
    counts = ", ".join(f"{k} {v}" for k, v in m["counts"].items())
    print(f"release: {args.out}: {counts}; {len(m['shards'])} shards, {len(m['failures'])} failed samples")
    return 0


def run_verify(args) -> int:
    from .verify import verify_release

    problems = verify_release(args.release, quick=args.quick, progress=sys.stderr.isatty())
    for what, why in problems:
        print(f"BAD {what}: {why}")
    if problems:
        print(f"verify: {args.release}: {len({w for w, _ in problems})} bad item(s)")
        return 1
    print(f"verify: {args.release}: OK")
    return 0


def run_bench(args) -> int:
    module = {"generate": "pipeline.bench_generate", "train": "trainer.bench"}[args.what]
    return importlib.import_module(module).main_argv(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tsd", description="Task-specific distillation of large pretrained "
                                     "vision models with SD-Mixup (Marrie et al., TMLR 2024).")
    parser.add_argument("--version", action="version", version=f"tsdistill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (target, help, description, add_args) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help, description=description)
        add_args(p)
        p.set_defaults(_target=target)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .configlib import InputError

    args = build_parser().parse_args(argv)
    module, func = args._target.split(":")
    try:
        code = getattr(importlib.import_module(module), func)(args)
    except (InputError, FileNotFoundError) as e:  # the user's input is wrong: one line, no traceback
        print(f"tsd {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tsd {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
