"""The methods table: distill + evaluate over a grid (variants x IPC x distillation seeds), one table.

Each cell is one `distill` (its own run directory) then one `evaluate` (the converged protocol by
default, `normal` and `ci`, the starting set scored beside the result), written as
RESULTS/cells/<variant>_ipc<I>_seed<S>.json. The real-image baselines (random real, centroids,
k-centre, herding; evaluate --baselines) depend on the IPC and the Stage I statistics, not on the
variant or the seed: they are measured once per IPC, on that IPC's first cell, into
RESULTS/baselines_ipc<I>.json. Resumable: a cell or baseline whose JSON exists is not run again
(delete it to redo it; an interrupted distill restarts from scratch into its run directory).

A variant is `label=method[,field=value...]`: a DistillConfig method and overrides of its fields,
e.g. `default=sfm_sub_probe`, `anchor=sfm_anchor`, `sfm=sfm`, `sub=sfm_sub,crop_min=0.25,noise_p=0,lr=1e-2`
(crop_min and the AugmentConfig scalars go to the nested augment config), `noise=sfm_anchor,init=noise`,
`long=sfm_anchor,iterations=1000`.

Printed (and written to RESULTS/table.md), per variant and IPC over the distillation seeds:
normal-probe top-1 mean ± sd (sd over the seeds' means), CI top-1, Stage II's final loss, the
pixel-space copy ratio (median; images under 0.5 of all), and the stage-II gain (normal, final -
starting set); then the baselines' normal-probe top-1 per IPC.

    python bench/methods_table.py --results bench/results/methods_lite0 --ipc 10 --seeds 0 --iterations 100
    python bench/methods_table.py --backbone edgedd/host-vit --crop-res 0 --results bench/results/methods_hostvit
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import fields, replace
from pathlib import Path


def parse_variant(spec: str, default_cfg) -> tuple[str, object]:
    """``label=method[,field=value...]`` -> (label, DistillConfig)."""
    label, _, rest = spec.partition("=")
    method, *overrides = rest.split(",")
    # the loss views come from the method (config.method_views) unless overridden below
    cfg = replace(default_cfg, method=method or default_cfg.method, augment=None)
    types = {f.name: type(getattr(default_cfg, f.name)) for f in fields(default_cfg)}
    aug = {f.name: type(getattr(default_cfg.augment, f.name)) for f in fields(default_cfg.augment)}
    for o in overrides:
        k, _, v = o.partition("=")
        if k == "method":
            sys.exit(f"error: variant {label!r}: give the method before the first comma, not as method=")
        # the CLI's --crop-min / --noise-p live in the nested AugmentConfig
        if k == "crop_min":
            cfg = replace(cfg, augment=replace(cfg.augment, crop_scale=(float(v), cfg.augment.crop_scale[1])))
            continue
        if k in aug and aug[k] in (int, float, str):
            cfg = replace(cfg, augment=replace(cfg.augment, **{k: aug[k](v)}))
            continue
        if k not in types:
            sys.exit(f"error: variant {label!r}: DistillConfig has no field {k!r}")
        cfg = replace(cfg, **{k: types[k](v) if types[k] is not bool else v.lower() in ("1", "true", "yes")})
    return label, cfg


def _atomic_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def run_cell(a, label: str, cfg, ipc: int, seed: int, results: Path) -> dict:
    """One distill + evaluate; the cell's figures (the whole evaluate result kept too)."""
    from edgedd.core.config import EvalConfig, RunOptions, StageIConfig
    from edgedd.distillation.pipeline import distill
    from edgedd.evaluation.evaluate import evaluate_run as evaluate

    run = results / "runs" / f"{label}_ipc{ipc}_seed{seed}"
    t0 = time.perf_counter()
    s = distill(
        a.data,
        a.backbone,
        run,
        weights=a.weights,
        config=replace(cfg, ipc=ipc, seed=seed, iterations=a.iterations or cfg.iterations),
        stage1_config=StageIConfig(golden_views=a.golden_views),
        options=RunOptions(progress=not a.quiet, device=a.device),
        overwrite=True,
        crop_res=a.crop_res or None,
    )
    t1 = time.perf_counter()
    ev = evaluate(
        run,
        a.test_data,
        modes=tuple(a.modes),
        config=EvalConfig(protocol=a.protocol, seeds=a.eval_seeds, device=a.device),
        progress=not a.quiet,
    )
    cr = (s.get("copy_ratio") or {}).get("spaces", {})
    return {
        "variant": label,
        "method": cfg.method,
        "ipc": ipc,
        "seed": seed,
        "config": s["config"],
        "run": str(run),
        "final_loss": s["final_loss"],
        "flow_cosine": s["flow_cosine"],
        "landing_offset": s["landing"]["centre_offset_mean"],
        "copy_ratio": {k: {kk: v.get(kk) for kk in ("min", "median", "max", "below", "images")} for k, v in cr.items()},
        "top1": {m: ev["modes"][m]["top1_mean"] for m in ev["modes"]},
        "start_top1": {m: v["top1_mean"] for m, v in (ev.get("starting_set") or {}).items()},
        "stage2_gain": ev.get("stage2_gain"),
        "distill_seconds": t1 - t0,
        "evaluate_seconds": time.perf_counter() - t1,
        "evaluate": ev,
    }


def run_baselines(a, cell: dict, results: Path) -> dict:
    from edgedd.core.config import EvalConfig
    from edgedd.evaluation.evaluate import evaluate_run as evaluate

    ev = evaluate(
        cell["run"],
        a.test_data,
        modes=("normal",),
        config=EvalConfig(protocol=a.protocol, seeds=a.eval_seeds, device=a.device),
        baselines=True,
        starting_set=False,
        progress=not a.quiet,
    )
    return {"ipc": cell["ipc"], "baselines": ev["baselines"], "run": cell["run"]}


def _pm(xs: list[float]) -> str:
    if not xs:
        return "–"
    sd = statistics.pstdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.mean(xs):.1f} ± {100 * sd:.1f}"


def table(cells: list[dict], baselines: dict[int, dict], a) -> str:
    """One markdown table: a row per (variant, IPC), then a row per (baseline, IPC)."""
    lines = [
        f"{a.backbone} ({a.crop_res or 'default'} px), {a.data} -> {a.test_data}; {a.protocol} protocol, "
        f"{a.eval_seeds} eval seeds; "
        f"cells in {a.results}",
        "",
        "| set | IPC | distill seeds | normal top-1 | CI top-1 | Stage II final loss | copy ratio (pixels: median; < "
        "0.5) "
        "| stage-II gain (normal) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, int], list[dict]] = {}
    for c in cells:
        groups.setdefault((c["variant"], c["ipc"]), []).append(c)
    for (label, ipc), cs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        pix = [c["copy_ratio"].get("pixels", {}) for c in cs]
        med = [p["median"] for p in pix if p.get("median") is not None]
        below = f"{sum(p.get('below') or 0 for p in pix)}/{sum(p.get('images') or 0 for p in pix)}"
        gains = [c["stage2_gain"]["normal"] for c in cs if (c.get("stage2_gain") or {}).get("normal") is not None]
        lines.append(
            f"| {label} ({cs[0]['method']}) | {ipc} | {len(cs)} | "
            f"{_pm([c['top1']['normal'] for c in cs if 'normal' in c['top1']])} "
            f"| {_pm([c['top1']['ci'] for c in cs if 'ci' in c['top1']])} | "
            f"{statistics.mean(c['final_loss'] for c in cs):.4g} "
            f"| {statistics.median(med) if med else float('nan'):.2f}; {below} "
            f"| {(f'{100 * statistics.mean(gains):+.1f}') if gains else '–'} |"
        )
    for ipc, b in sorted(baselines.items()):
        for name in ("random", "centroids", "kcentre", "herding", "full"):
            v = b["baselines"].get(name)
            if v:
                lines.append(f"| baseline: {name} | {ipc if name != 'full' else 'all'} | | {_pm(v['seeds'])} | | | | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="embedded:mnist")
    ap.add_argument("--test-data", default="embedded:mnist/test")
    ap.add_argument("--backbone", default="edgedd/efficientnet-lite0")
    ap.add_argument("--weights", default="hub")
    ap.add_argument("--crop-res", type=int, default=64, help="A's input size (0: the backbone's own)")
    ap.add_argument(
        "--variant",
        action="append",
        default=None,
        help="label=method[,field=value...] (repeatable) "
        "[default: default=<edgedd's default method>, anchor=sfm_anchor, sfm=sfm]",
    )
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="distillation seeds")
    ap.add_argument(
        "--iterations", type=int, default=None, help="Stage II steps [default: the variant's / DistillConfig's]"
    )
    ap.add_argument("--golden-views", type=int, default=1)
    ap.add_argument("--modes", nargs="+", default=["normal", "ci"])
    ap.add_argument("--protocol", default="converged")
    ap.add_argument("--eval-seeds", type=int, default=3)
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's]")
    ap.add_argument("--results", type=Path, default=Path("bench/results/methods"))
    ap.add_argument("--quiet", "-q", action="store_true")
    a = ap.parse_args()

    import torch

    from edgedd.core.config import DistillConfig

    if a.threads:
        torch.set_num_threads(a.threads)
    variants = [
        parse_variant(v, DistillConfig())
        for v in (a.variant or [f"default={DistillConfig.method}", "anchor=sfm_anchor", "sfm=sfm"])
    ]
    (a.results / "cells").mkdir(parents=True, exist_ok=True)
    cells, baselines = [], {}
    for ipc in a.ipc:
        for label, cfg in variants:
            for seed in a.seeds:
                path = a.results / "cells" / f"{label}_ipc{ipc}_seed{seed}.json"
                if not path.exists():
                    print(f"[cell] {label} IPC {ipc} seed {seed}", file=sys.stderr, flush=True)
                    _atomic_json(path, run_cell(a, label, cfg, ipc, seed, a.results))
                cells.append(json.loads(path.read_text()))
        bpath = a.results / f"baselines_ipc{ipc}.json"
        if not a.no_baselines and not bpath.exists():
            print(f"[baselines] IPC {ipc}", file=sys.stderr, flush=True)
            _atomic_json(bpath, run_baselines(a, next(c for c in cells if c["ipc"] == ipc), a.results))
        if bpath.exists():
            baselines[ipc] = json.loads(bpath.read_text())
    text = table(cells, baselines, a)
    (a.results / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
