"""`tsd demo --real-size --out DIR`: every stage at the paper's real model sizes, on a CPU.

Random-weight models at the published configurations, written in the layouts users download
(demo.published), then the commands a user runs, each in its own process, as a user would:
tsd ingest → tsd convert (ImageMixer's checkpoint + CLIP ViT-L/14 → a diffusers folder) → tsd probe
(about a dozen images) → tsd plan (4 mixes, K = 2 views) → tsd generate (640 px, 2 ldm-DDIM steps,
guidance 3, on a local Ray cluster) → tsd release → tsd verify → tsd train (2 steps each for
ResNet-50 and ViT-S/16 at 224 px) → tsd eval. It prints wall time and peak memory per stage and the
parameter count of every model file.

Choices forced by a 2-core, 24 GiB machine shared with others (aim: peak under ~14 GiB, 25 min):
- bf16 on the CPU (TSD_CPU_BF16=1, contract.device): the teacher and the generator run in bf16,
  as on a GPU. On CPUs with native bf16 (AVX512-BF16/AMX) it is 2-3x faster than fp32 and halves
  the resident weights (ViT-g/14 2.3 GB instead of 4.5, ImageMixer 2.5 GB instead of 5). Weight
  files stay fp32, as published. The students train in fp32 (the trainer's CPU rule).
- One stage per process: a stage's memory is returned to the system when it exits, and its peak
  is its own (RSS summed over the process and its children, Ray's workers included, sampled every
  0.2 s: shared pages count once per process, so the sum errs high).
- `tsd convert` memory-maps the 5.1 GB checkpoint and builds the UNet and VAE on the meta device,
  the checkpoint's tensors assigned as their weights: nothing is copied or randomly initialised.
- The VAE decodes one image per call (generator.vae_slice: 1): at 640 px its full-resolution
  activations dominate the memory of a decode.
Rerun on the same DIR: finished stages are reused, and a model file already present is kept, so
real weights put at the same paths (or named in work/job.yaml) replace the random ones.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainer.runfiles import METRICS

from ..contract.configlib import dump
from ..contract.device import CPU_BF16_ENV
from .published import PUBLISHED, REHEARSAL, ModelSpec, count_checkpoint, count_folder, count_safetensors, paths

GIB = 1024 ** 3


@dataclass(frozen=True)
class RealSizeRun:
    models: ModelSpec
    classes: int = 4
    train_per_class: int = 2     # 8 train images: 2 training steps of 4 real + 4 mixes
    val_per_class: int = 1
    image_sizes: tuple = (320, 480)
    teacher_img: int = 224
    teacher_batch: int = 16
    generator_size: int = 640
    steps: int = 2
    mixes: int = 4
    views: int = 2
    train_batch: int = 8
    env: dict = field(default_factory=lambda: {CPU_BF16_ENV: "1"})


RUNS = {"published": RealSizeRun(PUBLISHED),
        "rehearsal": RealSizeRun(REHEARSAL, image_sizes=(48, 96), teacher_img=56, generator_size=64)}


# -- measuring a stage --------------------------------------------------------------------------------
class PeakRSS:
    """Peak of the summed RSS of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.2):
        import psutil

        self.root, self.interval, self.peak = psutil.Process(pid), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> int:
        import psutil

        total = 0
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


@dataclass
class Stage:
    name: str
    seconds: float
    peak_bytes: int
    note: str = ""


class Stages:
    def __init__(self, work: Path, env: dict):
        self.work, self.env, self.rows = work, env, []
        (work / "logs").mkdir(parents=True, exist_ok=True)

    def run(self, name: str, argv: list[str], note: str = "") -> str:
        """Run one command in its own process; its output goes to work/logs/NAME.log."""
        log = self.work / "logs" / f"{name.replace(' ', '-').replace('/', '-')}.log"
        print(f"[real-size] {name}: {' '.join(argv[2:] if argv[1] == '-m' else argv)}", flush=True)
        t0 = time.time()
        with open(log, "w") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)
            meter = PeakRSS(proc.pid)
            code = proc.wait()
            peak = meter.stop()
        self.rows.append(Stage(name, time.time() - t0, peak, note))
        text = log.read_text()
        if code:
            raise RuntimeError(f"real-size demo: stage {name!r} failed (exit {code}); last lines of {log}:\n"
                               + "\n".join(text.splitlines()[-25:]))
        return text

    def skip(self, name: str, why: str) -> None:
        print(f"[real-size] {name}: {why}", flush=True)
        self.rows.append(Stage(name, 0.0, 0, why))


def tsd(*args) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *map(str, args)]


# -- the job ----------------------------------------------------------------------------------------
def write_source(work: Path, run: RealSizeRun) -> Path:
    """The toy dataset as an ImageFolder tree plus a CSV with a fixed split (8 train / 4 val)."""
    from ..testing.toydata import write_toy_dataset

    source = work / "source"
    per_class = run.train_per_class + run.val_per_class
    write_toy_dataset(source, num_classes=run.classes, per_class=per_class, seed=0, size_range=run.image_sizes)
    lines = ["path,label,split"]
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        for i, image in enumerate(sorted(folder.iterdir())):
            split = "train" if i < run.train_per_class else "val"
            lines.append(f"{image.relative_to(source)},{folder.name},{split}")
    table = source / "split.csv"
    table.write_text("\n".join(lines) + "\n")
    return table


def job_config(run: RealSizeRun, models: dict, index: Path) -> dict:
    """A paper recipe (manifests/cub200.yaml) at the demo's data size: the same models and settings
    but 2 denoising steps, K = 2 views, 4 mixes, and bf16 where a GPU would run half precision."""
    m = run.models
    return {
        "seed": 0,
        "data": {"index": str(index), "store_size": 256, "image_format": "jpg", "quality": 90},
        "teacher": {"arch": m.teacher_arch, "weights": str(models["teacher"]), "img_size": run.teacher_img,
                    "model_kwargs": {k: v for k, v in m.teacher_kwargs.items() if k != "img_size"},
                    "dtype": "bf16", "batch_size": run.teacher_batch},
        "probe": {"head": "linear", "views": 1, "epochs": 100, "lr": 0.001, "batch_size": 1024},
        "views": {"k": run.views, "scale": [0.25, 1.0]},
        "plan": {"pool_size": run.mixes, "pairing": "any", "weight_law": "uniform"},
        "generator": {"kind": "image-mixer", "path": str(models["image-mixer-diffusers"]), "size": run.generator_size,
                      "steps": run.steps, "guidance": 3.0, "scheduler": "ldm-ddim", "tokens": 5, "dtype": "bf16",
                      "batch_size": 2, "vae_slice": 1},
        "generate": {"shard_size": 256, "workers": 1, "cpus_per_worker": os.cpu_count() or 1},
        "release": {"name": "tsdistill-real-size-demo", "license": "cc0-1.0",
                    "description": "tsd demo --real-size: procedural images, random-weight models at the "
                                   "paper's sizes."},
    }


def train_config(run: RealSizeRun, release: Path, student, weights: Path) -> dict:
    """manifests/train-resnet50.yaml's shape: 1 epoch of 2 steps (8 real images, 4 per batch)."""
    return {
        "releases": [str(release)],
        "student": {"arch": student.arch, "weights": str(weights), "img_size": student.img_size,
                    "model_kwargs": dict(student.model_kwargs)},
        "loss": {"mode": "distill", "alpha": 0.5, "temperature": 2.0},
        "data": {"mix_ratio": 0.5, "batch_size": run.train_batch, "workers": 0},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0001, "epochs": 1, "warmup_epochs": 0},
        "runtime": {"device": "auto", "seed": 0, "log_every": 1},
    }


# -- the run ------------------------------------------------------------------------------------------
def parameter_counts(models: dict, spec: ModelSpec) -> list[tuple[str, int, str]]:
    """(model, parameters, file) counted from the files written (headers / memory-mapped tensors)."""
    rows = [(f"teacher {spec.teacher_arch}", count_safetensors(models["teacher"]), str(models["teacher"]))]
    for group, c in count_checkpoint(models["image-mixer"]).items():
        rows.append((f"ImageMixer ckpt: {group} ({c['tensors']} tensors)", c["params"], str(models["image-mixer"])))
    clip = models["clip"] / "model.safetensors"
    rows.append(("CLIP ViT-L/14 folder (text + vision)", count_safetensors(clip), str(clip)))
    rows.append(("ImageMixer diffusers folder (converted)", count_folder(models["image-mixer-diffusers"]),
                 str(models["image-mixer-diffusers"])))
    for s in spec.students:
        rows.append((f"student {s.arch}", count_safetensors(models[s.arch]), str(models[s.arch])))
    return rows


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("[")]
    return lines[-1][:90] if lines else ""


def run_real_size(out: str | Path, run_name: str = "published") -> dict:
    import shutil

    import psutil

    from ..contract.files import reuse
    from ..contract.ids import sha256_bytes
    from ..stages.jobdir import WORK

    run = RUNS[run_name]
    spec = run.models
    out = Path(out).resolve()
    work = out / WORK
    models_dir = work / "models"
    root = str(Path(__file__).resolve().parents[2])   # children import this very code
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **run.env,
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    vm = psutil.virtual_memory()
    print(f"[real-size] {out} ({run_name} models): {vm.total / GIB:.1f} GiB memory, {vm.available / GIB:.1f} GiB "
          f"available, {os.cpu_count()} CPUs", flush=True)
    t0, load_start = time.time(), os.getloadavg()[0]   # other jobs on the machine stretch the wall times
    stages = Stages(work, env)
    models = paths(models_dir, spec)

    build = [sys.executable, "-m", "pipeline.demo.published"]
    students = [models[s.arch] for s in spec.students]
    for what, files in (("teacher", [models["teacher"]]), ("clip", [models["clip"]]),
                        ("image-mixer", [models["image-mixer"]]), ("students", students)):
        if all(f.exists() for f in files):   # a file already there (real weights, an earlier run) is kept
            stages.skip(f"model: {what}", "present, kept")
        else:
            stages.run(f"model: {what}", build + [what, str(models_dir), "--spec", run_name])

    index = work / "ingest" / "index.parquet"
    if index.exists():
        stages.skip("ingest", "done")
    else:
        table = write_source(work, run)
        text = stages.run("ingest", tsd("ingest", table, "--out", work / "ingest", "--workers", 1))
        stages.rows[-1].note = _last_line(text)

    converted = models["image-mixer-diffusers"]
    if (converted / "model_index.json").exists():
        stages.skip("convert", "present, kept")
    else:
        text = stages.run("convert", tsd("convert", models["image-mixer"], "--out", converted,
                                         "--config", models["image-mixer-config"], "--image-encoder", models["clip"]))
        stages.rows[-1].note = _last_line(text)

    job = dump(job_config(run, models, index), work / "job.yaml")
    for command in ("probe", "plan", "generate", "release"):
        text = stages.run(command, tsd(command, job, "--out", out))
        stages.rows[-1].note = _last_line(text)
    text = stages.run("verify", tsd("verify", out))
    stages.rows[-1].note = _last_line(text)

    evals = {}
    for s in spec.students:
        config = dump(train_config(run, out, s, models[s.arch]), work / f"train-{s.arch}.yaml")
        run_dir = out / "runs" / s.arch

        def train(config=config, run_dir=run_dir, s=s):
            shutil.rmtree(run_dir, ignore_errors=True)   # an unfinished earlier attempt
            stages.run(f"train {s.arch}", tsd("train", config, "--out", run_dir))
            return {}

        _, reused = reuse(work / f"train-{s.arch}.done.json", sha256_bytes(config.read_bytes()), train,
                          outputs=[run_dir / METRICS])
        if reused:
            stages.skip(f"train {s.arch}", "done")
        else:
            metrics = json.loads((run_dir / METRICS).read_text())
            stages.rows[-1].note = f"{metrics['train']['steps']} steps, val top-1 {metrics['val']['top1']:.3f}"
    for s in spec.students:
        result = work / f"eval-{s.arch}.json"
        stages.run(f"eval {s.arch}", tsd("eval", out / "runs" / s.arch, out, "--json", result, "--workers", 1))
        evals[s.arch] = json.loads(result.read_text())
        stages.rows[-1].note = f"val top-1 {evals[s.arch].get('top1', float('nan')):.3f}"

    counts = parameter_counts(models, spec)
    summary = {
        "models": run_name,
        "stages": [{"name": r.name, "seconds": round(r.seconds, 1), "peak_rss_gib": round(r.peak_bytes / GIB, 2),
                    "note": r.note} for r in stages.rows],
        "wall_s": round(time.time() - t0, 1),
        "peak_rss_gib": round(max(r.peak_bytes for r in stages.rows) / GIB, 2),
        "parameters": [{"model": m, "params": n, "file": f} for m, n, f in counts],
        "eval": evals,
        "memory_total_gib": round(vm.total / GIB, 1), "cpus": os.cpu_count(),
        "load_average": {"start": round(load_start, 1), "end": round(os.getloadavg()[0], 1)},
    }
    (work / "real-size-summary.json").write_text(json.dumps(summary, indent=1))
    print_summary(summary, out)
    return summary


def print_summary(s: dict, out: Path) -> None:
    print()
    print(f"tsd demo --real-size: {out}")
    print(f"{'stage':<30}{'wall s':>9}{'peak RSS GiB':>14}  note")
    for r in s["stages"]:
        print(f"{r['name']:<30}{r['seconds']:>9.1f}{r['peak_rss_gib']:>14.2f}  {r['note']}")
    print(f"{'total':<30}{s['wall_s']:>9.1f}{s['peak_rss_gib']:>14.2f}  (peak: the largest stage; load average "
          f"{s['load_average']['start']} at the start, {s['load_average']['end']} at the end, {s['cpus']} CPUs)")
    print()
    print(f"{'model (parameters counted from the files written)':<58}{'parameters':>16}")
    for p in s["parameters"]:
        print(f"{p['model']:<58}{p['params']:>16,}")
    print(f"\nverify the release with: tsd verify {out}")
