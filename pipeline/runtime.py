"""Process-wide runtime choices: the device, thread counts, quiet libraries."""
from __future__ import annotations

import os


def pick_device(name: str = "auto"):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    return torch.device(name)


def torch_dtype(name: str, device):
    """The working dtype of a config's 'fp32' | 'bf16' | 'fp16' on `device`: the CPU always runs fp32
    (half precision there is slow, and not what a byte-identical CPU rerun should use)."""
    import torch

    if device.type == "cpu":
        return torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def quiet_libraries() -> None:
    """Progress bars and advice from diffusers/transformers/hub drown the job's own output."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
