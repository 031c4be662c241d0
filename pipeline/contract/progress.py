"""Progress of a long loop, readable where it is shown: one helper for ingest, probe, generate, verify
and train.

On a terminal it is one line redrawn in place. Anywhere else (a pipe, a file, `ray job logs`, a pod's
log) a redrawn line would be a flood of `\\r` fragments, so it prints a plain line every
`TSD_PROGRESS_EVERY` seconds (default 30) and one when the loop ends:

    generate: 12/40 shards (30%), 3072 images, 51.2 images/s, ETA 9m08s
"""
from __future__ import annotations

import os
import sys
import time
import weakref

DEFAULT_EVERY_S = 30.0
REDRAW_S = 0.2   # on a terminal
_OPEN: "weakref.WeakSet[Progress]" = weakref.WeakSet()   # lines drawn in place and not closed yet


def close_all() -> None:
    """End every line still being redrawn, so that what is printed next (an error) has its own line."""
    for progress in list(_OPEN):
        progress.close()


def every_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("TSD_PROGRESS_EVERY", DEFAULT_EVERY_S)))
    except ValueError:
        return DEFAULT_EVERY_S


def duration(seconds: float) -> str:
    """A duration as every command prints it: '4.2s' under 10 s, '51s', '9m08s', '2h05m' (the one
    place durations are rounded: never '51.459999999999994 s')."""
    if seconds < 9.95:
        return f"{max(seconds, 0.0):.1f}s"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """`update(n, images=...)` as work finishes; `close()` (or a `with` block) prints the last line.

    `unit` is what `total` counts (shards, images, steps); `images`, when the unit is not images,
    counts the images those units held, for the images/s figure."""

    def __init__(self, desc: str, total: int | None, unit: str = "images", enabled: bool = True,
                 stream=None, initial: int = 0):
        self.desc, self.total, self.unit = desc, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.done, self.images, self.initial = initial, 0, initial
        self.fields: dict = {}
        self.eta_s: float | None = None   # set_eta: the caller's own estimate of the time left
        self.start = self._last = time.monotonic()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = REDRAW_S if self.tty else every_seconds()
        self._drawn = False
        if self.enabled and self.tty:
            _OPEN.add(self)

    def update(self, n: int = 1, images: int | None = None) -> None:
        self.done += n
        self.images += n if images is None and self.unit == "images" else (images or 0)
        now = time.monotonic()
        if self.enabled and now - self._last >= self.every:
            self._last = now
            self._emit()

    def set_eta(self, seconds: float | None) -> None:
        """The time left as the caller estimates it (e.g. per kind of work, from the finished ones of
        that kind); None: from the overall rate, as by default."""
        self.eta_s = seconds

    def set(self, **fields) -> None:
        """Extra figures shown after the standard ones (e.g. the loss)."""
        self.fields.update(fields)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        done = self.done
        parts = [f"{done}/{self.total} {self.unit}" if self.total is not None else f"{done} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * done / self.total:.0f}%)"
        if self.unit != "images" and self.images:
            parts.append(f"{self.images} images")
        if self.images:
            parts.append(f"{self.images / elapsed:.1f} images/s")
        else:
            parts.append(f"{(done - self.initial) / elapsed:.2f} {self.unit}/s")
        if self.total and done < self.total and self.eta_s is not None:
            parts.append(f"ETA {duration(self.eta_s)}")
        elif self.total and done - self.initial > 0 and done < self.total:
            rate = (done - self.initial) / elapsed
            parts.append(f"ETA {duration((self.total - done) / rate)}")
        parts += [f"{k} {v}" for k, v in self.fields.items()]
        return f"{self.desc}: " + ", ".join(parts)

    def _emit(self, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled:
            elapsed = time.monotonic() - self.start
            if self.tty or self._drawn or elapsed >= 1.0:  # a quick loop off a terminal stays silent
                self.set(elapsed=duration(elapsed))
                self._emit(final=True)
            self.enabled = False
        _OPEN.discard(self)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
