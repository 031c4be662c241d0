"""Comparing generated images across batches (one definition for the generator tests)."""
import torch


def same_image(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same sample made in another batch or position: bit for bit with AVX-512 kernels here, but
    a CPU's matmul kernels may block a batch differently by row (seen with AVX2 kernels: 1 level of
    255), so within one level. Another seed, parents or prompt differ by far more; the same call
    twice is compared bit for bit where it matters (repeatability on one machine)."""
    return a.shape == b.shape and (a.int() - b.int()).abs().max().item() <= 1
