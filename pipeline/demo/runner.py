"""`tsd demo`: every stage end to end on embedded defaults, in a few minutes on a laptop CPU.

A procedural dataset (written as an ImageFolder tree and ingested like a user's), tiny random-weight
models of the real architectures (saved to disk and loaded back through the real loaders), a local
Ray cluster, then ingest → probe → plan → generate → release → verify → train twice → eval.
Every stage reuses finished work, so a rerun on the same folder is fast.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from trainer.runfiles import METRICS

from ..contract.configlib import dump, load, to_dict
from ..contract.errors import JobFailed
from ..contract.files import plain_modes, reuse
from ..contract.ids import fingerprint, sha256_bytes, sha256_file
from ..runtime import quiet_libraries, torch_threads
from ..testing.tiny import TinySizes

# The demo's compute threads in this process (probe, training, evaluation), whatever the machine or
# OMP_NUM_THREADS say: CPU kernels split reductions by thread count, so a fixed count makes the
# printed table the same on every run. Ray workers and DataLoader workers fix their own (1 each).
DEMO_THREADS = 2


@dataclass(frozen=True)
class DemoSize:
    classes: int
    per_class: int
    pool: str            # mix pool size, as a multiple of the train set
    steps: int           # denoising steps
    views: int
    epochs: int
    shard_size: int
    pretrain_steps: int  # teacher pretraining on a disjoint corpus (0: random weights)


SIZES = {
    "demo": DemoSize(classes=10, per_class=60, pool="1x", steps=10, views=4, epochs=12, shard_size=128,
                     pretrain_steps=600),
    "small": DemoSize(classes=8, per_class=16, pool="1x", steps=4, views=2, epochs=4, shard_size=32,
                      pretrain_steps=0),
}


def job_config(models: dict, index: str, size: DemoSize) -> dict:
    """The demo's job manifest (manifests/demo.yaml is the same, with the demo's paths)."""
    tiny = TinySizes()
    return {
        "seed": 0,
        "data": {"index": index, "store_size": 64, "image_format": "jpg", "quality": 90},
        "teacher": {"arch": tiny.teacher_arch, "weights": models["teacher"], "img_size": tiny.teacher_img,
                    "model_kwargs": dict(tiny.teacher_kwargs), "batch_size": 256},
        "probe": {"head": "linear", "views": 2, "epochs": 60, "lr": 0.003, "batch_size": 256},
        "views": {"k": size.views, "scale": [0.35, 1.0]},
        "plan": {"pool_size": size.pool, "pairing": "any", "weight_law": "uniform"},
        "generator": {"kind": "image-mixer", "path": models["image-mixer"], "size": 64, "steps": size.steps,
                      "guidance": 3.0, "batch_size": 32},
        "generate": {"shard_size": size.shard_size, "workers": 2, "cpus_per_worker": 1},
        "release": {"name": "tsdistill-demo", "license": "cc0-1.0",
                    "description": "The tsdistill demo: procedural shapes, tiny random-weight models."},
    }


def train_config(release: str, models: dict, mode: str, size: DemoSize) -> dict:
    return {
        "releases": [release],
        "student": {"arch": TinySizes().student_arch, "weights": models["student"], "img_size": 48},
        "loss": {"mode": mode, "alpha": 0.5, "temperature": 2.0},
        "data": {"mix_ratio": 0.5, "batch_size": 64, "workers": 1},
        "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.05, "epochs": size.epochs, "warmup_epochs": 1},
        "runtime": {"device": "auto", "seed": 0, "log_every": 5},
    }


def build_demo_models(folder: str | Path, sizes: TinySizes = TinySizes(), seed: int = 0,
                      pretrain_steps: int = 0, dense_img_size: int | None = None) -> dict:
    """Write every tiny model under `folder` (skipped when already there) and return their paths.

    `pretrain_steps` > 0 pretrains the teacher backbone on a procedural corpus disjoint from the
    demo's data (see demo.pretrain): a stand-in for DINOv2's generic pretraining, so that probing
    gives a teacher worth distilling. 0 keeps random weights (the tests' machinery checks).
    `dense_img_size`: pretrain for segmentation instead (a dense objective at that input size)."""
    import tempfile

    from .pretrain import pretrain_dense_teacher, pretrain_teacher
    from ..testing.tiny import build_image_mixer, build_sd_text, build_student, build_teacher

    folder = Path(folder)
    paths = {"teacher": folder / "teacher" / "model.safetensors",
             "student": folder / "student" / "model.safetensors",
             "image-mixer": folder / "image-mixer", "sd-text": folder / "sd-text"}

    def build():
        teacher = build_teacher(folder, sizes, seed)
        if pretrain_steps:
            with tempfile.TemporaryDirectory() as corpus:
                if dense_img_size:
                    pretrain_dense_teacher(teacher, sizes, seed=seed, corpus_dir=Path(corpus), img_size=dense_img_size,
                                           steps=pretrain_steps)
                else:
                    pretrain_teacher(teacher, sizes, seed=seed, corpus_dir=Path(corpus), steps=pretrain_steps)
        build_student(folder, sizes, seed)
        build_image_mixer(folder, sizes, seed)
        build_sd_text(folder, sizes, seed)
        plain_modes(folder)   # safetensors and diffusers write weight files 0600
        return description

    description = {**to_dict(sizes), "seed": seed, "teacher_pretrain_steps": pretrain_steps}
    if dense_img_size:   # absent otherwise: the classification demo's models stay reused as they were
        description["teacher_pretrain_dense_img_size"] = dense_img_size
    reuse(folder / "tiny.done.json", fingerprint(description), build, outputs=list(paths.values()))
    return {k: str(v) for k, v in paths.items()}


class Timer:
    def __init__(self):
        self.rows: list[tuple[str, float, str]] = []

    def run(self, name: str, fn, note=lambda result: ""):
        t0 = time.time()
        print(f"[demo] {name} …", flush=True)
        result = fn()
        self.rows.append((name, time.time() - t0, note(result)))
        return result


@torch_threads(DEMO_THREADS)
def build_release(out: str | Path, size_name: str = "demo", timer: Timer | None = None,
                  kinds: list[str] | None = None) -> dict:
    """Data, tiny models, then ingest → probe → plan → generate → release → verify into `out`.
    `kinds`: generator.kinds (the other generators' releases go to out/generators/<kind>).
    Returns what the rest of the demo needs (models, manifest, probe metrics)."""
    from ..config import load_job

    timer = timer or Timer()
    prepared = prepare_job(out, size_name, timer, kinds)
    probe, manifest = job_stages(load_job(prepared["job_path"]), Path(out).resolve(), timer)
    return {**prepared, "manifest": manifest, "probe": probe}


@torch_threads(DEMO_THREADS)   # the teacher's pretraining runs here: its weights must not depend on the caller
def prepare_job(out: str | Path, size_name: str = "demo", timer: Timer | None = None,
                kinds: list[str] | None = None) -> dict:
    """Data, tiny models, ingest and the job file in `out`/work, no model run yet (reused when done):
    what a plan, a config check or a storage test needs without the generation stages."""
    quiet_libraries()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on a hub
    from ..sources.ingest import ingest
    from ..stages.jobdir import WORK
    from ..testing.toydata import write_toy_dataset

    size = SIZES[size_name]
    out = Path(out).resolve()
    work = out / WORK
    timer = timer or Timer()

    def make_source():
        write_toy_dataset(work / "source", num_classes=size.classes, per_class=size.per_class, seed=0)
        return build_demo_models(work / "models", pretrain_steps=size.pretrain_steps)

    models = timer.run("data + tiny models", make_source)
    ingest_dir = work / "ingest"

    def do_ingest():
        settings = {"source": size.__dict__, "val_fraction": 0.15, "seed": 0}
        return reuse(work / "ingest.done.json", fingerprint(settings),
                     lambda: ingest(work / "source", ingest_dir, val_fraction=0.15, seed=0).to_json(),
                     outputs=[ingest_dir / "index.parquet"])[0]

    timer.run("ingest", do_ingest, lambda s: f"kept {s['kept']}, rejected {s['rejected']}")
    config = job_config(models, str(ingest_dir / "index.parquet"), size)
    if kinds:
        config["generator"]["kinds"] = list(kinds)
        if "sd-text" in kinds:   # the text-prompted baseline beside ImageMixer: its own folder
            config["generator"]["prompted_path"] = models["sd-text"]
    job_path = dump(config, work / "job.yaml")
    return {"models": models, "job_path": str(job_path), "index": config["data"]["index"]}


def job_stages(job, out: Path, timer: Timer, label: str = "") -> tuple[dict, dict]:
    """probe → plan → generate → release → verify of one job folder (and its generator family);
    (probe metrics, manifest)."""
    from ..contract.manifest import read_manifest
    from ..stages.distribute import generate_stage
    from ..stages.jobdir import members
    from ..stages.plan import plan_stage
    from ..stages.probe import probe_stage, teacher_line
    from ..stages.release import release_stage
    from ..tools.verify import verify_release

    probe, _ = timer.run(f"probe{label}", lambda: probe_stage(job, out),
                         lambda r: teacher_line(r[0]) + (" (reused)" if r[1] else ""))
    timer.run(f"plan{label}", lambda: plan_stage(job, out),
              lambda r: f"{len(r[0])} samples, {len(r[0].shard_names())} shards" + (" (reused)" if r[1] else ""))
    timer.run(f"generate{label}", lambda: generate_stage(job, out, progress=True),
              lambda s: f"{s.done} shards made, {s.skipped} reused")
    timer.run(f"release{label}", lambda: release_stage(job, out))
    manifest = read_manifest(str(out))
    roots = [out] + [m.root for m in members(job, out)]
    problems = timer.run(f"verify{label}", lambda: [p for root in roots for p in verify_release(root)],
                         lambda p: ("OK" if not p else f"{len(p)} problems") + (f" ({len(roots)} releases)"
                                                                                  if len(roots) > 1 else ""))
    if problems:
        raise JobFailed(f"{out}: verify found {len(problems)} problem(s), first: {problems[0][0]}: {problems[0][1]}")
    return probe, manifest


COMPARE_KINDS = ["image-mixer", "mixup", "cutmix", "sd-text"]
FINETUNED_DIR = "teacher-finetuned"   # the finetuned teacher's release, in the demo folder
# The demo's finetuned teacher (the paper's counterpoint to probing): its last block, final norm and
# head trained on the task; it labels the real images only (its row is KD on real images).
FINETUNE_RECIPE = {"mode": "finetune", "head": "linear", "blocks": 1, "epochs": 10, "lr": 0.003,
                   "weight_decay": 0.0001, "batch_size": 64, "layer_decay": 0.75, "warmup_epochs": 1}


def finetuned_teacher_job(models: dict, index: str, size: DemoSize) -> dict:
    """The demo job with a finetuned teacher and no mixes."""
    config = job_config(models, index, size)
    config["probe"] = dict(FINETUNE_RECIPE)
    config["plan"]["pool_size"] = 0
    del config["generator"]
    config["release"] = dict(config["release"], name="tsdistill-demo-finetuned-teacher",
                             description="The tsdistill demo's real images, labelled by a finetuned teacher.")
    return config


# The compare's runs are shorter than the plain demo's (12 epochs): 9 rows × 3 seeds must fit in
# about the time 6 rows × 2 seeds of 12 epochs took.
COMPARE_EPOCHS = 8
COMPARE_SEEDS = 3
COMPARE_POOL_FRACTIONS = [0.5, 1.0]    # the SD-Mixup row again on half its pool: no new generation


def compare_config(out: str | Path, models: dict, size: DemoSize, teachers: list[dict]) -> dict:
    """`tsd demo --compare`'s compare config: the demo's training settings at a shorter budget, every
    row, 3 seeds; SD-Mixup also on half its pool; the tiny ViT-S/14 student's finetune and KD rows."""
    from ..testing.tiny import VIT_STUDENT_ARCH, VIT_STUDENT_KWARGS

    train = train_config(str(out), models, "distill", size)
    runtime = dict(train["runtime"], checkpoint_every=48, eval_every=0)  # validation at the end only: time
    optim = dict(train["optim"], epochs=min(size.epochs, COMPARE_EPOCHS))
    vit = {"name": "vit-s14", "rows": ["finetune", "kd"],
           "student": {"arch": VIT_STUDENT_ARCH, "weights": models["vit-student"],
                       "img_size": VIT_STUDENT_KWARGS["img_size"], "model_kwargs": dict(VIT_STUDENT_KWARGS)}}
    return {"teachers": teachers, "seeds": COMPARE_SEEDS, "student": train["student"],
            "loss": {k: v for k, v in train["loss"].items() if k != "mode"}, "data": train["data"],
            "optim": optim, "runtime": runtime, "students": [vit],
            "pool_fractions": list(COMPARE_POOL_FRACTIONS), "pool_kinds": ["image-mixer"]}


def compare_teachers(out: str | Path) -> list[dict]:
    """The demo compare's teachers: the probed one (the demo release and its mixup, cutmix and sd-text
    releases), the finetuned one (out/teacher-finetuned, real images only)."""
    from ..stages.jobdir import GENERATORS_DIR

    return [{"name": "probed", "releases": [str(out)] + [f"{out}/{GENERATORS_DIR}/{k}" for k in COMPARE_KINDS[1:]]},
            {"name": "finetuned", "releases": [f"{out}/{FINETUNED_DIR}"]}]


def build_vit_student_once(folder: Path) -> Path:
    """The tiny ViT-S/14 student's weights (reused when already built with these sizes)."""
    from ..testing.tiny import VIT_STUDENT_ARCH, VIT_STUDENT_KWARGS, build_vit_student

    path = folder / "vit-student" / "model.safetensors"
    description = {"arch": VIT_STUDENT_ARCH, **VIT_STUDENT_KWARGS, "seed": 0}

    def build():
        build_vit_student(folder, seed=0)
        plain_modes(folder)   # safetensors writes weight files 0600
        return description

    reuse(folder / "vit-student.done.json", fingerprint(description), build, outputs=[path])
    return path


@torch_threads(DEMO_THREADS)
def run_compare_demo(out: str | Path, size_name: str = "demo") -> dict:
    """`tsd demo --compare`: the demo's release plus the same mixes made by mixup and cutmix, a
    text-prompted pool (sd-text, the baseline SD-Mixup answers), a
    finetuned teacher's release of the real images, then `tsd compare` on them (finetune, KD,
    KD + each mix, SD-Mixup on half its pool, KD with the finetuned teacher; the tiny ViT-S/14
    student's finetune and KD; 3 seeds) into out/compare."""
    from trainer.compare import CompareConfig, markdown, run_compare

    from ..config import load_job
    from ..stages.jobdir import WORK

    t_start = time.time()
    out = Path(out).resolve()
    timer = Timer()
    size = SIZES[size_name]
    built = build_release(out, size_name, timer, kinds=COMPARE_KINDS)
    finetuned = out / FINETUNED_DIR
    job = load_job(dump(finetuned_teacher_job(built["models"], built["index"], size), finetuned / WORK / "job.yaml"))
    job_stages(job, finetuned, timer, " (finetuned teacher)")
    models = dict(built["models"], **{"vit-student": str(build_vit_student_once(out / WORK / "models"))})
    config_path = dump(compare_config(out, models, size, compare_teachers(out)), out / WORK / "compare.yaml")
    results = timer.run("compare", lambda: run_compare(load(CompareConfig, config_path), out / "compare"),
                        lambda r: f"{len(r['rows'])} rows × {len(r['rows'][0]['seeds'])} seeds")
    print()
    print(markdown(results))
    wall = round(time.time() - t_start, 1)
    print_stages(timer.rows, wall, width=32)
    print(f"\nresults: {out / 'compare'} (results.json, results.md, results.png). Tiny random-weight models: "
          "the demo's ImageMixer weights are random, so its SD-Mixup images are noise.")
    return {**results, "wall_s": wall}


@torch_threads(DEMO_THREADS)
def run_demo(out: str | Path, size_name: str = "demo") -> dict:
    t_start = time.time()
    out = Path(out).resolve()
    timer = Timer()
    built = build_release(out, size_name, timer)
    size, manifest = SIZES[size_name], built["manifest"]
    evals, report = demo_students(out, timer, lambda mode: train_config(str(out), built["models"], mode, size),
                                  _evaluate, _pictures, "top1", "top-1")
    summary = demo_summary(out, manifest, built["probe"], evals, "top1", timer, t_start)
    print_summary(summary, out)
    print_report(report)
    return summary


def demo_students(out: Path, timer: Timer, config_of, evaluate, pictures, key: str, label: str,
                  eval_files: tuple[str, ...] = ("eval/predictions.jsonl",)) -> tuple[dict, dict]:
    """The demos' second half: train the two students (finetune, then distill: `config_of(mode)`,
    written to out/work/train-<mode>.yaml) into out/runs/<mode> and evaluate both, then draw
    `pictures(out)` and build the report site (`demo_report` with `eval_files`).
    Returns (their eval metrics by mode, the report)."""
    results = {}
    for mode in ("finetune", "distill"):
        cfg_path = dump(config_of(mode), out / "work" / f"train-{mode}.yaml")
        results[mode] = timer.run(f"train ({mode})", lambda p=cfg_path, m=mode: _train(p, out / "runs" / m),
                                  lambda r: f"val {label} {r['val'][key]:.3f}")
    evals = timer.run("eval", lambda: {m: evaluate(out / "runs" / m, out) for m in results},
                      lambda e: ", ".join(f"{m} {e[m][key]:.3f}" for m in e))
    timer.run("pictures", lambda: pictures(out), lambda paths: ", ".join(p.name for p in paths))
    report = timer.run("report", lambda: demo_report(out, eval_files), lambda r: f"{r['index']} ({r['mixes']} mixes)")
    return evals, report


def print_report(report: dict) -> None:
    print(f"report: {report['index']} (open it in a browser: no server needed)")


def demo_summary(out: Path, manifest: dict, probe: dict, evals: dict, key: str, timer: Timer, t_start: float,
                 **extra) -> dict:
    """What a demo prints and keeps in out/work/demo-summary.json: samples and shards per kind/split,
    the teacher (probed, and its stored outputs) and both students by the task's headline `key`
    (top1, miou), `extra` values, the stages' times."""
    summary = {
        "counts": manifest["counts"],
        "shards": {k: sum(1 for s in manifest["shards"] if f"{s['kind']}/{s['split']}" == k)
                   for k in manifest["counts"]},
        f"teacher_val_{key}": probe[f"val_{key}"],
        f"teacher_stored_val_{key}": evals["distill"][f"teacher_{key}"],
        f"finetune_val_{key}": evals["finetune"][key],
        f"distill_val_{key}": evals["distill"][key],
        "distill_teacher_agreement": evals["distill"]["agreement"],
        **extra,
        "stages": [(n, round(s, 1), note) for n, s, note in timer.rows],
        "wall_s": round(time.time() - t_start, 1),
    }
    (out / "work" / "demo-summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _evaluate(run_dir: Path, release: Path) -> dict:
    """What `tsd eval RUN RELEASE` reports and writes (RUN/eval/: per_class.csv, confusion.png): the
    saved student reloaded and run on the val shards."""
    from trainer.evaluate import eval_report, evaluate_checkpoint

    metrics, info = evaluate_checkpoint(run_dir, str(release), workers=1, predictions=True)
    rows = metrics.pop("predictions")
    eval_report(metrics, rows, info, str(release), run_dir / "eval", run=run_dir.name)
    # what `tsd eval --predictions` writes: the report's confusion matrix and disagreements
    (run_dir / "eval" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return metrics


def demo_report(out: Path, eval_files: tuple[str, ...] = ("eval/predictions.jsonl",)) -> dict:
    """The static report site of the release and both runs (`tsd report`), reused while they are
    unchanged: the manifest, each run's metrics.json and its `eval_files` (what the report reads of
    an eval: the classification predictions, or the segmentation per-class IoU)."""
    from ..tools.report import build_report

    runs = [out / "runs" / "distill", out / "runs" / "finetune"]
    files = [out / "manifest.json", *(r / name for r in runs for name in ("metrics.json", *eval_files))]
    inputs = fingerprint([sha256_file(f) for f in files])

    def build():
        done = build_report(out, [str(r) for r in runs], out / "report")
        return dict(done, index=str(done["index"]))

    return reuse(out / "report" / "report.done.json", inputs, build, outputs=[out / "report" / "index.html"])[0]


def _pictures(out: Path) -> list[Path]:
    """The contact sheet of mixes, the paper's PCA figure and the training curves."""
    from ..tools.viz import plot_curves, plot_mixes, plot_pca

    runs = [out / "runs" / "distill", out / "runs" / "finetune"]
    folder = out / "pictures"
    names = [folder / n for n in ("mixes.png", "pca.png", "curves.png")]
    inputs = fingerprint([sha256_file(out / "manifest.json"), *(sha256_file(r / METRICS) for r in runs)])

    def draw():
        plot_mixes(out, names[0])
        plot_pca(out, runs, names[1])
        plot_curves(runs, names[2])
        return [str(p) for p in names]

    return [Path(p) for p in reuse(folder / "pictures.done.json", inputs, draw, outputs=names)[0]]


def _train(config_path: Path, run_dir: Path) -> dict:
    """Train (or reuse a finished run with the same config) and return its final metrics."""
    from trainer.config import TrainConfig
    from trainer.train import run_training

    return reuse(run_dir / "demo.done.json", sha256_bytes(config_path.read_bytes()),
                 lambda: run_training(load(TrainConfig, config_path), run_dir, overwrite=True),
                 outputs=[run_dir / METRICS])[0]


def print_stages(rows, wall_s: float, width: int) -> None:
    """The demo's timing table: one row per stage (name, seconds, note), then the total."""
    print(f"{'stage':<{width}}{'seconds':>9}  note")
    for name, secs, note in rows:
        print(f"{name:<{width}}{secs:>9.1f}  {note}")
    print(f"{'total':<{width}}{wall_s:>9.1f}")


def print_summary(s: dict, out: Path) -> None:
    print()
    print(f"tsd demo: {out}")
    print(f"{'kind/split':<14}{'samples':>9}{'shards':>8}")
    for k, n in s["counts"].items():
        print(f"{k:<14}{n:>9}{s['shards'][k]:>8}")
    print()
    print(f"{'model':<22}{'val top-1':>10}")
    print(f"{'teacher (probed)':<22}{s['teacher_val_top1']:>10.3f}   (the probe's own measure, teacher/probe.json)")
    if "teacher_stored_val_top1" in s:
        print(f"{'teacher (release)':<22}{s['teacher_stored_val_top1']:>10.3f}   (its logits stored in the release: what "
              "the students learn from, and metrics.json's teacher_top1)")
    print(f"{'student, finetuned':<22}{s['finetune_val_top1']:>10.3f}")
    print(f"{'student, distilled':<22}{s['distill_val_top1']:>10.3f}"
          f"   (agrees with the teacher on {s['distill_teacher_agreement']:.1%})")
    print()
    print_stages(s["stages"], s["wall_s"], width=20)
    print(f"\npictures: {out / 'pictures'}; verify the release with: tsd verify {out}")
