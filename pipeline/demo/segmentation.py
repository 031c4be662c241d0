"""`tsd demo --task segmentation`: the paper's second task, every stage end to end on embedded defaults.

Procedural scenes (1-3 textured shapes on textured backgrounds; the masks are the shapes drawn),
written in the generic pairs layout and ingested like a user's; tiny random-weight models of the real
architectures, the teacher pretrained once with a dense objective on scenes of another seed (see
demo.pretrain: a stand-in for DINOv2's generic pretraining); then ingest → probe (a linear head on the
patch tokens) → plan → generate (SD-Mixup mixes, labelled per pixel by the teacher) → release →
verify → train a segmentation student twice (finetuned on the masks; distilled: masks and the
teacher's dense logits, the mixes in the KD term only) → eval → pictures. Reuses finished work like
the classification demo.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from trainer.evaluate_seg import PER_CLASS_CSV
from trainer.runfiles import EVAL, METRICS

from ..contract.configlib import dump
from ..contract.files import reuse
from ..contract.ids import fingerprint, sha256_file
from ..runtime import quiet_libraries, torch_threads
from ..testing.tiny import TinySizes
from .runner import (DEMO_THREADS, Timer, build_demo_models, demo_students, demo_summary, job_stages, print_report,
                     print_stages)


@dataclass(frozen=True)
class SegDemoSize:
    train: int           # scenes in the train split
    val: int
    scene: int           # scene side (px)
    teacher_img: int     # the teacher's input size: a (teacher_img / 14)² patch grid
    pool: str
    steps: int           # denoising steps
    views: int
    epochs: int
    shard_size: int
    pretrain_steps: int  # dense pretraining of the teacher (0: random weights)


SEG_SIZES = {
    "demo": SegDemoSize(train=240, val=60, scene=64, teacher_img=112, pool="1x", steps=10, views=4, epochs=12,
                        shard_size=64, pretrain_steps=600),
    "small": SegDemoSize(train=32, val=12, scene=48, teacher_img=56, pool="0.5x", steps=4, views=2, epochs=3,
                         shard_size=16, pretrain_steps=0),
}
STORE_SIZE = 64
# The student: an FPN (segmentation_models_pytorch) on the demo's timm ResNet-10t, its encoder loaded from
# the demo's student file. GroupNorm(32) in smp's FPN head wants 2+ channels a group at these sizes.
STUDENT = {"arch": TinySizes().student_arch, "decoder": "FPN", "img_size": 64,
           "model_kwargs": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 64}}


def seg_job_config(models: dict, index: str, size: SegDemoSize) -> dict:
    """The segmentation demo's job manifest (manifests/demo-segmentation.yaml is the same, with its paths)."""
    tiny = TinySizes()
    return {
        "seed": 0,
        "data": {"index": index, "store_size": STORE_SIZE, "image_format": "jpg", "quality": 90},
        "teacher": {"arch": tiny.teacher_arch, "weights": models["teacher"], "img_size": size.teacher_img,
                    "model_kwargs": dict(tiny.teacher_kwargs), "batch_size": 256},
        "probe": {"views": 2, "epochs": 60, "lr": 0.01, "batch_size": 256},
        "views": {"k": size.views, "scale": [0.35, 1.0]},
        "plan": {"pool_size": size.pool, "pairing": "any", "weight_law": "uniform"},
        "generator": {"kind": "image-mixer", "path": models["image-mixer"], "size": size.scene, "steps": size.steps,
                      "guidance": 3.0, "batch_size": 32},
        "generate": {"shard_size": size.shard_size, "workers": 2, "cpus_per_worker": 1},
        "release": {"name": "tsdistill-demo-segmentation", "license": "cc0-1.0",
                    "description": "The tsdistill segmentation demo: procedural scenes, tiny random-weight models."},
    }


def seg_train_config(release: str, models: dict, mode: str, size: SegDemoSize) -> dict:
    return {
        "task": "segmentation",
        "releases": [release],
        "student": {**STUDENT, "weights": models["student"]},
        "loss": {"mode": mode, "alpha": 0.5, "temperature": 2.0},
        "data": {"mix_ratio": 0.5, "batch_size": 32, "workers": 1},
        "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.05, "epochs": size.epochs, "warmup_epochs": 1},
        "runtime": {"device": "auto", "seed": 0, "log_every": 5},
    }


@torch_threads(DEMO_THREADS)
def build_seg_release(out: str | Path, size_name: str = "demo", timer: Timer | None = None,
                      kinds: list[str] | None = None) -> dict:
    """Scenes, tiny models, ingest, then probe → plan → generate → release → verify into `out`."""
    import os

    from ..config import load_job
    from ..sources.ingest import ingest
    from ..stages.jobdir import WORK
    from ..testing.toydata import write_toy_segmentation

    quiet_libraries()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    size = SEG_SIZES[size_name]
    out = Path(out).resolve()
    work = out / WORK
    timer = timer or Timer()

    def make_source():
        write_toy_segmentation(work / "source", train=size.train, val=size.val, seed=0, size=size.scene)
        return build_demo_models(work / "models", pretrain_steps=size.pretrain_steps, dense_img_size=size.teacher_img)

    models = timer.run("data + tiny models", make_source)
    ingest_dir = work / "ingest"
    settings = {"source": size.__dict__, "layout": "pairs"}
    timer.run("ingest", lambda: reuse(work / "ingest.done.json", fingerprint(settings),
                                      lambda: ingest(work / "source", ingest_dir, layout="pairs", workers=1).to_json(),
                                      outputs=[ingest_dir / "index.parquet"])[0],
              lambda s: f"kept {s['kept']}, rejected {s['rejected']}")
    config = seg_job_config(models, str(ingest_dir / "index.parquet"), size)
    if kinds:
        config["generator"]["kinds"] = list(kinds)
    job_path = dump(config, work / "job.yaml")
    probe, manifest = job_stages(load_job(job_path), out, timer)
    return {"models": models, "job_path": str(job_path), "manifest": manifest, "probe": probe}


@torch_threads(DEMO_THREADS)
def run_segmentation_demo(out: str | Path, size_name: str = "demo") -> dict:
    t_start = time.time()
    out = Path(out).resolve()
    timer = Timer()
    built = build_seg_release(out, size_name, timer)
    size, manifest = SEG_SIZES[size_name], built["manifest"]
    evals, report = demo_students(out, timer, lambda mode: seg_train_config(str(out), built["models"], mode, size),
                                  _evaluate, _pictures, "miou", "mIoU", (f"{EVAL}/{PER_CLASS_CSV}",))
    summary = demo_summary(out, manifest, built["probe"], evals, "miou", timer, t_start,
                           finetune_pixel_acc=evals["finetune"]["pixel_acc"],
                           distill_pixel_acc=evals["distill"]["pixel_acc"])
    print_seg_summary(summary, out)
    print_report(report)
    return summary


def _evaluate(run_dir: Path, release: Path) -> dict:
    """What `tsd eval RUN RELEASE` reports for a segmentation student (RUN/eval/per_class_iou.csv)."""
    from trainer.evaluate import evaluate_checkpoint
    from trainer.evaluate_seg import probe_metrics, write_per_class_iou

    metrics, info = evaluate_checkpoint(run_dir, str(release), workers=1)
    write_per_class_iou(metrics, info["classes"], probe_metrics(str(release)), run_dir / "eval")
    return metrics


def _pictures(out: Path) -> list[Path]:
    """Validation overlays (image, mask, teacher, both students), the mixes with the teacher's labels
    and the training curves (validation mIoU beside the teacher's)."""
    from ..tools.segviz import plot_dense_mixes, plot_overlays
    from ..tools.viz import plot_curves

    runs = [out / "runs" / "finetune", out / "runs" / "distill"]
    folder = out / "pictures"
    names = [folder / n for n in ("overlays.png", "dense-mixes.png", "curves.png")]
    inputs = fingerprint([sha256_file(out / "manifest.json"), *(sha256_file(r / METRICS) for r in runs)])

    def draw():
        plot_overlays(out, runs, names[0])
        plot_dense_mixes(out, names[1])
        plot_curves(runs, names[2])
        return [str(p) for p in names]

    return [Path(p) for p in reuse(folder / "pictures.done.json", inputs, draw, outputs=names)[0]]


def print_seg_summary(s: dict, out: Path) -> None:
    print()
    print(f"tsd demo --task segmentation: {out}")
    print(f"{'kind/split':<14}{'samples':>9}{'shards':>8}")
    for k, n in s["counts"].items():
        print(f"{k:<14}{n:>9}{s['shards'][k]:>8}")
    print()
    print(f"{'model':<22}{'val mIoU':>10}")
    print(f"{'teacher (probed)':<22}{s['teacher_val_miou']:>10.3f}   (the probe's own measure, teacher/probe.json)")
    print(f"{'teacher (release)':<22}{s['teacher_stored_val_miou']:>10.3f}   (its dense logits stored in the release, on "
          "the students' views: what they learn from)")
    print(f"{'student, finetuned':<22}{s['finetune_val_miou']:>10.3f}   (pixel accuracy {s['finetune_pixel_acc']:.1%})")
    print(f"{'student, distilled':<22}{s['distill_val_miou']:>10.3f}   (pixel accuracy {s['distill_pixel_acc']:.1%}; "
          f"agrees with the teacher on {s['distill_teacher_agreement']:.1%} of pixels)")
    print()
    print_stages(s["stages"], s["wall_s"], width=20)
    print(f"\npictures: {out / 'pictures'}; verify the release with: tsd verify {out}")


SEG_COMPARE_KINDS = ["image-mixer", "mixup", "cutmix"]
SEG_COMPARE_SEEDS = 3


@torch_threads(DEMO_THREADS)
def run_segmentation_compare(out: str | Path, size_name: str = "demo") -> dict:
    """The paper's segmentation rows (finetune, KD, KD + Mixup, KD + CutMix, KD + SD-Mixup) at one
    budget over 3 seeds, tabulated by mIoU, into out/compare."""
    from trainer.compare import load_compare, markdown, run_compare

    t_start = time.time()
    out = Path(out).resolve()
    timer = Timer()
    built = build_seg_release(out, size_name, timer, kinds=SEG_COMPARE_KINDS)
    size = SEG_SIZES[size_name]
    train = seg_train_config(str(out), built["models"], "distill", size)
    config = {key: train[key] for key in ("task", "student", "loss", "data", "optim", "runtime")}
    config.update(teachers=[{"name": "probed", "releases": [str(out)] + [str(out / "generators" / k)
                                                                           for k in SEG_COMPARE_KINDS[1:]]}],
                  seeds=SEG_COMPARE_SEEDS)
    path = dump(config, out / "work" / "compare.yaml")
    results = timer.run("compare", lambda: run_compare(load_compare(path), out / "compare"),
                        lambda r: f"{len(r['rows'])} rows × {len(r['rows'][0]['seeds'])} seeds")
    print(markdown(results))
    print_stages(timer.rows, round(time.time() - t_start, 1), width=20)
    return results
