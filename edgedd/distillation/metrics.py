"""``RUN/metrics.jsonl``: the Stage II history, one JSON object per line (docs/JSON.md).

One line per step, ``{"step", "loss", "resolution", "seconds"}``, and on every ``flow_every``-th
step and the last one also ``"flow_cosine"`` (at least ``FLOW_POINTS`` figures in any run).
Only rank 0 writes it, appending and flushing each line, so a killed run leaves every finished step's line (and at most
one torn last line). A resumed
run first drops the lines past its checkpoint (and any torn line), rewriting the file atomically,
so the file always describes the steps the checkpoint holds. Standard library only: the report
reads it without torch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from edgedd.core import atomic

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


# A line edgedd writes is about 100 bytes; a longer one is not edgedd's, and is skipped unread past
# this many bytes, so one huge line cannot fill memory.
MAX_LINE_BYTES = 64 * 1024
# Points kept per curve by read_metrics_sampled: between this and twice this (stride sampling).
MAX_POINTS = 2000


def _reject(line: bytes) -> tuple[dict | None, str]:
    """(the row, "") or (None, why it is skipped: "not JSON", "NaN/Infinity" or "not a metrics row")."""

    def no_constants(name):  # JSON has no NaN/Infinity; Python's json would read them as floats
        raise ValueError(name)

    try:
        row = json.loads(line.decode("utf-8", errors="replace"), parse_constant=no_constants)
    except RecursionError:  # nesting deeper than the parser's recursion limit: a crafted line
        return None, "not JSON"
    except ValueError as e:
        return None, "NaN/Infinity" if str(e) in ("NaN", "Infinity", "-Infinity") else "not JSON"
    if isinstance(row, dict) and isinstance(row.get("step"), int) and not isinstance(row.get("step"), bool):
        return row, ""
    return None, "not a metrics row"


def _rows(path: Path, skipped: dict[str, int]):
    """Each well-formed row of ``path`` in file order; every other line counted in ``skipped`` by
    reason. Reads at most MAX_LINE_BYTES + 1 bytes of a line at a time: memory is one line's cap."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        while line := f.readline(MAX_LINE_BYTES + 1):
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                while (rest := f.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                    pass  # the rest of the too-long line, dropped chunk by chunk
                skipped["too long"] = skipped.get("too long", 0) + 1
                continue
            if not line.strip():
                continue
            row, why = _reject(line)
            if row is None:
                skipped[why] = skipped.get(why, 0) + 1
            else:
                yield row


def read_metrics(path: str | Path) -> list[dict]:
    """Every well-formed line of a metrics file (objects with an integer ``step``); a torn, foreign,
    too long or non-finite line is skipped, a missing file reads as no lines."""
    return list(_rows(Path(path), {}))


class _Stride:
    """Every ``stride``-th item of a stream, the stride doubling (and every other kept item dropped)
    whenever 2 x ``cap`` are kept: between ``cap`` and 2 x ``cap`` evenly spaced items, whatever the
    stream's length, plus always the last one seen."""

    def __init__(self, cap: int):
        self.cap, self.stride, self.seen, self.kept, self.last = cap, 1, 0, [], None

    def add(self, item) -> None:
        if self.seen % self.stride == 0:
            self.kept.append(item)
            if len(self.kept) >= 2 * self.cap:
                self.kept, self.stride = self.kept[::2], 2 * self.stride
        self.seen += 1
        self.last = item

    def items(self) -> list:
        return self.kept + ([self.last] if self.kept and self.last is not self.kept[-1] else [])


def read_metrics_sampled(path: str | Path, max_points: int = MAX_POINTS) -> tuple[list[dict], int, dict[str, int]]:
    """For plotting a run of any length in bounded memory: (rows, well-formed lines, skipped lines
    by reason). The rows are an evenly strided sample of at most about 2 x ``max_points`` of all
    rows, merged in file order with as many of the (sparse) rows that carry a flow cosine, so
    neither curve loses its shape."""
    skipped: dict[str, int] = {}
    every, flow = _Stride(max_points), _Stride(max_points)
    for i, row in enumerate(_rows(Path(path), skipped)):
        every.add((i, row))
        if "flow_cosine" in row:
            flow.add((i, row))
    merged = dict(every.items() + flow.items())  # by line number: a row in both is kept once
    return [merged[i] for i in sorted(merged)], every.seen, skipped


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
        row = {
            "step": step,
            "loss": _number(loss),
            "resolution": resolution,
            "seconds": round(self.seconds_offset + seconds, 6),
        }
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
