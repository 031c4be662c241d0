"""`tsd`: one command, a subcommand per stage.

Each subcommand is a module exposing `add_arguments(parser)` (its flags, declared once) and
`run(args) -> exit code`. Only the invoked command's module is imported, so `tsd train` never
loads the generation side and `tsd --help` loads no model library.

One error path: every failure is printed here, once, as `tsd <command>: error: …` on one line on
stderr, after any progress bar is closed. Exit status 2: the input is wrong (`UserError`); 1: the
job ran and failed (`JobFailed`, or an unexpected exception: its traceback is shown only with
TSD_TRACEBACK=1); 128 + the signal number: stopped on SIGINT (130) or SIGTERM (143) after saving
its work (`Interrupted`: one line, the command's own hint when it has one).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass

from . import __version__


@dataclass(frozen=True)
class Command:
    module: str
    help: str
    description: str


COMMANDS = {
    "ingest": Command("pipeline.sources.ingest", "index a source dataset (as downloaded, ImageFolder, CSV or Parquet)",
                      "Decode every image of SRC (a dataset in its published layout: cub200, aircraft, dtd, pets, "
                      "caltech101, hf-parquet, webdataset, detected unless --layout says; an ImageFolder tree "
                      "class/xxx.jpg; or a CSV/Parquet file with path,label[,split]) and write DIR/index.parquet and "
                      "DIR/rejects.parquet. Official splits are kept (test → val). Unusable files are listed in "
                      "rejects with a reason, never dropped silently."),
    "probe": Command("pipeline.stages.probe", "fit the teacher's task head on frozen features",
                     "Compute teacher features on the training views of the stored images, fit a linear (or MLP) "
                     "head on them and report the teacher's validation accuracy. Writes OUT/teacher/head.safetensors "
                     "and OUT/teacher/probe.json; reuses them when nothing they depend on changed."),
    "plan": Command("pipeline.stages.plan", "decide every sample: pairs, mixing weights, seeds, views",
                    "Write OUT/work/plan.parquet: real train/val samples and the SD-Mixup pool with parent pairs, "
                    "mixing weights, per-sample seeds and the K recorded views, grouped into shards. Deterministic. "
                    "With --dry-run, print what would run (samples, shards, disk, GPU-hours) and write nothing."),
    "generate": Command("pipeline.stages.distribute", "make the shards on a Ray cluster (SD-Mixup + teacher outputs)",
                        "Run every planned shard not yet done: one Ray actor per GPU (CPU actors when there is none), "
                        "one shard per task, published atomically and marked done. Starts a local Ray cluster unless "
                        "--address names one (or `ray job submit` provides RAY_ADDRESS). A rerun does only the "
                        "missing shards."),
    "release": Command("pipeline.stages.release", "write manifest.json, index.parquet and the dataset card",
                       "Assemble the release from the generated shards: manifest (config, models and their sha256, "
                       "counts, every shard's sha256/bytes/count), index.parquet (one row per sample) and README.md."),
    "verify": Command("pipeline.tools.verify", "check a release against its manifest",
                      "Check every shard's size, sha256, sample count and schema, and the index, against the "
                      "manifest. Exits 0 when all is well; otherwise names each bad shard and exits 1."),
    "run": Command("pipeline.tools.runall", "every generation stage of a job in order, reusing what is done",
                   "ingest (when the job names data.source) → probe → plan → generate → release → verify into "
                   "OUT, each reused when its inputs did not change; one line per stage says why it ran or was "
                   "reused. The first failing stage ends the run with its error and the command that continues."),
    "status": Command("pipeline.tools.status", "each stage of a job folder: done, stale (what changed) or to do",
                      "For the job folder DIR (the job `tsd run` recorded there, or --job), each stage of ingest, "
                      "probe, plan, generate, release and verify as done, stale (and what changed: a config "
                      "section, the index, the teacher head or weights) or to do, with shards done/planned. "
                      "Loads no model and no Ray."),
    "train": Command("trainer.train", "distil (or finetune) a student from releases; no teacher, no Ray",
                     "Train a timm student on one or more releases: KD against the stored teacher logits on real and "
                     "mix samples plus CE on real labels, or a baseline (finetune, kd-real). Checkpoints atomically; "
                     "--resume continues a killed run. Multi-GPU with torchrun (-m pipeline.cli train ...)."),
    "compare": Command("trainer.compare", "the paper's rows (finetune, KD, KD + each mix) at one budget, N seeds",
                       "Train every row of the paper's comparison from one config: finetune (labels only), KD on "
                       "real images, KD + the mixes of each generator the releases hold, for each listed teacher "
                       "(probed, finetuned), for each listed student, mix rows also on fractions of their pool, "
                       "N seeds each (default 3), all at the same optimizer steps and real images seen. Writes "
                       "OUT/results.json, results.md (mean ± std, 95 % t intervals, paired differences, data "
                       "hours) and results.png; finished runs are reused and a killed compare resumes where it "
                       "stopped."),
    "eval": Command("trainer.evaluate", "evaluate a student on a release's validation shards",
                    "Top-1/top-5 accuracy and agreement with the teacher on the release's real/val shards, and "
                    "per-class top-1 (per_class.csv) and the confusion matrix (confusion.png) in --out. CKPT is a "
                    "run folder or a student.safetensors with its student.json beside it (confusion-teacher.png "
                    "beside its confusion.png); `tsd eval teacher RELEASE` gives the same for the teacher, from "
                    "its logits stored on each val view."),
    "predict": Command("trainer.predict", "label images with a trained student: a CSV of the top-k classes per image",
                       "STUDENT is a `tsd export` folder or a run folder; IMAGES are files or folders. Each image "
                       "is the student's validation view (centred crop of crop_pct of the short side, resized, "
                       "normalised as in training); --out gets image, class_1, prob_1, … per image."),
    "export": Command("trainer.export", "a trained student as a timm folder (+ ONNX, TorchScript) with a model card",
                      "Write OUT/config.json and OUT/model.safetensors, which timm.create_model('local-dir:OUT', "
                      "pretrained=True) loads with the trained classifier and preprocessing, and OUT/README.md, a "
                      "Hugging Face model card. --onnx adds model.onnx (dynamic batch) and --torchscript "
                      "model.torchscript.pt, each checked against torch at export (max difference 1e-4)."),
    "demo": Command("pipeline.demo.command", "run every stage end to end on embedded defaults",
                    "Write a procedural image dataset and tiny random-weight models of the real architectures, then "
                    "run ingest → probe → plan → generate (local Ray) → release → verify → train (finetune baseline "
                    "and distillation) → eval, and print a summary. Rerun on the same folder reuses finished work."),
    "regenerate": Command("pipeline.tools.regenerate",
                          "rebuild samples from a release and compare them with the stored ones",
                          "Rebuild each UID from the release alone (the job config in its manifest, its index row, "
                          "the source images named by the config's ingest index, the teacher head) with the real "
                          "shard worker, and compare member by member: identical bytes on the same hardware and "
                          "software, else the largest pixel and logit differences. Exits 0 when every sample is "
                          "identical or within the tolerances, 1 otherwise."),
    "subset": Command("pipeline.tools.subset", "a smaller, valid release holding the listed samples",
                      "Write a release with only the samples listed in FILE (one uid per line): shards keep their "
                      "names, whole shards are copied, partial ones rewritten with their samples' members byte for "
                      "byte; teacher/ copied, index filtered, a new manifest (with subset_of naming the parent) and "
                      "card. `tsd verify` passes on it."),
    "viz": Command("pipeline.tools.vizcommand", "pictures: SD-Mixup contact sheet, PCA of features, training curves",
                   "mixes: parents, mixing weight, result and the teacher's top-1 per row. pca: the paper's figure, "
                   "2-D PCA of the features of real images (up to 30 classes) and mixes (grey) for the teacher and "
                   "each student run. curves: loss, its CE/KD terms and the learning rate from each run's log.jsonl."),
    "report": Command("pipeline.tools.report", "a static site of a release and its runs (opens from file://)",
                      "Write DIR/index.html with its data and thumbnails: the release (counts, classes, models, "
                      "config, `tsd verify --quick`), the N highest-entropy mixes beside their parents with the "
                      "teacher's top-5 (sortable, filterable), sample pages with their views, real images per class, "
                      "run curves, final metrics and confusion, compare tables and per-node generation stats. No "
                      "server, no network: plain JavaScript. --serve serves it on loopback."),
    "convert": Command("pipeline.models.convert", "convert an original (LDM) checkpoint to a diffusers folder",
                       "Write a diffusers-layout folder (unet/, vae/, scheduler/, image_encoder/, feature_extractor/) "
                       "from an original single-file checkpoint such as ImageMixer's image-mixer-pruned.ckpt. The "
                       "checkpoint is read without executing code (torch.load weights_only=True, or safetensors)."),
    "config-doc": Command("pipeline.tools.configdoc", "every config key: type, default, range, meaning",
                          "Print (or write with --out) the Markdown reference of every key of the job manifest and "
                          "the training config, generated from the config dataclasses: docs/CONFIG.md is its output."),
    "bench": Command("pipeline.bench", "benchmarks: `tsd bench generate`, `tsd bench train`, `tsd bench scale`",
                     "Measure speed against a reference in the same run. `generate`: the fused worker vs the stock "
                     "diffusers pipeline. `train`: step rate from shards vs from in-memory tensors. `scale`: time and "
                     "peak memory of planning, the driver's bookkeeping and the release index at 10k-1M samples."),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser, with the arguments of the invoked command only (its module imported for them)."""
    parser = argparse.ArgumentParser(prog="tsd", description="Task-specific distillation of large pretrained "
                                     "vision models with SD-Mixup (Marrie et al., TMLR 2024).")
    parser.add_argument("--version", action="version", version=f"tsdistill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    invoked = next((a for a in argv if not a.startswith("-")), None)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.description)
        if name == invoked:
            importlib.import_module(command.module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .contract.errors import Interrupted, JobFailed, UserError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    name = f"tsd {args.command}"
    try:
        return int(importlib.import_module(COMMANDS[args.command].module).run(args) or 0)
    except UserError as e:  # the user's input is wrong: one line, no traceback
        return fail(name, str(e), 2)
    except JobFailed as e:  # the job ran and failed
        return fail(name, str(e), 1)
    except Interrupted as e:  # stopped on a signal with its work saved
        close_progress_bars()
        print(f"{name}: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        close_progress_bars()
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug, or a library's error we did not foresee: still one line
        if os.environ.get("TSD_TRACEBACK"):
            raise
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        return fail(name, f"unexpected {type(e).__name__}{': ' + first if first else ''} "
                          "(set TSD_TRACEBACK=1 to see the traceback)", 1)


def fail(name: str, message: str, code: int) -> int:
    """Print `<name>: error: <message>` as one line on stderr, below any progress bar; return `code`."""
    close_progress_bars()
    print(f"{name}: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    return code


def close_progress_bars() -> None:
    """End the progress lines still drawn in place (a failure skipped their `close`), so the message
    gets a line of its own."""
    progress = sys.modules.get("pipeline.contract.progress")
    try:
        if progress is not None:
            progress.close_all()
    except Exception:  # noqa: BLE001 - a line that cannot close must not hide the error itself
        pass
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
