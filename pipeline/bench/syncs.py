"""Host syncs counted per source line: every call that reads a tensor's value on the host
(`.item()`, `int()`, `bool()`, `float()`, `.cpu()`, `.tolist()`, `.numpy()`, `.nonzero()`), seen
through a TorchFunctionMode, so it counts on a CPU run too, where nothing would actually wait.

On a GPU each of these on a device tensor stalls the host until the device has drained its queue:
inside the denoising loop or the trainer step, the host can no longer queue work ahead and CUDA
graphs lose their point. The tests count them over one `mix()` and one trainer step on the CPU;
the device check (`bench/gpu.sh`, section `syncs`) counts them on the GPU beside what CUDA's own
sync debug mode reports.
"""
from __future__ import annotations

import collections
import inspect
import os
import sys

import torch
from torch.overrides import TorchFunctionMode

READS = frozenset({"item", "__int__", "__bool__", "__float__", "__index__", "cpu", "tolist", "numpy", "nonzero"})
_TORCH_DIR = os.path.dirname(torch.__file__)


# torch.optim keeps its step counters on the host (unless fused or capturable) and reads them there:
# values the host already holds, never a wait on the device, so they are not counted
HOST_STATE = (os.path.join(_TORCH_DIR, "optim") + os.sep,)


class SyncCounter(TorchFunctionMode):
    """Counts host reads of tensor values: `counts[(what, device, 'file:line')]`, the line being the
    first caller outside torch itself. With `inside` (functions), only calls made while one of them
    is running count: the loop's body, not the setup around it. Reads made by torch.optim of its
    host-kept step counters are left out (`HOST_STATE`)."""

    def __init__(self, inside=()):
        super().__init__()
        self.codes = {inspect.unwrap(getattr(f, "__func__", f)).__code__ for f in inside}
        self.counts: collections.Counter = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READS and args and isinstance(args[0], torch.Tensor):
            where = self._where()
            if where is not None:
                self.counts[(name, args[0].device.type, where)] += 1
        return func(*args, **(kwargs or {}))

    def _where(self) -> str | None:
        frame, caller, inside = sys._getframe(2), None, not self.codes
        if frame.f_code.co_filename.startswith(HOST_STATE):
            return None
        while frame is not None:
            code = frame.f_code
            if caller is None and not code.co_filename.startswith(_TORCH_DIR):
                caller = f"{_short(code.co_filename)}:{frame.f_lineno}"
            if code in self.codes:
                inside = True
                break
            frame = frame.f_back
        return caller if inside else None

    def table(self) -> list[dict]:
        """One row per (what, device, line), most calls first."""
        return [{"call": what, "device": device, "line": where, "count": n}
                for (what, device, where), n in self.counts.most_common()]


def _short(path: str) -> str:
    """A path from the package folder down (site-packages/…, pipeline/…), not the machine's."""
    parts = path.replace("\\", "/").split("/")
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + 1:])
    for top in ("pipeline", "trainer", "tests"):
        if top in parts:
            return "/".join(parts[len(parts) - 1 - parts[::-1].index(top):])
    return path
