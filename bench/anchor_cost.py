"""What the anchor costs: SFM vs anchored SFM steps side by side, in one process, alternating.

Both methods distil the same data with the same backbone, seed and steps (Stage I computed once,
then cached); the figure is Stage II's seconds per step from each run's summary, in ABAB order so
a drift of the machine's speed hits both. Prints the median ratio anchored / SFM.

    python bench/anchor_cost.py [--ipc 10] [--iterations 100] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path


def main() -> None:
    import torch

    from edgedd.core.config import DistillConfig
    from edgedd.distillation.pipeline import RunOptions, distill

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="edgedd/host-vit")
    ap.add_argument("--data", default="embedded:mnist")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    os.environ.setdefault("EDGEDD_PROGRESS", "0")
    times: dict[str, list[float]] = {"sfm": [], "sfm_anchor": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for method in times:
                s = distill(
                    a.data,
                    a.backbone,
                    Path(tmp) / f"{method}_{r}",
                    config=DistillConfig(method=method, ipc=a.ipc, iterations=a.iterations),
                    options=RunOptions(progress=False, preview_every=0, checkpoint_every=0),
                    overwrite=True,
                )
                times[method].append(s["sec_per_iter"])
    ratios = [b / s for s, b in zip(times["sfm"], times["sfm_anchor"], strict=True)]
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "ipc": a.ipc,
        "iterations": a.iterations,
        "sec_per_iter": times,
        "ratio_anchor_over_sfm_median": statistics.median(ratios),
        "ratios": ratios,
    }
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        for m, t in times.items():
            print(f"{m:<11} s/step median {statistics.median(t):.4f}  ({', '.join(f'{x:.4f}' for x in t)})")
        print(
            f"anchored / SFM: median {out['ratio_anchor_over_sfm_median']:.3f} (per pair "
            f"{', '.join(f'{x:.3f}' for x in ratios)})"
        )


if __name__ == "__main__":
    main()
