"""Which device a process runs on, and the autocast it uses there."""
from __future__ import annotations

import contextlib

import torch

from pipeline.configlib import ConfigError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' → this rank's GPU when CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("runtime.device: 'cuda' but no CUDA device is available")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        return device
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA; the CPU always runs fp32."""
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
