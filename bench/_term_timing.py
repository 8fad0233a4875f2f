"""What the benchmarks of one loss term share (bench/projector_term_cost.py, bench/probe_term_cost.py):
two forms of the same function timed forward + backward, alternating, and the JSON they print."""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable


def term_parser(doc: str, repeats: int) -> argparse.ArgumentParser:
    """The arguments both benchmarks take: real counts, the synthetic rows, width, classes, repeats, threads, --json."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", type=int, nargs="+", default=[1000, 4000, 10000])
    ap.add_argument("--syn", type=int, default=100)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    return ap


def alternate_medians(forms: dict[str, Callable], draw: Callable[[], tuple], repeats: int) -> dict[str, float]:
    """Median seconds of ``form(*draw()).backward()`` for each form, the forms taking turns (A B A B ...)
    so that a drift in the machine's speed hits both; fresh inputs each call, drawn outside the clock."""
    times = {name: [] for name in forms}
    for _ in range(repeats):
        for name, form in forms.items():
            args = draw()
            t = time.perf_counter()
            form(*args).backward()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def report(a, torch_version: str, rows: list[dict]) -> dict:
    """The printed JSON: the machine, the shapes and repeats of ``a`` (the parsed arguments), the rows."""
    return {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "threads": a.threads,
        "torch": torch_version,
        "syn": a.syn,
        "dim": a.dim,
        "classes": a.classes,
        "repeats": a.repeats,
        "rows": rows,
    }
