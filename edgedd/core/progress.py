"""A progress bar on stderr that stays out of stdout (which carries ``--json``).

On a terminal it redraws one line at most ten times a second; elsewhere (CI logs, pipes) it prints
a line every 10% so logs stay short. ``EDGEDD_PROGRESS=0`` silences it, whatever ``enabled`` says:
``enabled`` can only turn a bar off (``--quiet``, a non-main rank), never past the environment.
"""

from __future__ import annotations

import os
import sys
import time


def progress_allowed() -> bool:
    """False when ``EDGEDD_PROGRESS=0``: the one place every progress bar asks."""
    return os.environ.get("EDGEDD_PROGRESS", "1").strip() != "0"


class Progress:
    def __init__(self, total: int, desc: str, initial: int = 0, stream=None, enabled: bool | None = None):
        self.total, self.desc, self.n = max(1, total), desc, initial
        self.stream = stream or sys.stderr
        self.enabled = (enabled is None or bool(enabled)) and progress_allowed()
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self.last_draw = 0.0
        self.last_decile = initial * 10 // self.total
        self.postfix = ""

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        if postfix:
            self.postfix = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in postfix.items())
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty:
            if now - self.last_draw >= 0.1 or self.n >= self.total:
                self.last_draw = now
                self.stream.write("\r" + self._line(now) + "\033[K")
                self.stream.flush()
        else:
            decile = self.n * 10 // self.total
            if decile > self.last_decile:
                self.last_decile = decile
                self.stream.write(self._line(now) + "\n")
                self.stream.flush()

    def _line(self, now: float) -> str:
        frac = min(1.0, self.n / self.total)
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        elapsed = now - self.start
        return f"{self.desc} [{bar}] {self.n}/{self.total} {elapsed:.0f}s {self.postfix}".rstrip()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
