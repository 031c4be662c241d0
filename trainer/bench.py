"""`tsd bench train`: is the data path keeping the student busy?

In one process, with one model, batch and step count, times the training step (images/s) twice:
- from shards: the real data path (webdataset + decode + view replay in DataLoader workers,
  host-to-device copy, normalisation), exactly as `tsd train` reads;
- from memory: a few batches made once and kept on the device, cycled.
The ratio shards/memory near 1 means the loader keeps up; well below 1, the loader is the
bottleneck (add workers, store smaller images, or decode on the GPU with --gpu-decode).
Without a release it writes a temporary synthetic one (real JPEG shards, see trainer.synthetic).
"""
from __future__ import annotations

import argparse
import json
import math
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--release", default=None, help="release to read (default: a temporary synthetic one)")
    parser.add_argument("--arch", default="resnet50", help="timm student (GPU targets: resnet50, vit_small_patch16_224)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per path")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before each timing")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"), help="autocast on CUDA")
    parser.add_argument("--gpu-decode", action="store_true", help="decode JPEGs on the GPU (nvjpeg)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--images", type=int, default=2048, help="synthetic release: training images")
    parser.add_argument("--store-size", type=int, default=256, help="synthetic release: stored short side (px)")
    parser.add_argument("--json", default=None, help="also write the result to this JSON file")


def run(args: argparse.Namespace) -> int:
    """`tsd bench train`: time training steps from shards and from memory; print both rates and their ratio."""
    measure(args)
    return 0


def measure(args: argparse.Namespace) -> dict:
    """The benchmark's result (also printed, and written to --json)."""
    if args.release:
        return bench(args, args.release)
    from .synthetic import shards_for, write_release

    classes = 10
    with tempfile.TemporaryDirectory(prefix="tsd-bench-") as tmp:
        print(f"writing a synthetic release: {args.images} JPEG images stored at {args.store_size} px …", flush=True)
        write_release(tmp, classes=classes, train_per_class=math.ceil(args.images / classes), val_per_class=1,
                      mixes=0, views=4, store_size=args.store_size,
                      shard_size=shards_for(args.images, max(args.workers, 1)))
        return bench(args, tmp)


def bench(args: argparse.Namespace, release: str) -> dict:
    device = resolve_device(args.device)
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

    def step(x, batch):
        train_step(net, optimizer, x, batch, device, alpha=0.5, temperature=2.0, feature_weight=0.0,
                   precision=args.precision, clip_grad=0.0)

    def images_per_s(next_input) -> float:
        for _ in range(args.warmup):
            step(*next_input())
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            step(*next_input())
        if cuda:
            torch.cuda.synchronize()
        return args.steps * args.batch_size / (time.perf_counter() - start)

    def from_shards():
        batch = next(stream)
        return model_inputs(batch, device, args.img_size, mean, std, channels_last), batch

    # in memory: a few real batches, made ready on the device; the loader is shut before timing
    stream = batches(train_loader(plan, epoch=0, pin_memory=cuda))
    held = [from_shards() for _ in range(min(4, args.steps))]
    stream.close()
    held = [(x, {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}) for x, b in held]
    cycle = iter(held * math.ceil((args.warmup + args.steps) / len(held)))
    memory = images_per_s(lambda: next(cycle))
    # from shards: a fresh loader, its start-up inside the untimed warmup steps
    stream = batches(train_loader(plan, epoch=1, pin_memory=cuda))
    shards = images_per_s(from_shards)
    stream.close()

    result = {"arch": args.arch, "img_size": args.img_size, "batch_size": args.batch_size, "steps": args.steps,
              "workers": args.workers, "precision": args.precision if cuda else "fp32",
              "gpu_decode": replay.gpu_decode, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
              "memory_images_per_s": memory, "shards_images_per_s": shards, "ratio": shards / memory}
    print(f"bench train: {args.arch} {args.img_size}px, batch {args.batch_size}, {result['precision']}, "
          f"{args.steps} steps on {result['device_name']}")
    print(f"  from memory : {memory:10.1f} images/s")
    print(f"  from shards : {shards:10.1f} images/s  ({args.workers} workers"
          f"{', GPU decode' if replay.gpu_decode else ''})")
    print(f"  ratio shards/memory: {shards / memory:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result
