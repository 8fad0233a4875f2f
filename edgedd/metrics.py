"""``RUN/metrics.jsonl``: the Stage II history, one JSON object per line (docs/JSON.md).

One line per step, ``{"step", "loss", "resolution", "seconds"}``, and on every ``flow_every``-th
step and the last one also ``"flow_cosine"`` (at least ``FLOW_POINTS`` figures in any run). Only rank 0 writes it, appending and flushing each
line, so a killed run leaves every finished step's line (and at most one torn last line). A resumed
run first drops the lines past its checkpoint (and any torn line), rewriting the file atomically,
so the file always describes the steps the checkpoint holds. Standard library only: the report
reads it without torch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from . import atomic

METRICS_FILE = "metrics.jsonl"
FLOW_POINTS = 10  # flow-cosine figures per run: a curve even for a 100-step demo


def flow_every(iterations: int) -> int:
    """Steps between flow-cosine figures: max(1, iterations // FLOW_POINTS), so every run has at
    least FLOW_POINTS of them (one no-grad centre-crop forward of the synthetic set each: a
    fraction of one step's cost, which runs augs_per_batch views with a graph)."""
    return max(1, iterations // FLOW_POINTS)


def _number(v):
    """JSON has no NaN/inf: such a figure is written as null."""
    return v if isinstance(v, int) or (isinstance(v, float) and math.isfinite(v)) else None


def read_metrics(path: str | Path) -> list[dict]:
    """The well-formed lines of a metrics file (objects with an integer ``step``); a torn or foreign
    line is skipped, a missing file reads as no lines."""
    rows = []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return rows
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and not isinstance(row.get("step"), bool):
            rows.append(row)
    return rows


class MetricsLog:
    """Rank 0's append-only writer. ``MetricsLog(path, keep_through=step)`` first keeps only the
    lines of steps <= ``step`` (the resume point; 0 for a fresh start), then appends."""

    def __init__(self, path: str | Path, keep_through: int = 0):
        self.path = Path(path)
        kept = [r for r in read_metrics(self.path) if r["step"] <= keep_through] if keep_through > 0 else []
        if kept or self.path.exists():
            atomic.write_bytes(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept).encode("utf-8"))
        # seconds continue from the last kept line, so a resumed run's time axis has no jump back
        last = kept[-1].get("seconds") if kept else None
        self.seconds_offset = float(last) if isinstance(last, (int, float)) and not isinstance(last, bool) else 0.0
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, step: int, loss: float, resolution: int, seconds: float, flow_cosine: float | None = None) -> None:
        row = {"step": step, "loss": _number(loss), "resolution": resolution, "seconds": round(self.seconds_offset + seconds, 6)}
        if flow_cosine is not None:
            row["flow_cosine"] = _number(flow_cosine)
        self._f.write(json.dumps(row, sort_keys=True) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
