"""The cross-model matrix: each distilled run evaluated through other backbones B (Classifier
Inheritance and a normal probe, the converged protocol), one JSON per (run, B), one table.

    python examples/cross_matrix.py RUN [RUN ...] --eval edgedd/host-vit --eval edgedd/edge-cnn \
        --eval edgedd/efficientnet-lite0@96 --out bench/results/cross

Each cell is `edgedd evaluate RUN --eval-backbone B [--eval-crop-res R] --mode normal --mode ci
--seeds S --json`, written to OUT/<run name>__<B>.json; a cell whose JSON exists is read, not
re-run (the matrix is costly on a CPU: a Lite0 cell is ~2 min). Prints a markdown table: per
run its method, init, IPC and steps; per B the CI and normal top-1 (mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgedd.distillation.rundir import load_run
from edgedd.evaluation.evaluate import EvalConfig, evaluate_run


def cell(run: Path, spec: str, out: Path, seeds: int) -> dict:
    name, _, res = spec.partition("@")
    path = out / f"{run.name}__{name.replace('/', '_')}{'_' + res if res else ''}.json"
    if not path.exists():
        r = evaluate_run(
            run,
            "embedded:mnist/test",
            modes=("normal", "ci"),
            eval_backbone=name,
            eval_crop_res=int(res) if res else None,
            config=EvalConfig(seeds=seeds),
            progress=True,
        )
        path.write_text(json.dumps(r, indent=2, default=str))
    return json.loads(path.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--eval", action="append", required=True, help="backbone B, optionally @input size")
    ap.add_argument("--out", type=Path, default=Path("bench/results/cross"))
    ap.add_argument("--seeds", type=int, default=2)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    pct = lambda m: f"{100 * m['top1_mean']:.1f} ± {100 * m['top1_std']:.1f}"  # noqa: E731
    head = "| run | init | IPC | steps | " + " | ".join(f"{b} CI | {b} normal" for b in a.eval) + " |"
    rows = [head, "|" + "---|" * (4 + 2 * len(a.eval))]
    for run in a.runs:
        cfg = load_run(run).config
        cells = [cell(run, b, a.out, a.seeds)["modes"] for b in a.eval]
        rows.append(
            f"| {cfg.get('method')} | {cfg.get('init', 'noise')} | {cfg.get('ipc')} | {cfg.get('iterations')} | "
            + " | ".join(f"{pct(m['ci'])} | {pct(m['normal'])}" for m in cells)
            + " |"
        )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
