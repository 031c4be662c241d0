"""Which device and dtype a process runs on: one rule for the generation side and the trainer."""
from __future__ import annotations

import contextlib

from .errors import UserError


def resolve_device(name: str = "auto", local_rank: int = 0):
    """'auto' → this rank's GPU when CUDA is available, else the CPU; 'cuda' without CUDA is an error."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device 'cuda' requested but no CUDA device is available")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        cuda_settings(device)
        return device
    return torch.device(name)


def cuda_settings(device) -> None:
    """The process-wide CUDA settings every CUDA entry point runs under (`resolve_device` applies
    them): cuDNN picks its conv algorithms by measuring (shapes are fixed: the search pays once),
    and fp32 matmuls and convolutions use TF32 tensor cores."""
    import torch

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def to_device(tensor, device):
    """A host tensor on `device` without blocking the host: through pinned memory with
    non_blocking=True on CUDA (a pageable copy waits for the stream to drain first)."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


# Opt-in: 'bf16' settings run in bf16 on the CPU too (CPUs with AVX512-BF16 / AMX run it 2-3x
# faster than fp32, in half the memory); what `tsd demo --real-size` sets. fp16 stays fp32 there.
CPU_BF16_ENV = "TSD_CPU_BF16"


def torch_dtype(name: str, device):
    """The working dtype of a config's 'fp32' | 'bf16' | 'fp16' on `device`: the CPU runs fp32 (half
    precision there is slow without native support, and not what a byte-identical CPU rerun of the
    tests and the demo uses), unless TSD_CPU_BF16=1 lets 'bf16' be bf16."""
    import os

    import torch

    if device.type == "cpu":
        if name == "bf16" and os.environ.get(CPU_BF16_ENV) == "1":
            return torch.bfloat16
        return torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def autocast(device, precision: str):
    """bf16 autocast on CUDA; the CPU always runs fp32."""
    import torch

    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
