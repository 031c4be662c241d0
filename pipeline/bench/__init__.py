"""`tsd bench` (the top layer, beside demo/): `generate` (the fused generator vs the stock diffusers
pipeline), `train` (trainer steps from shards vs in memory: `trainer.bench`), `scale` (plan, driver
bookkeeping and release at 10k-1M samples), and the device check `bench/gpu.sh` (`bench.gpu`)."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from trainer import bench as train_bench

    from . import generate, scale

    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    generate.add_generate_arguments(sub.add_parser("generate", help="the fused generator vs the stock diffusers "
                                                   "pipeline", description=generate.__doc__.split("\n\n")[0]))
    train_bench.add_arguments(sub.add_parser("train", help="training steps from shards vs from memory",
                                             description=train_bench.__doc__.split("\n\n")[0]))
    scale.add_arguments(sub.add_parser("scale", help="plan, driver bookkeeping and release at 10k-1M samples",
                                       description=scale.__doc__.split("\n\n")[0]))


def run(args: argparse.Namespace) -> int:
    if args.what == "train":
        from trainer import bench as train_bench

        return train_bench.run(args)
    from . import generate, scale

    return (scale if args.what == "scale" else generate).run(args)
