"""This process's place in a run, and its random state.

One process per device; under torchrun (RANK/WORLD_SIZE/LOCAL_RANK in the environment) the
processes form a DDP group (nccl on CUDA, gloo on CPU). RNG states are saved per process so a
resumed run draws exactly what the uninterrupted one would have.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.distributed as dist

from pipeline.contract.device import resolve_device


class Processes:
    """This process's place in the run: rank, world size, device (torchrun's environment)."""

    def __init__(self, device_name: str):
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        self.device = resolve_device(device_name, int(os.environ.get("LOCAL_RANK", 0)))
        self._flags_group = None
        if self.world > 1:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            # small host-side decisions (stop, checkpoint now) agreed on the CPU: no device sync per step
            self._flags_group = dist.new_group(backend="gloo") if self.device.type == "cuda" else None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            values = values.clone()
            dist.all_reduce(values)
        return values

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def agree(self, flags: list[int]) -> list[int]:
        """Element-wise max over the ranks of small integer flags (every rank gets the same answer)."""
        if self.world == 1:
            return list(flags)
        values = torch.tensor(flags, dtype=torch.int64)
        dist.all_reduce(values, op=dist.ReduceOp.MAX, group=self._flags_group)
        return values.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """torch, CUDA, numpy and python RNG states as tensors and primitives (weights_only-loadable)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": version, "state": list(state), "gauss_next": gauss_next}}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
