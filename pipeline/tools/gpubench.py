"""`bench/gpu.sh` (= `python -m pipeline.tools.gpubench`): the production path against the stock diffusers pipeline, in
one process, on random-weight models (speed does not depend on the values). Prints one JSON.

Measured, warm-up calls excluded, CUDA synchronised around each timed region:
- stock: `StableDiffusionImageVariationPipeline` at one image per call and at `stock_batch` per
  call (its own DDIM, 30 steps at the recipe's S=30);
- worker: `ShardWorker.make_samples` end to end on planned mixes (load the parents → CLIP embed
  → denoise with both CFG branches in one UNet batch → VAE decode → JPEG encode → decode → the
  teacher on the K recorded views → members), at the recipes' generator settings (ImageMixer's
  5 slots, `ldm-ddim`: S=30 runs 31 UNet steps), over a sweep of the speed switches: batch size ×
  torch.compile off / on / on + CUDA graphs, and at the first batch SDPA against the classic
  attention and a sliced VAE decode; `worker_serial`: the same stages without the worker's
  overlap of CPU work (loading, encoding) with the device's (the lever "CPU off the critical path");
- teacher: DINOv2 ViT-g/14 forward at 224 px in bf16 (the tiny teacher at `--size tiny`);
- trainer: `tsd bench train` (from shards against in-memory batches) for ResNet-50 and ViT-S/16,
  decoding JPEGs with nvjpeg on a GPU.
`worker_vs_stock_batched` is the best sweep entry over the batched stock pipeline; the targets
(per H100/H200) are in the JSON. On a CPU, compile is not swept (inductor on a CPU measures the
C++ compiler) and half precision runs as fp32 (contract.device).

Sizes: `tiny` (CPU, in the test suite: the tiny demo models, 64 px, 2 steps) and `imagemixer` (the
real SD-1.x image-variation UNet, VAE and CLIP ViT-L/14 at 640 px, 30 steps, guidance 3).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..contract.device import resolve_device, torch_dtype
from ..runtime import quiet_libraries
from ..models.generators import cuda_settings
from .bench import build_models, load_stock, matmul_ceiling, random_parents, stock_rates, synchronize

TARGETS = {"worker_img_per_s": 5.0, "worker_vs_stock_batched": 1.9, "teacher_img_per_s": 900.0,
           "trainer_shards_over_memory": 0.9}
STUDENTS = ("resnet50", "vit_small_patch16_224")
COMPILE_MODES = ("off", "on", "cudagraphs")


@dataclass(frozen=True)
class GpuBenchSize:
    image: int
    steps: int
    guidance: float
    scheduler: str
    stock_batch: int
    mixes: int                  # planned mixes per timed make_samples call
    batches: tuple              # worker batch sizes swept
    views: int                  # K recorded views (teacher passes per sample)
    teacher_batch: int
    source_sizes: tuple         # side range of the parent images (px)
    trainer: dict = field(default_factory=dict)   # student arch → `tsd bench train` settings


SIZES = {
    "tiny": GpuBenchSize(image=64, steps=2, guidance=3.0, scheduler="ldm-ddim", stock_batch=2, mixes=2,
                         batches=(1, 2), views=2, teacher_batch=32, source_sizes=(64, 128),
                         # a code-path check: one step each; ViT-S/16 is built for 224 px (timm's fixed grid)
                         trainer={"resnet50": dict(img_size=32, batch_size=2, steps=1, warmup=0, workers=0, images=4,
                                                   store_size=40),
                                  "vit_small_patch16_224": dict(img_size=224, batch_size=2, steps=1, warmup=0,
                                                                workers=0, images=4, store_size=40)}),
    "imagemixer": GpuBenchSize(image=640, steps=30, guidance=3.0, scheduler="ldm-ddim", stock_batch=8, mixes=32,
                               batches=(8, 16, 32), views=10, teacher_batch=256, source_sizes=(360, 500),
                               trainer={arch: dict(img_size=224, batch_size=256, steps=30, warmup=5,
                                                   workers=min(16, os.cpu_count() or 1), images=4096, store_size=256)
                                        for arch in STUDENTS}),
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
    from .bench import TEACHER_IMAGEMIXER

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
                      "batch_size": size.batches[0]},
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


class BenchWorker:
    """A ShardWorker whose generator settings can be swapped (the teacher stays loaded), and which
    can also run its stages one after the other, without overlap."""

    def __init__(self, job, release: Path, device: torch.device):
        from ..stages.worker import ShardWorker

        self.worker = ShardWorker(job, release, device=device.type)
        self.device = device

    def use(self, generator_cfg) -> None:
        w = self.worker
        w.job = replace(w.job, generator=generator_cfg)
        w._generator = None          # rebuilt from the new settings on first use
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def pipelined(self, rows) -> list:
        return self.worker.make_samples(rows)

    def serial(self, rows) -> list:
        w, results = self.worker, {}
        size = w.job.generator.batch_size
        for i in range(0, len(rows), size):
            generated = w._generate(w._load(rows[i:i + size]), results)
            w._teach(w._post(generated, results), results)
        return [results[r.uid] for r in rows]

    def rate(self, rows, serial: bool = False) -> tuple[float, int]:
        """(mixes/s, failed samples) of one timed call, after a warm-up call on one batch."""
        run = self.serial if serial else self.pipelined
        run(rows[:self.worker.job.generator.batch_size])   # loads the generator, compiles, warms the caches
        synchronize(self.device)
        start = time.perf_counter()
        made = run(rows)
        synchronize(self.device)
        return len(rows) / (time.perf_counter() - start), sum(m.failure is not None for m in made)

    def close(self):
        self.worker.close()


def sweep_variants(size: GpuBenchSize, device: torch.device, compile_modes) -> list[dict]:
    modes = compile_modes if device.type == "cuda" else ("off",)
    variants = [{"batch_size": b, "compile": m != "off", "cuda_graphs": m == "cudagraphs"}
                for b in size.batches for m in modes]
    first = {"batch_size": size.batches[0], "compile": False, "cuda_graphs": False}
    variants.append({**first, "attention": "classic"})
    variants.append({**first, "vae_slice": max(1, size.batches[0] // 4)})
    return variants


# -- stock pipeline --------------------------------------------------------------------------------
def stock(folder: Path, size: GpuBenchSize, device: torch.device, dtype: torch.dtype, images: int) -> dict:
    from PIL import Image

    pipe = load_stock(folder, device, dtype)
    pil = Image.fromarray(random_parents(1, 1)[0].permute(1, 2, 0).numpy())
    rates = stock_rates(pipe, pil, size.image, size.steps, size.guidance, size.stock_batch, images, device)
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"stock_1_img_per_s": rates["stock_1"], "stock_batched_img_per_s": rates["stock_batched"],
            "stock_batch": size.stock_batch, "stock_unet_steps": size.steps}


# -- trainer -------------------------------------------------------------------------------------------
def trainer_rates(size: GpuBenchSize, device: torch.device) -> dict:
    from trainer import bench as train_bench

    out = {}
    for arch, settings in size.trainer.items():
        args = argparse.Namespace(release=None, arch=arch, precision="bf16", gpu_decode=device.type == "cuda",
                                  device=device.type, json=None, **settings)
        with contextlib.redirect_stdout(sys.stderr):   # stdout carries the one JSON
            r = train_bench.measure(args)
        out[arch] = {k: r[k] for k in ("img_size", "batch_size", "workers", "precision", "gpu_decode",
                                        "memory_images_per_s", "shards_images_per_s", "ratio")}
    return out


# -- the whole run ---------------------------------------------------------------------------------------
def measure(args: argparse.Namespace) -> dict:
    from ..models.ldm_ddim import unet_steps
    from .bench import bench_teacher

    quiet_libraries()
    t0 = time.time()
    device = resolve_device(args.device)
    size = SIZES[args.size]
    if args.batches:
        size = replace(size, batches=tuple(args.batches))
    if args.mixes:
        size = replace(size, mixes=args.mixes)
    dtype = torch_dtype(args.dtype, device)
    threads = torch.get_num_threads()
    cuda_settings(device)
    res = {"size": args.size, **{k: v for k, v in asdict(size).items() if k != "trainer"},
           "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__,
           "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "worker_unet_steps": unet_steps(size.scheduler, size.steps)}
    peak, _ = matmul_ceiling(device, dtype)
    res["peak_tflops"] = peak / 1e12

    with tempfile.TemporaryDirectory(prefix="tsd-bench-gpu-") as tmp:
        tmp = Path(tmp)
        log("building the models and the job …")
        model = build_models(args.size, tmp / "models", dtype)
        job, release = write_job(args.size, size, tmp, model, device, args.dtype, threads)
        rows = planned_mixes(job, tmp)
        res["mixes"] = len(rows)
        log("stock pipeline …")
        res.update(stock(model, size, device, dtype, images=min(len(rows), 2 * size.stock_batch)))
        worker = BenchWorker(job, release, device)
        try:
            sweep = []
            for variant in sweep_variants(size, device, args.compile_modes):
                log("worker", variant, "…")
                worker.use(replace(job.generator, **variant))
                rate, failed = worker.rate(rows)
                sweep.append({**variant, "img_per_s": rate, "failed": failed})
            res["sweep"] = sweep
            worker.use(job.generator)
            log("worker, stages one after the other …")
            res["worker_serial_img_per_s"], _ = worker.rate(rows, serial=True)
            res["worker_recipe_img_per_s"] = sweep[0]["img_per_s"]
        finally:
            worker.close()
        del worker
    best = max(sweep, key=lambda s: s["img_per_s"])
    res["worker_best"] = {k: v for k, v in best.items() if k not in ("img_per_s", "failed")}
    res["worker_img_per_s"] = best["img_per_s"]
    res["worker_vs_stock_1"] = best["img_per_s"] / res["stock_1_img_per_s"]
    res["worker_vs_stock_batched"] = best["img_per_s"] / res["stock_batched_img_per_s"]
    res["worker_overlap_speedup"] = res["worker_recipe_img_per_s"] / res["worker_serial_img_per_s"]
    eager = next(s for s in sweep if s.get("attention") == "classic")
    res["sdpa_speedup"] = sweep[0]["img_per_s"] / eager["img_per_s"]
    log("teacher …")
    res["teacher"] = bench_teacher(args.size, size.teacher_batch, device, peak)
    log("trainer …")
    res["trainer"] = trainer_rates(size, device)
    res["targets"] = TARGETS
    res["meets_targets"] = {
        "worker_img_per_s": res["worker_img_per_s"] >= TARGETS["worker_img_per_s"],
        "worker_vs_stock_batched": res["worker_vs_stock_batched"] >= TARGETS["worker_vs_stock_batched"],
        "teacher_img_per_s": res["teacher"]["img_per_s"] >= TARGETS["teacher_img_per_s"],
        "trainer_shards_over_memory": all(t["ratio"] >= TARGETS["trainer_shards_over_memory"]
                                          for t in res["trainer"].values()),
    }
    if device.type != "cuda":
        res["note"] = "CPU run: the targets are for one H100/H200 and do not apply"
    res["wall_s"] = time.time() - t0
    return res


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=sorted(SIZES), default="imagemixer")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16",
                   help="generation dtype on GPU (the recipes' fp16; the CPU runs fp32)")
    p.add_argument("--batches", type=int, nargs="+", help="worker batch sizes to sweep (default: per size)")
    p.add_argument("--compile-modes", nargs="+", choices=COMPILE_MODES, default=list(COMPILE_MODES),
                   help="torch.compile settings to sweep on GPU (default: all three)")
    p.add_argument("--mixes", type=int, help="planned mixes per timed call (default: per size)")
    p.add_argument("--json", default=None, help="also write the JSON to this file")


def run(args: argparse.Namespace) -> int:
    res = measure(args)
    text = json.dumps(res, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    from ..contract.errors import UserError

    parser = argparse.ArgumentParser(prog="bench/gpu.sh", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f"bench/gpu.sh: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
