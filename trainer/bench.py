"""`tsd bench train`: is the data path keeping the student busy?

In one process, with one model and batch, trains over the same number of epochs (3 by default; an
epoch is one pass over the release's real training set) twice, and prints each figure as soon as it
is measured:
- from memory: a few batches made once and kept on the device, cycled;
- from shards: the real data path (webdataset + decode + view replay in DataLoader workers,
  host-to-device copy, normalisation), exactly as `tsd train` reads, through the run's one
  DataLoader: the loader's start-up and every epoch boundary are inside the timing, and the wait
  for each epoch's first batch is reported (the time between epochs).
The ratio shards/memory near 1 means the loader keeps up; well below 1, the loader is the
bottleneck (add workers, store smaller images, or decode on the GPU with --gpu-decode).
Without a release it writes a temporary synthetic one (real JPEG shards, see trainer.synthetic).
Defaults are sized by device (`DEFAULTS`): on a CUDA GPU ResNet-50 at 224 px, batch 256; on a CPU
ResNet-18 at 64 px, batch 32, so that a CPU run finishes in minutes in well under 8 GB. The peak
resident memory of the process and of its largest loader worker is printed.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import tempfile
import time

import torch

from pipeline.contract.configlib import build
from pipeline.contract.device import resolve_device

from .config import TrainConfig
from .data import batches, model_inputs, train_loader, train_plan
from .loop import make_optimizer, train_step
from .release import open_releases
from .samples import Replay
from .students import Distillable, build_student, mean_std

# per device type: what a run at the defaults trains on (an epoch = images / batch_size steps)
DEFAULTS = {
    "cuda": dict(arch="resnet50", img_size=224, batch_size=256, images=4096, store_size=256, epochs=3, warmup=5,
                 workers=min(16, os.cpu_count() or 1)),
    "cpu": dict(arch="resnet18", img_size=64, batch_size=32, images=384, store_size=80, epochs=3, warmup=2,
                workers=2),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    def default(name):
        return f"{DEFAULTS['cuda'][name]} on a GPU, {DEFAULTS['cpu'][name]} on a CPU"

    parser.add_argument("--release", default=None, help="release to read (default: a temporary synthetic one)")
    parser.add_argument("--arch", default=None, help=f"timm student (default {default('arch')}; GPU targets: "
                        "resnet50, vit_small_patch16_224)")
    parser.add_argument("--img-size", type=int, default=None, help=f"default {default('img_size')}")
    parser.add_argument("--batch-size", type=int, default=None, help=f"default {default('batch_size')}")
    parser.add_argument("--epochs", type=int, default=None, help=f"timed epochs per path (default {default('epochs')})")
    parser.add_argument("--warmup", type=int, default=None, help=f"untimed steps first (default {default('warmup')})")
    parser.add_argument("--workers", type=int, default=None, help=f"DataLoader workers (default {default('workers')})")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"), help="autocast on CUDA")
    parser.add_argument("--gpu-decode", action="store_true", help="decode JPEGs on the GPU (nvjpeg)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--images", type=int, default=None,
                        help=f"synthetic release: training images (default {default('images')})")
    parser.add_argument("--store-size", type=int, default=None,
                        help=f"synthetic release: stored short side in px (default {default('store_size')})")
    parser.add_argument("--json", default=None, help="also write the result to this JSON file")


def run(args: argparse.Namespace) -> int:
    """`tsd bench train`: time training steps from shards and from memory; print both rates and their ratio."""
    measure(args)
    return 0


def with_defaults(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    """The arguments left unset filled with the device's defaults."""
    chosen = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    return argparse.Namespace(**{**vars(args), **{k: v for k, v in chosen.items() if getattr(args, k, None) is None}})


def measure(args: argparse.Namespace) -> dict:
    """The benchmark's result (also printed, and written to --json)."""
    device = resolve_device(args.device)
    args = with_defaults(args, device)
    if args.release:
        return bench(args, args.release, device)
    from .synthetic import shards_for, write_release

    classes = 10
    with tempfile.TemporaryDirectory(prefix="tsd-bench-") as tmp:
        print(f"writing a synthetic release: {args.images} JPEG images stored at {args.store_size} px …", flush=True)
        write_release(tmp, classes=classes, train_per_class=math.ceil(args.images / classes), val_per_class=1,
                      mixes=0, views=4, store_size=args.store_size,
                      shard_size=shards_for(args.images, max(args.workers, 1)))
        return bench(args, tmp, device)


def peak_rss_gib() -> dict:
    """Peak resident memory (GiB) of this process and of its largest finished child (a loader worker)."""
    gib = 1 << 20   # ru_maxrss is in KiB on Linux
    return {"process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / gib, 3),
            "largest_worker": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / gib, 3)}


def bench(args: argparse.Namespace, release: str, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    releases = open_releases([release])
    config = build(TrainConfig, {
        "releases": [release],
        "student": {"arch": args.arch, "img_size": args.img_size},
        "loss": {"mode": "kd-real"},
        "data": {"batch_size": args.batch_size, "workers": args.workers, "mix_ratio": 0.0},
        "runtime": {"precision": args.precision, "gpu_decode": args.gpu_decode},
    })
    student = build_student(args.arch, releases.num_classes, img_size=args.img_size)
    mean, std = mean_std(student)
    net = Distillable(student).to(device)
    channels_last = cuda
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(net, config.optim)
    replay = Replay(releases.num_classes, args.img_size, seed=0, gpu_decode=args.gpu_decode and cuda)
    plan = train_plan(releases, config, 1, replay)
    spe = plan.steps_per_epoch
    precision = args.precision if cuda else "fp32"
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"bench train: {args.arch} {args.img_size}px, batch {args.batch_size}, {precision}, {args.epochs} epochs "
          f"of {spe} steps, {args.workers} loader workers{', GPU decode' if replay.gpu_decode else ''}, "
          f"on {device_name}", flush=True)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def step(x, batch):
        train_step(net, optimizer, x, batch, device, alpha=0.5, temperature=2.0, feature_weight=0.0,
                   precision=args.precision, clip_grad=0.0)

    def epochs(next_input, label: str) -> tuple[list[float], list[float]]:
        """Seconds per epoch, and the wait for each epoch's first batch; printed as measured."""
        seconds, waits = [], []
        for e in range(args.epochs):
            sync()
            start = time.perf_counter()
            for i in range(spe):
                fetch = time.perf_counter()
                x, batch = next_input()
                if i == 0:
                    waits.append(time.perf_counter() - fetch)
                step(x, batch)
            sync()
            seconds.append(time.perf_counter() - start)
            print(f"  {label} epoch {e + 1}: {spe * args.batch_size / seconds[-1]:10.1f} images/s  "
                  f"({seconds[-1]:.2f} s; first batch after {waits[-1]:.3f} s)", flush=True)
        return seconds, waits

    def from_shards():
        batch = next(stream)
        return model_inputs(batch, device, args.img_size, mean, std, channels_last), batch

    # in memory: a few real batches, made ready on the device; the loader is shut before timing
    stream = batches(train_loader(plan, 0, min(4, spe), pin_memory=cuda))
    held = [from_shards() for _ in range(min(4, spe))]
    stream.close()
    held = [(x, {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}) for x, b in held]
    for i in range(args.warmup):   # cuDNN's algorithm search, the allocator, the optimizer state
        step(*held[i % len(held)])
    position = itertools.count()
    memory_s, _ = epochs(lambda: held[next(position) % len(held)], "from memory")
    # from shards: the run's one loader over every epoch, its start-up inside the first epoch
    stream = batches(train_loader(plan, spe, spe * (1 + args.epochs), pin_memory=cuda))
    shards_s, waits = epochs(from_shards, "from shards")
    stream.close()

    images = spe * args.batch_size * args.epochs
    memory, shards = images / sum(memory_s), images / sum(shards_s)
    peak = peak_rss_gib()
    result = {"arch": args.arch, "img_size": args.img_size, "batch_size": args.batch_size, "epochs": args.epochs,
              "steps_per_epoch": spe, "workers": args.workers, "precision": precision,
              "gpu_decode": replay.gpu_decode, "device": str(device), "device_name": device_name,
              "memory_images_per_s": memory, "shards_images_per_s": shards, "ratio": shards / memory,
              "memory_epoch_s": memory_s, "shards_epoch_s": shards_s,
              "loader_start_s": waits[0], "between_epochs_s": waits[1:], "peak_rss_gib": peak}
    print(f"  from memory : {memory:10.1f} images/s over {args.epochs} epochs", flush=True)
    print(f"  from shards : {shards:10.1f} images/s over {args.epochs} epochs (loader start {waits[0]:.3f} s, "
          f"between epochs {', '.join(f'{w:.3f}' for w in waits[1:])} s)", flush=True)
    print(f"  ratio shards/memory: {shards / memory:.3f}", flush=True)
    print(f"  peak resident memory: {peak['process']:.2f} GiB (this process), {peak['largest_worker']:.2f} GiB "
          "(largest loader worker)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result
