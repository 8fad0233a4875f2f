"""The method sweep of docs/RESULTS.md ("Methods compared"): every matching loss under one evaluation protocol \
fixed in advance.

For each IPC, method and distillation seed: distill embedded:mnist with the shipped edgedd/host-vit,
then evaluate on embedded:mnist/test (normal and CI, 3 evaluation seeds, the converged protocol:
edgedd.evaluate); the baselines once per IPC under the same protocol. One JSON per run in --out,
then the markdown table (mean over distillation seeds of the per-run means; the spread is the
population std over distillation seeds).

    python examples/sweep.py --ipc 1 --iterations 1000 --seeds 0,1,2 --out bench/results/sweep
    python examples/sweep.py --table --out bench/results/sweep        # the table from the JSONs

Methods: sfm (the paper's), sfm_anchor (beta 10), sfm_decouple alpha 0 / 0.5 / 1, lgm (augs 10).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

HOST = "edgedd/host-vit"
METHODS = {
    "sfm": {"method": "sfm"},
    "sfm_anchor": {"method": "sfm_anchor", "beta": 10.0},
    "decouple_a0": {"method": "sfm_decouple", "alpha": 0.0},
    "decouple_a0.5": {"method": "sfm_decouple", "alpha": 0.5},
    "decouple_a1": {"method": "sfm_decouple", "alpha": 1.0},
    "lgm": {"method": "lgm", "augs_per_batch": 10},
}


def run_one(name: str, ipc: int, iterations: int, seed: int, out: Path, progress: bool) -> dict:
    from edgedd.core.config import DistillConfig, StageIConfig
    from edgedd.distillation.pipeline import RunOptions, distill
    from edgedd.evaluation.evaluate import EvalConfig, evaluate_run

    run = out / "runs" / f"{name}_ipc{ipc}_s{seed}"
    t = time.perf_counter()
    s = distill(
        "embedded:mnist",
        HOST,
        run,
        config=DistillConfig(ipc=ipc, iterations=iterations, seed=seed, **METHODS[name]),
        stage1_config=StageIConfig(),
        options=RunOptions(progress=progress, preview_every=0),
        overwrite=True,
    )
    secs = time.perf_counter() - t
    ev = evaluate_run(run, "embedded:mnist/test", modes=("normal", "ci"), config=EvalConfig(), progress=progress)
    return {
        "name": name,
        "ipc": ipc,
        "iterations": iterations,
        "seed": seed,
        "distill_seconds": secs,
        "flow_cosine": s["flow_cosine"],
        "landing": s["landing"],
        "eval": ev,
    }


def baselines(ipc: int, out: Path, progress: bool) -> dict:
    """Random real, centroids, full: evaluated on the seed-0 SFM run's training data (they do not depend on the
    method).
    """
    from edgedd.evaluation.evaluate import EvalConfig, evaluate_run

    ev = evaluate_run(
        out / "runs" / f"sfm_ipc{ipc}_s0",
        "embedded:mnist/test",
        modes=("normal",),
        config=EvalConfig(),
        baselines=True,
        progress=progress,
    )
    return {"name": "baselines", "ipc": ipc, "eval": ev}


def table(out: Path) -> str:
    import numpy as np

    rows = [json.loads(p.read_text()) for p in sorted((out / "json").glob("*.json"))]
    lines = [
        "| IPC | method | steps | distill seeds | flow cos | centre offset | normal top-1 | CI top-1 | normal train "
        "loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for ipc in sorted({r["ipc"] for r in rows}):
        for name in [*METHODS, "baselines"]:
            rs = [r for r in rows if r["ipc"] == ipc and r["name"] == name]
            if not rs:
                continue
            if name == "baselines":
                b = rs[0]["eval"]["baselines"]
                for k in ("random", "centroids", "neighbors", "full"):
                    lines.append(
                        f"| {ipc} | baseline: {k} | | | | | {100 * b[k]['top1_mean']:.1f} ± "
                        f"{100 * b[k]['top1_std']:.1f} | | "
                        f"{np.mean(b[k]['train_loss_final']):.3g} |"
                    )
                continue
            m = lambda mode, rs=rs: [r["eval"]["modes"][mode]["top1_mean"] for r in rs]  # noqa: E731
            lines.append(
                f"| {ipc} | {name} | {rs[0]['iterations']} | {len(rs)} | {np.mean([r['flow_cosine'] for r in rs]):.3f} "
                f"| {np.mean([r['landing']['centre_offset_mean'] for r in rs]):.2f} "
                f"| {100 * np.mean(m('normal')):.1f} ± {100 * np.std(m('normal')):.1f} | {100 * np.mean(m('ci')):.1f} "
                f"± {100 * np.std(m('ci')):.1f} "
                f"| {np.mean([np.mean(r['eval']['modes']['normal']['train_loss_final']) for r in rs]):.3g} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ipc", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--baselines", action="store_true", help="also the baselines (needs the seed-0 sfm run)")
    ap.add_argument("--table", action="store_true", help="only print the table from the JSONs in --out")
    ap.add_argument("--out", default="runs/sweep")
    a = ap.parse_args()
    out = Path(a.out)
    if not a.table:
        (out / "json").mkdir(parents=True, exist_ok=True)
        progress = os.environ.get("EDGEDD_PROGRESS", "1") != "0"
        for name in a.methods.split(","):
            for seed in [int(s) for s in a.seeds.split(",")]:
                r = run_one(name, a.ipc, a.iterations, seed, out, progress)
                (out / "json" / f"{name}_ipc{a.ipc}_s{seed}.json").write_text(json.dumps(r, indent=1, default=str))
                print(
                    f"done {name} ipc {a.ipc} seed {seed}: normal {r['eval']['modes']['normal']['top1_mean']:.3f} "
                    f"ci {r['eval']['modes']['ci']['top1_mean']:.3f} ({r['distill_seconds']:.0f} s)",
                    flush=True,
                )
        if a.baselines:
            (out / "json" / f"baselines_ipc{a.ipc}.json").write_text(
                json.dumps(baselines(a.ipc, out, progress), indent=1, default=str)
            )
    print(table(out))


if __name__ == "__main__":
    main()
