"""Batch-1 latency, and the onnxruntime intra-op thread count a device should run a bundle with.

An edge device cares about the tail, not the median: with onnxruntime's default thread pool a
batch-1 run on a busy core can wait for a worker thread that is not scheduled. deploy-check times
batch 1 at each candidate intra-op thread count (1 ... the CPU count, at most
:data:`MAX_TRIALS` values) and keeps the count whose p95 is lowest among those whose p50 is
within :data:`P50_SLACK` of the best p50 (ties: fewer threads). predict and ``Bundle.open`` use
it (``runtime.<variant>.json``, edgedd.device.sidecar); ``--threads`` overrides it.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import numpy as np

from .infer import classify

if TYPE_CHECKING:
    from .bundle import Bundle

MAX_TRIALS = 8
P50_SLACK = 0.10
RUNS, WARMUP = 100, 5


def latency_ms(
    b: Bundle, x1: np.ndarray, projector=None, runs: int = RUNS, warmup: int = WARMUP
) -> tuple[float, float, float]:
    """(p50, p95, p99) in ms of ``runs`` batch-1 runs through the three graphs, after ``warmup``."""
    for _ in range(warmup):
        classify(b, x1, projector)
    t = []
    for _ in range(runs):
        s = time.perf_counter()
        classify(b, x1, projector)
        t.append((time.perf_counter() - s) * 1000)
    p50, p95, p99 = np.percentile(t, [50, 95, 99])
    return float(p50), float(p95), float(p99)


def thread_counts(cpus: int | None = None) -> list[int]:
    """1 ... ``cpus`` (default: this machine's), at most :data:`MAX_TRIALS` values spread geometrically."""
    cpus = max(1, int(cpus or os.cpu_count() or 1))
    if cpus <= MAX_TRIALS:
        return list(range(1, cpus + 1))
    return sorted({int(round(v)) for v in np.geomspace(1, cpus, MAX_TRIALS)})


def choose_threads(table: list[dict]) -> int:
    """The row whose p95 is lowest among those with p50 within :data:`P50_SLACK` of the best (ties: fewer threads)."""
    best = min(r["p50"] for r in table)
    near = [r for r in table if r["p50"] <= best * (1 + P50_SLACK)]
    return min(near, key=lambda r: (r["p95"], r["threads"]))["threads"]


def thread_trial(b: Bundle, x1: np.ndarray, projector=None, counts: list[int] | None = None) -> tuple[int, list[dict]]:
    """Time batch 1 at each thread count; ``b``'s sessions are left open at the chosen one.
    Returns (chosen count, [{"threads", "p50", "p95", "p99"}, ...])."""
    from .bundle import open_sessions

    table = []
    for n in counts or thread_counts():
        open_sessions(b, n)
        p50, p95, p99 = latency_ms(b, x1, projector)
        table.append({"threads": n, "p50": p50, "p95": p95, "p99": p99})
    chosen = choose_threads(table)
    open_sessions(b, chosen)
    return chosen, table
