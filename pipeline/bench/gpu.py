"""`bench/gpu.sh` (= `python -m pipeline.bench.gpu`): the device check. It fits one lease: each
section runs as its own process, in the order that answers most first, and appends its results to
a JSON-lines file the moment each is measured (a timeout still returns every line written); a time
budget stops starting sections whose estimate no longer fits, and ends one that runs over.

Sections (estimated seconds on one H100 at --size imagemixer):
  env          15  versions, the device, whether transformers sees torch, gcc and Python.h (Triton)
  attention    20  the SDPA kernels picked for the UNet, VAE and ViT-g/14 shapes in fp16 and bf16
  syncs        25  host syncs per source line over one mix() (SyncCounter, CUDA's sync debug mode)
  decode_race  20  GPU JPEG decode behind queued work: none / plain / the trainer's path, 20 trials
  trainer      90  `tsd bench train` over 3 epochs: ResNet-50 and ViT-S/16, CPU and GPU decode
  stock        60  the stock diffusers pipeline, 1 per call and batched, as many UNet steps as the worker
  worker      110  ShardWorker eager end to end: images/s of good samples, GPU ms per stage, peak
                   memory, failed samples; then the ViT-g/14 teacher it holds, bf16 (teacher_img_per_s)
  anchors      60  shared/bench/anchors_gpu.py when a copy travels (the reference on the same card)
  compile     200  the generator compiled (fullgraph) and with CUDA graphs: compile seconds, images/s,
                   largest pixel difference to eager; last, and only when the budget still allows
About 6.7 min (400 s) up to the anchors, under the default budget of 470 s (7.8 min), so one call
with its start-up fits a 10-minute lease; compile (200 s) starts only when the sections before it
ran that much faster than estimated (or with a larger --budget in a later call, --sections compile).

What it needs on the GPU machine: the repository and small wheels for what is not there
(diffusers, webdataset, braceexpand; torch, torchvision, transformers, timm, pyarrow, safetensors,
fsspec, pillow and yaml are in its image); no Ray (its wheel is too big to carry, and nothing here
imports it). One call, after `echo /.whl/ >> .git/info/exclude` and downloading those wheels to
.whl (device README), with anchors_gpu.py copied to shared/bench/:
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site;
  PYTHON=python3 bench/gpu.sh --out $OUT/gpu.jsonl --budget 470
Models are random-weight real-size ones (speed does not depend on the values), built once into
--work and shared by the sections. At --size tiny it runs on a CPU in a minute (the tests run it).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..contract.device import resolve_device, torch_dtype
from ..runtime import quiet_libraries
from .generate import build_models, load_stock, random_parents, stock_rates, synchronize

TARGETS = {"worker_img_per_s": 5.0, "teacher_img_per_s": 900.0, "trainer_shards_over_memory": 0.9}
SECTIONS = ("env", "attention", "syncs", "decode_race", "trainer", "stock", "worker", "anchors", "compile")
ESTIMATE_S = {"imagemixer": {"env": 15, "attention": 20, "syncs": 25, "decode_race": 20, "trainer": 90, "stock": 60,
                             "worker": 110, "anchors": 60, "compile": 200},
              "tiny": {"env": 5, "attention": 5, "syncs": 15, "decode_race": 2, "trainer": 60, "stock": 15,
                       "worker": 25, "anchors": 5, "compile": 5}}
ANCHORS = Path("shared/bench/anchors_gpu.py")


@dataclass(frozen=True)
class GpuBenchSize:
    image: int
    steps: int
    guidance: float
    scheduler: str
    stock_batch: int
    mixes: int                  # planned mixes per timed make_samples call
    batch: int                  # worker batch size
    views: int                  # K recorded views (teacher passes per sample)
    teacher_batch: int
    source_sizes: tuple         # side range of the parent images (px)
    students: tuple             # `tsd bench train` archs
    train: dict                 # `tsd bench train` settings
    attention: tuple            # (name, batch, heads, query length, key length, head dim)
    decode: tuple               # (JPEGs per batch, height, width) of the decode race


SIZES = {
    "tiny": GpuBenchSize(image=64, steps=2, guidance=3.0, scheduler="ldm-ddim", stock_batch=2, mixes=2, batch=2,
                         views=2, teacher_batch=32, source_sizes=(64, 128), students=("resnet50",),
                         train=dict(img_size=32, batch_size=4, epochs=3, warmup=1, workers=2, images=10,
                                    store_size=40),
                         attention=(("unet-self", 2, 2, 64, 64, 16), ("unet-cross", 2, 2, 64, 5, 16),
                                    ("vae-mid", 1, 1, 64, 64, 32), ("vit", 4, 2, 17, 17, 16)),
                         decode=(2, 48, 64)),
    "imagemixer": GpuBenchSize(image=640, steps=30, guidance=3.0, scheduler="ldm-ddim", stock_batch=8, mixes=32,
                               batch=16, views=10, teacher_batch=256, source_sizes=(360, 500),
                               students=("resnet50", "vit_small_patch16_224"),
                               train=dict(img_size=224, batch_size=256, epochs=3, warmup=5,
                                          workers=min(16, os.cpu_count() or 1), images=2048, store_size=256),
                               # CFG batch 2x8; UNet levels at 80/40/20 px latents (head dims 40, 80, 160),
                               # cross-attention to ImageMixer's 5 tokens; VAE mid-block; ViT-g/14 at 224 px
                               attention=(("unet-self-80", 16, 8, 6400, 6400, 40),
                                          ("unet-self-40", 16, 8, 1600, 1600, 80),
                                          ("unet-self-20", 16, 8, 400, 400, 160), ("unet-cross-80", 16, 8, 6400, 5, 40),
                                          ("vae-mid-80", 1, 1, 6400, 6400, 512), ("vitg-224", 256, 24, 257, 257, 64)),
                               decode=(8, 375, 500)),
}

_T0 = time.time()


def log(*parts) -> None:
    print(f"[bench gpu {time.time() - _T0:6.1f}s]", *parts, file=sys.stderr, flush=True)


# -- the job the worker runs ---------------------------------------------------------------------
def write_job(size_name: str, size: GpuBenchSize, folder: Path, model: Path, device: torch.device,
              dtype: str, threads: int):
    """Source images (ingested), a teacher head and a JobConfig at the recipe's generator settings."""
    from ..config import JobConfig
    from ..contract.configlib import build
    from ..contract.layout import HEAD_FILE
    from ..testing.tiny import TinySizes
    from ..testing.toydata import write_toy_dataset
    from ..models.teacher import describe_backbone, make_head, save_head
    from ..sources.ingest import ingest
    from .generate import TEACHER_IMAGEMIXER

    # parents the size of the datasets' photos (500x375-ish at imagemixer), stored at the recipes' 256 px
    write_toy_dataset(folder / "source", num_classes=4, per_class=max(2, size.mixes // 4), seed=0,
                      size_range=size.source_sizes)
    ingest(folder / "source", folder / "ingest", val_fraction=0.1, seed=0, workers=1)
    if size_name == "tiny":
        t = TinySizes()
        teacher = {"arch": t.teacher_arch, "img_size": t.teacher_img, "model_kwargs": dict(t.teacher_kwargs)}
    else:
        teacher = {"arch": TEACHER_IMAGEMIXER[0], "img_size": TEACHER_IMAGEMIXER[1]}
    data = {
        "data": {"index": str(folder / "ingest" / "index.parquet"), "store_size": 256, "image_format": "jpg"},
        "teacher": {**teacher, "dtype": "bf16", "batch_size": size.teacher_batch},
        "views": {"k": size.views},
        "plan": {"pool_size": size.mixes},
        "generator": {"kind": "image-mixer", "path": str(model), "size": size.image, "steps": size.steps,
                      "guidance": size.guidance, "scheduler": size.scheduler, "tokens": 5, "dtype": dtype,
                      "batch_size": size.batch},
        "generate": {"cpus_per_worker": threads},
    }
    job = build(JobConfig, data)
    release = folder / "release"
    described = describe_backbone(job.teacher)
    head = make_head("linear", described["feature_dim"], 4)
    save_head(head, release / HEAD_FILE, {"head": "linear", "in_dim": described["feature_dim"], "num_classes": 4})
    return job, release


def planned_mixes(job, folder) -> list:
    from ..stages.plan import write_plan

    return [r for r in write_plan(job, folder / "plan.parquet").iter_rows() if r.kind == "mix"]


class Section:
    """What a section process gets: its settings, and `emit` to append a result line now."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name, self.args = name, args
        self.size = SIZES[args.size]
        self.device = resolve_device(args.device)
        self.work = Path(args.work)

    def emit(self, **row) -> dict:
        line = {"section": self.name, **row, "t_s": round(time.time() - _T0, 2)}
        with open(self.args.out, "a") as f:
            f.write(json.dumps(line) + "\n")
        log(self.name, json.dumps(row)[:300])
        return line

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self.args.dtype, self.device)

    def models(self) -> Path:
        """The generator folder, built once per --work (the sections share it)."""
        folder = self.work / "models"
        done = folder / "built"
        if not done.exists():
            path = build_models(self.args.size, folder, self.dtype)
            done.write_text(str(path))
        return Path(done.read_text())


def on_gpu(sec: Section, verdict: bool) -> bool | None:
    """A target's verdict; None on a CPU (the targets are per H100/H200)."""
    return verdict if sec.device.type == "cuda" else None


def timer(device: torch.device):
    """A stopwatch in GPU time on CUDA (events), wall time on a CPU: start() then ms()."""
    class Watch:
        def start(self):
            if device.type == "cuda":
                self.a, self.b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                self.a.record()
            else:
                self.t = time.perf_counter()

        def ms(self) -> float:
            if device.type == "cuda":
                self.b.record()
                self.b.synchronize()
                return self.a.elapsed_time(self.b)
            return (time.perf_counter() - self.t) * 1000
    return Watch()


def section_env(sec: Section) -> None:
    import importlib.metadata
    import shutil
    import sysconfig

    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    try:
        import transformers
        sees_torch = bool(transformers.utils.is_torch_available())
        clip_real = type(transformers.CLIPVisionModelWithProjection).__name__ != "DummyObject"
    except Exception as e:   # noqa: BLE001 - the line says what broke
        sees_torch, clip_real = repr(e)[:200], False
    gcc = shutil.which("gcc") or shutil.which("cc")
    gcc_version = subprocess.run([gcc, "--version"], capture_output=True, text=True).stdout.splitlines()[0] \
        if gcc else None
    cuda = sec.device.type == "cuda"
    sec.emit(python=sys.version.split()[0], device=torch.cuda.get_device_name() if cuda else "cpu",
             capability=".".join(map(str, torch.cuda.get_device_capability())) if cuda else None,
             cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if cuda else None,
             memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1) if cuda else None,
             versions={n: version(n) for n in ("torch", "torchvision", "transformers", "diffusers", "timm",
                                                "huggingface_hub", "webdataset", "triton", "numpy", "ray")},
             transformers_sees_torch=sees_torch, clip_vision_real=clip_real, gcc=gcc_version,
             python_h=os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")),
             cpus=os.cpu_count())


SDPA_OPS = ("flash", "efficient", "cudnn", "math", "overrideable")


def sdpa_kernel(q, k, v) -> list[str]:
    """The aten SDPA implementations one call ran (profiler op names)."""
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        F.scaled_dot_product_attention(q, k, v)
    return sorted({e.key.removeprefix("aten::") for e in prof.key_averages()
                   if e.key.startswith("aten::_scaled_dot_product") or e.key.startswith("aten::_flash_attention")
                   or e.key.startswith("aten::_efficient_attention")})


def section_attention(sec: Section) -> None:
    import torch.nn.functional as F

    dtypes = (torch.float16, torch.bfloat16) if sec.device.type == "cuda" else (torch.float32,)
    for name, b, h, lq, lk, d in sec.size.attention:
        for dtype in dtypes:
            q = torch.randn(b, h, lq, d, device=sec.device, dtype=dtype)
            k, v = torch.randn(b, h, lk, d, device=sec.device, dtype=dtype), torch.randn(b, h, lk, d, device=sec.device,
                                                                                        dtype=dtype)
            kernels = sdpa_kernel(q, k, v)
            watch = timer(sec.device)
            F.scaled_dot_product_attention(q, k, v)
            watch.start()
            for _ in range(5):
                F.scaled_dot_product_attention(q, k, v)
            sec.emit(shape=name, dims=[b, h, lq, lk, d], dtype=str(dtype).removeprefix("torch."), kernels=kernels,
                     ms=round(watch.ms() / 5, 4))
            del q, k, v


def section_syncs(sec: Section) -> None:
    """Over one mix() of the tiny ImageMixer (the loop's code is the same at every size): the host
    reads per source line, in the denoising loop and in the whole call; on CUDA also what CUDA's
    sync debug mode reports."""
    import warnings

    from ..config import GeneratorConfig
    from ..testing.tiny import TinySizes, build_image_mixer
    from ..models.generators import DiffusionGenerator
    from ..models.build import build_generator
    from .syncs import SyncCounter

    folder = build_image_mixer(sec.work / "sync-model", TinySizes())
    gen = build_generator(GeneratorConfig(kind="image-mixer", path=str(folder), size=64, steps=4, guidance=3.0,
                                          batch_size=2, scheduler="ldm-ddim", dtype=sec.args.dtype), sec.device)
    pa, pb = random_parents(2, 1), random_parents(2, 2)
    gen.mix(pa, pb, [0.5, 0.3], [1, 2])   # warm
    synchronize(sec.device)
    cuda_reported = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if sec.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with SyncCounter(inside=[DiffusionGenerator.denoising_loop]) as loop, SyncCounter() as whole:
                gen.mix(pa, pb, [0.5, 0.3], [1, 2])
        finally:
            if sec.device.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
    for w in caught:
        if "synchroniz" in str(w.message):
            cuda_reported.append(f"{w.filename.split('site-packages/')[-1]}:{w.lineno}")
    sec.emit(loop=loop.table(), whole_mix=whole.table(), cuda_sync_debug={k: cuda_reported.count(k)
                                                                          for k in sorted(set(cuda_reported))})


def section_decode_race(sec: Section) -> None:
    """pytorch/vision#9606 behind queued work: victims freed while a queued kernel still reads them,
    then a decode; corrupted = the read saw other bytes. none / plain decode_jpeg on the current
    stream / the trainer's decode_on_device (side stream + record_stream)."""
    if sec.device.type != "cuda":
        sec.emit(skipped="needs CUDA")
        return
    import io

    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    from trainer.data import decode_on_device

    n, h, w = sec.size.decode
    g = torch.Generator().manual_seed(0)
    jpegs = []
    for _ in range(n):
        out = io.BytesIO()
        Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()).save(out, "JPEG")
        jpegs.append(torch.frombuffer(bytearray(out.getvalue()), dtype=torch.uint8))
    batch = {"jpeg": jpegs, "url": ["race"] * n, "uid": [str(i) for i in range(n)], "view": [[0, 0, 1, 1, 0]] * n}
    decoders = {"none": lambda: None,
                "plain": lambda: decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=sec.device),
                "fixed": lambda: decode_on_device(batch, 64, sec.device)}
    trials = 20
    for mode, decode in decoders.items():
        corrupted = 0
        for _ in range(trials):
            victims = [torch.full((3, h, w), i + 1, dtype=torch.uint8, device=sec.device) for i in range(n)]
            torch.cuda._sleep(200_000_000)   # ~0.1 s of queued work before the reads
            sums = [v.sum(dtype=torch.int64) for v in victims]
            del victims                       # their blocks are free for the next allocation on this stream
            out = decode()
            torch.cuda.synchronize()
            corrupted += any(int(s) != 3 * h * w * (i + 1) for i, s in enumerate(sums))
            del out
        sec.emit(mode=mode, trials=trials, corrupted=corrupted)


def section_trainer(sec: Section) -> None:
    from trainer import bench as train_bench
    from trainer.synthetic import shards_for, write_release

    t = sec.size.train
    release = sec.work / "train-release"
    if not (release / "manifest.json").exists():
        write_release(release, classes=10, train_per_class=-(-t["images"] // 10), val_per_class=1, mixes=0, views=4,
                      store_size=t["store_size"], shard_size=shards_for(t["images"], max(t["workers"], 1)))
    decodes = (False, True) if sec.device.type == "cuda" else (False,)
    for arch in sec.size.students:
        for gpu_decode in decodes:
            args = argparse.Namespace(release=str(release), arch=arch, precision="bf16", gpu_decode=gpu_decode,
                                      device=sec.device.type, json=None, **t)
            with contextlib.redirect_stdout(sys.stderr):   # the lines go to the JSONL, the log to stderr
                r = train_bench.measure(args)
            sec.emit(**{k: r[k] for k in ("arch", "img_size", "batch_size", "epochs", "workers", "precision",
                                          "gpu_decode", "memory_images_per_s", "shards_images_per_s", "ratio",
                                          "loader_start_s", "between_epochs_s", "peak_rss_gib")},
                     meets_target=on_gpu(sec, r["ratio"] >= TARGETS["trainer_shards_over_memory"]))


def section_stock(sec: Section) -> None:
    from PIL import Image

    from ..models.ldm_ddim import unet_steps

    size = sec.size
    steps = unet_steps(size.scheduler, size.steps)   # as many UNet steps as the worker runs (31 at S=30)
    pipe = load_stock(sec.models(), sec.device, sec.dtype)
    pil = Image.fromarray(random_parents(1, 1)[0].permute(1, 2, 0).numpy())
    images = 4 if sec.args.size == "imagemixer" else 2
    rates = stock_rates(pipe, pil, size.image, steps, size.guidance, size.stock_batch, images, sec.device)
    sec.emit(stock_1_img_per_s=rates["stock_1"], stock_batched_img_per_s=rates["stock_batched"],
             stock_batch=size.stock_batch, unet_steps=steps, guidance=size.guidance, image=size.image)


def section_worker(sec: Section) -> None:
    from ..models.ldm_ddim import unet_steps
    from .generate import bench_teacher_module

    size, device = sec.size, sec.device
    job, release = write_job(sec.args.size, size, sec.work / "job", sec.models(), device, sec.args.dtype,
                             torch.get_num_threads())
    rows = planned_mixes(job, sec.work / "job")
    from ..stages.worker import ShardWorker

    worker = ShardWorker(job, release, device=device.type)
    try:
        worker.make_samples(rows[:size.batch])   # loads the generator and the teacher, warms the caches
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        synchronize(device)
        start = time.perf_counter()
        made = worker.make_samples(rows)
        synchronize(device)
        seconds = time.perf_counter() - start
        good = sum(m.failure is None for m in made)
        sec.emit(what="end_to_end", mixes=len(rows), good=good, failed=len(rows) - good, seconds=seconds,
                 img_per_s=good / seconds, unet_steps=unet_steps(size.scheduler, size.steps), batch=size.batch,
                 dtype=str(sec.dtype).removeprefix("torch."),
                 peak_gib=round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if device.type == "cuda" else None,
                 meets_target=on_gpu(sec, good / seconds >= TARGETS["worker_img_per_s"]))
        sec.emit(what="stages_ms_per_batch", batch=size.batch, **stage_ms(worker, size, device))
        teacher = bench_teacher_module(worker.teacher.backbone, size.teacher_batch, device,
                                       job.teacher.img_size, job.teacher.arch)
        sec.emit(what="teacher", **teacher,
                 meets_target=on_gpu(sec, teacher["img_per_s"] >= TARGETS["teacher_img_per_s"]))
    finally:
        worker.close()


def stage_ms(worker, size: GpuBenchSize, device: torch.device) -> dict:
    """GPU milliseconds of each stage on one batch, run one after the other."""
    gen = worker.generator
    pa, pb = random_parents(size.batch, 1), random_parents(size.batch, 2)
    weights, seeds = [0.5] * size.batch, list(range(size.batch))
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    watch, out = timer(device), {}
    watch.start()
    cond = gen.conditioning(pa, pb, weights, generators)
    out["clip_condition"] = watch.ms()
    watch.start()
    latents = gen.denoise(cond, generators)
    out["denoise"] = watch.ms()
    watch.start()
    gen.decode(latents)
    out["vae_decode"] = watch.ms()
    views = [torch.rand(size.views, 3, worker.job.teacher.img_size, worker.job.teacher.img_size)
             for _ in range(size.batch)]
    watch.start()
    worker._teacher(views)
    out["teacher_views"] = watch.ms()
    return {k: round(v, 2) for k, v in out.items()}


def section_anchors(sec: Section) -> None:
    script = next((p for p in (ANCHORS, Path("..") / ANCHORS) if p.is_file()), None)
    if script is None or sec.device.type != "cuda":
        sec.emit(skipped="no copy of anchors_gpu.py in shared/bench/" if script is None else "needs CUDA")
        return
    out = sec.work / "anchors"
    out.mkdir(exist_ok=True)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env={**os.environ,
                                                                                             "OUT": str(out)})
    result = out / "anchors.json"
    sec.emit(returncode=proc.returncode, anchors=json.loads(result.read_text()) if result.exists() else None,
             tail=(proc.stdout + proc.stderr)[-1500:] if proc.returncode else None)


def section_compile(sec: Section) -> None:
    """The generator alone, eager then compiled (fullgraph) then with CUDA graphs, on the same
    batch: compile seconds (the first call), images/s, largest pixel difference to eager."""
    if sec.device.type != "cuda":
        sec.emit(skipped="needs CUDA (inductor on a CPU measures the C++ compiler)")
        return
    from ..config import GeneratorConfig
    from ..models.build import build_generator

    size = sec.size
    pa, pb = random_parents(size.batch, 1), random_parents(size.batch, 2)
    weights, seeds = [0.5] * size.batch, list(range(size.batch))
    eager = None
    for mode in ("eager", "compile", "cudagraphs"):
        cfg = GeneratorConfig(kind="image-mixer", path=str(sec.models()), size=size.image, steps=size.steps,
                              guidance=size.guidance, scheduler=size.scheduler, dtype=sec.args.dtype,
                              batch_size=size.batch, compile=mode != "eager", cuda_graphs=mode == "cudagraphs")
        gen = build_generator(cfg, sec.device)
        start = time.perf_counter()
        gen.mix(pa, pb, weights, seeds)
        synchronize(sec.device)
        first = time.perf_counter() - start
        start = time.perf_counter()
        images, failures = gen.mix(pa, pb, weights, seeds)
        synchronize(sec.device)
        rate = size.batch / (time.perf_counter() - start)
        row = {"mode": mode, "first_call_s": round(first, 2), "img_per_s": rate,
               "failed": sum(f is not None for f in failures)}
        if eager is None:
            eager = images
        else:
            row["max_pixel_diff_vs_eager"] = int((images.int() - eager.int()).abs().max())
        sec.emit(**row)
        del gen
        torch.cuda.empty_cache()


SECTION_FUNCTIONS = {"env": section_env, "attention": section_attention, "syncs": section_syncs,
                     "decode_race": section_decode_race, "trainer": section_trainer, "stock": section_stock,
                     "worker": section_worker, "anchors": section_anchors, "compile": section_compile}


# -- the driver: one process per section, a budget -----------------------------------------------------
def run_sections(args: argparse.Namespace) -> list[dict]:
    """Each section in its own process while its estimate fits the budget; returns the status lines."""
    start = time.time()
    estimates = ESTIMATE_S[args.size]
    wanted = [s for s in SECTIONS if not args.sections or s in args.sections]
    statuses = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tsd-gpu-check-") as tmp:
        work = args.work or tmp
        for name in wanted:
            left = args.budget - (time.time() - start)
            if estimates[name] > left:
                status = {"section": name, "status": "not started", "estimate_s": estimates[name],
                          "left_s": round(left, 1)}
            else:
                cmd = [sys.executable, "-m", "pipeline.bench.gpu", "--section", name, "--size", args.size, "--device",
                       args.device, "--dtype", args.dtype, "--out", str(out), "--work", work]
                t0 = time.time()
                try:
                    proc = subprocess.run(cmd, timeout=max(1.0, left), stdout=sys.stderr)
                    status = {"section": name, "status": "done" if proc.returncode == 0 else "failed",
                              "returncode": proc.returncode}
                except subprocess.TimeoutExpired:
                    status = {"section": name, "status": "cut: over the budget"}
                status["seconds"] = round(time.time() - t0, 1)
                status["estimate_s"] = estimates[name]
            statuses.append(status)
            with open(out, "a") as f:
                f.write(json.dumps(status) + "\n")
            log("section", json.dumps(status))
    return statuses


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=sorted(SIZES), default="imagemixer")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16",
                   help="generation dtype on GPU (the recipes' fp16; the CPU runs fp32)")
    p.add_argument("--budget", type=float, default=470.0,
                   help="seconds: no section starts whose estimate no longer fits, and one running over is ended")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, help="run only these (default: all, in order)")
    p.add_argument("--out", default="gpu-check.jsonl", help="the JSON-lines file results are appended to")
    p.add_argument("--work", default=None,
                   help="folder for the models and data the sections share (default: a temporary one)")
    p.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)   # internal: one section, this process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/gpu.sh", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.section:
        quiet_libraries()
        SECTION_FUNCTIONS[args.section](Section(args.section, args))
        return 0
    statuses = run_sections(args)
    return 1 if any(s["status"] == "failed" for s in statuses) else 0   # a budget's cut is no failure


if __name__ == "__main__":
    sys.exit(main())
