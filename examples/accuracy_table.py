"""SFM vs LGM on the embedded default, as in docs/RESULTS.md's earlier accuracy table.

For each IPC: distill with SFM and with LGM (same backbone, iterations, seed), evaluate each on
embedded:mnist/test in `normal` and `ci` modes over several seeds, with the baselines once per
IPC, and cross-model rows (distilled with the host ViT, evaluated with the edge CNN). Prints a
markdown table and writes the raw results to --out.

    python examples/accuracy_table.py --ipcs 1,10 --iterations 1000,300 --seeds 3 --out runs/accuracy

--iterations is one count for every IPC or one per IPC (LGM at IPC 10 costs ~6 s a step on a
2-core CPU, so the reference 5000 steps are out of reach there). This is the table under the
papers' protocol (METHOD.md's golden recipe and evaluation): `--protocol reference`, the default
here; edgedd's converged protocol and every method side by side: examples/sweep.py.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from edgedd.core.config import DistillConfig, StageIConfig
from edgedd.distillation.pipeline import RunOptions, distill
from edgedd.evaluation.evaluate import EvalConfig, evaluate_run

HOST, EDGE = "edgedd/host-vit", "edgedd/edge-cnn"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ipcs", default="1,10")
    ap.add_argument("--iterations", default="1000,300", help="one count, or one per IPC")
    ap.add_argument("--lgm-augs", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--view-cache", type=int, default=16)
    ap.add_argument(
        "--protocol",
        default="reference",
        choices=("reference", "converged"),
        help="golden recipe and evaluation protocol (reference: METHOD.md's, docs/RESULTS.md's earlier table)",
    )
    ap.add_argument("--out", default="runs/accuracy")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = os.environ.get("EDGEDD_PROGRESS", "1") != "0"
    ecfg = EvalConfig(
        protocol=a.protocol,
        epochs=a.epochs,
        seeds=a.seeds,
        view_cache=a.view_cache if a.protocol == "reference" else None,
    )
    s1cfg = StageIConfig(golden_recipe=a.protocol)
    results = []
    ipcs = [int(x) for x in a.ipcs.split(",")]
    its = [int(x) for x in a.iterations.split(",")]
    if len(its) not in (1, len(ipcs)):
        ap.error("--iterations takes one count or one per IPC")
    its = its * len(ipcs) if len(its) == 1 else its
    for ipc, iterations in zip(ipcs, its, strict=True):
        for method, augs in (("sfm", 1), ("lgm", a.lgm_augs)):
            run = out / f"{method}_ipc{ipc}"
            t = time.perf_counter()
            s = distill(
                "embedded:mnist",
                HOST,
                run,
                config=DistillConfig(method=method, ipc=ipc, iterations=iterations, augs_per_batch=augs),
                stage1_config=s1cfg,
                options=RunOptions(progress=progress),
                overwrite=True,
            )
            secs = time.perf_counter() - t
            ev = evaluate_run(
                run,
                "embedded:mnist/test",
                modes=("normal", "ci"),
                config=ecfg,
                baselines=(method == "sfm"),
                progress=progress,
            )
            cross = evaluate_run(
                run, "embedded:mnist/test", modes=("normal", "ci"), eval_backbone=EDGE, config=ecfg, progress=progress
            )
            results.append(
                {
                    "ipc": ipc,
                    "method": method,
                    "augs": augs,
                    "iterations": iterations,
                    "distill": s,
                    "distill_seconds": secs,
                    "eval": ev,
                    "cross": cross,
                }
            )
            (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
            print(f"done {method} ipc {ipc} in {secs:.0f}s", flush=True)

    pct = lambda v: f"{100 * v['top1_mean']:.1f} ± {100 * v['top1_std']:.1f}"  # noqa: E731
    lines = [
        f"| IPC | rows (eval on embedded:mnist/test, {a.seeds} seeds) | `{HOST}` normal | `{HOST}` CI | `{EDGE}` "
        f"normal | `{EDGE}` CI |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        e, c = r["eval"]["modes"], r["cross"]["modes"]
        lines.append(
            f"| {r['ipc']} | {r['method'].upper()} (augs {r['augs']}, {a.iterations} its, flow cos "
            f"{r['distill']['flow_cosine']:.3f}) "
            f"| {pct(e['normal'])} | {pct(e['ci'])} | {pct(c['normal'])} | {pct(c['ci'])} |"
        )
        if "baselines" in r["eval"]:
            b = r["eval"]["baselines"]
            for name in ("random", "centroids", "neighbors"):
                lines.append(f"| {r['ipc']} | baseline: {name} real | {pct(b[name])} | | | |")
            lines.append(f"| — | full-data probe (ceiling) | {pct(b['full'])} | | | |")
    table = "\n".join(lines)
    (out / "TABLE.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
