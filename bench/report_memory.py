"""Peak RSS of ``edgedd report`` on hostile metrics.jsonl files, old code vs new, one invocation.

    python bench/report_memory.py RUN OLD_EDGEDD NEW_EDGEDD [--scratch DIR]

RUN is any finished run directory (its metrics.jsonl is replaced in copies). For each case (the
run's own file, one 300 MB line, a million ordinary lines) a copy of RUN is made under --scratch
and ``EDGEDD report COPY --out COPY/r.html`` is run once per edgedd executable, old and new
alternating, each in a child process whose peak RSS is ru_maxrss of RUSAGE_CHILDREN (the child is
the only child at a time). Prints one table row per case; the big files are deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def _write_cases(run: Path, scratch: Path) -> dict[str, Path]:
    cases = {}
    for name in ("own file", "one 300 MB line", "1,000,000 lines"):
        d = scratch / name.replace(" ", "_").replace(",", "")
        shutil.copytree(run, d)
        cases[name] = d
    with open(cases["one 300 MB line"] / "metrics.jsonl", "wb") as f:
        f.write(b'{"step": 1, "loss": 1.0, "pad": "')
        for _ in range(300):
            f.write(b"x" * (1 << 20))
        f.write(b'"}\n')
    with open(cases["1,000,000 lines"] / "metrics.jsonl", "w") as f:
        for step in range(1, 1_000_001):
            row = {"step": step, "loss": 1.0 / step, "resolution": 32, "seconds": step * 0.01}
            if step % 500 == 0:
                row["flow_cosine"] = 0.5
            f.write(json.dumps(row, sort_keys=True) + "\n")
    return cases


def _peak_mb(edgedd: str, run: Path) -> tuple[float, int]:
    """A fresh grandchild per measurement: ru_maxrss of RUSAGE_CHILDREN is a maximum over all
    children so far, so each one is measured from its own short-lived parent."""
    code = (
        "import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, edgedd, "report", str(run), "--out", str(run / "r.html")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]) / 1024, int(out[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--scratch", type=Path, default=None)
    a = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(dir=a.scratch))
    try:
        cases = _write_cases(a.run, scratch)
        print("| metrics.jsonl | old peak RSS (MB), exit | new peak RSS (MB), exit |")
        print("|---|---|---|")
        for name, d in cases.items():
            old, new = _peak_mb(a.old, d), _peak_mb(a.new, d)
            print(
                f"| {name} ({os.path.getsize(d / 'metrics.jsonl') / 1e6:.1f} MB) | {old[0]:.0f}, {old[1]} | "
                f"{new[0]:.0f}, {new[1]} |",
                flush=True,
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
