"""SFM vs LGM distillation cost, side by side in one invocation (METHOD.md reference settings:
SFM with 1 augmentation pass, LGM with 10; same backbone, data, IPC and iterations).

Each method runs as its own `edgedd distill` process (so neither inherits the other's allocator
state); the figures come from the run's summary.json:
  sec_per_iter, wall_s  : Stage II only (Stage I is shared and cached)
  peak_mem_mb           : Stage II working memory: CUDA max_memory_allocated over the phase, or on
                          CPU the resident high-water mark during the phase minus the RSS just
                          before its first step (edgedd/host/memory.py). It includes the synthetic set's
                          own state (pyramid levels and Adam moments, the same for both methods),
                          which is created inside the phase as the pyramid grows from 1x1
  step_mem_mb           : the working memory of one full-resolution step once that state exists
                          (the first such step after at least one other in the process, so the
                          framework's lazy first-step allocations are outside it too)
and the ratios LGM / SFM of each. SFM runs with --chunk-size 0 (one pass: what auto picks when it
fits) so that neither method runs a memory probe before its phase.

The defaults are METHOD.md's reference resolution (224 px crop, 256 px synthetic, IPC 1) on a
500-image subset of the embedded dataset (``--data-limit``; the step's cost does not depend on the
dataset's size, and Stage I at 224 px over all 4,000 images takes over 20 minutes on a 2-core CPU).

    python bench/distill_cost.py [--crop-res 112 --syn-res 128 --data-limit 0 --ipc 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path


def run_method(method: str, augs: int, a, out: Path, env) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "edgedd",
        "distill",
        a.data,
        "--backbone",
        a.backbone,
        "--weights",
        a.weights,
        "--method",
        method,
        "--augs-per-batch",
        str(augs),
        "--ipc",
        str(a.ipc),
        "--iterations",
        str(a.iterations),
        "--crop-res",
        str(a.crop_res),
        "--syn-res",
        str(a.syn_res),
        "--device",
        a.device,
        "--seed",
        "0",
        "--checkpoint-every",
        "0",
        "--preview-every",
        "0",
        "--out",
        str(out),
        "--json",
        "-q",
    ]
    if method == "sfm":
        cmd += ["--chunk-size", "0"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"{method} failed:\n{r.stderr[-2000:]}")
    s = json.loads(r.stdout)
    mem, step_mem = s["stage2_memory"], s.get("stage2_step_memory") or {}
    return {
        "method": method,
        "augs_per_batch": augs,
        "sec_per_iter": s["sec_per_iter"],
        "wall_s": s["stage2_seconds"],
        "peak_mem_mb": mem["working_mb"],
        "step_mem_mb": step_mem.get("working_mb"),
        "memory_kind": mem["kind"],
        "device": s["device"],
        "final_loss": s["final_loss"],
        "flow_cosine": s["flow_cosine"],
    }


def ratio(lgm: float | None, sfm: float | None) -> float | None:
    return lgm / sfm if lgm is not None and sfm else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="embedded:mnist")
    ap.add_argument("--backbone", default="vit_tiny_patch16_224")
    ap.add_argument("--weights", default="random")
    ap.add_argument(
        "--data-limit", type=int, default=500, help="evenly spaced subset of --data written as an ImageFolder (0: all)"
    )
    ap.add_argument("--crop-res", type=int, default=224)
    ap.add_argument("--syn-res", type=int, default=256)
    ap.add_argument("--ipc", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--sfm-augs", type=int, default=1)
    ap.add_argument("--lgm-augs", type=int, default=10)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from edgedd.host.memory import MEASURE_ENV

    env = dict(os.environ, EDGEDD_PROGRESS="0", **MEASURE_ENV)
    spec = a.data
    with tempfile.TemporaryDirectory() as tmp:
        env.setdefault("EDGEDD_CACHE_DIR", str(Path(tmp) / "cache"))
        if a.data_limit:
            from edgedd.core.images import write_image_folder

            a.data = str(write_image_folder(a.data, Path(tmp) / "data", limit=a.data_limit))
        # warm the Stage I cache first so neither timed run pays for it
        run_method("sfm", 1, argparse.Namespace(**{**vars(a), "iterations": 1}), Path(tmp) / "warm", env)
        sfm = run_method("sfm", a.sfm_augs, a, Path(tmp) / "sfm", env)
        lgm = run_method("lgm", a.lgm_augs, a, Path(tmp) / "lgm", env)
    res = {
        "backbone": a.backbone,
        "data": spec,
        "data_limit": a.data_limit or None,
        "ipc": a.ipc,
        "iterations": a.iterations,
        "crop_res": a.crop_res,
        "syn_res": a.syn_res,
        "sfm": sfm,
        "lgm": lgm,
        "time_ratio": lgm["sec_per_iter"] / sfm["sec_per_iter"],
        "memory_ratio": ratio(lgm["peak_mem_mb"], sfm["peak_mem_mb"]),
        "step_memory_ratio": ratio(lgm["step_mem_mb"], sfm["step_mem_mb"]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
    }
    if a.json:
        print(json.dumps(res, indent=2))
        return
    print(
        f"{a.backbone} @ {a.crop_res}px (syn {a.syn_res}px), "
        f"{spec}{f' ({a.data_limit} images)' if a.data_limit else ''}, IPC {a.ipc}, {a.iterations} iterations, device "
        f"{sfm['device']}"
    )
    print(
        f"{'method':<6} {'augs':>4} {'s/iter':>9} {'wall s':>8} {'phase MB':>9} {'step MB':>9}  ({sfm['memory_kind']})"
    )
    nan = float("nan")
    for m in (sfm, lgm):
        print(
            f"{m['method']:<6} {m['augs_per_batch']:>4} {m['sec_per_iter']:>9.3f} {m['wall_s']:>8.2f} "
            f"{m['peak_mem_mb'] or nan:>9.1f} {m['step_mem_mb'] or nan:>9.1f}"
        )

    def x(r):
        return f"{r:.1f}x" if r else "n/a"

    print(
        f"LGM / SFM: time {res['time_ratio']:.1f}x, memory {x(res['memory_ratio'])} (phase), "
        f"{x(res['step_memory_ratio'])} (step)"
    )


if __name__ == "__main__":
    main()
