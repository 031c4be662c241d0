"""Process-wide settings of the generation side: quiet libraries, fixed CPU thread counts."""
from __future__ import annotations

import contextlib
import os


def quiet_libraries() -> None:
    """Progress bars and advice from diffusers/transformers/hub drown the job's own output."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count fixed to `n` inside the block: CPU kernels split reductions
    by thread count, so a fixed count keeps CPU reruns byte-identical."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
