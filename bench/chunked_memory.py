"""Peak memory and time of one SFM step against N: the one-pass step vs the chunked step.

Each (N, step) pair runs in a fresh process: one warm-up step, then the measured step, with the
working memory taken by edgedd.host.memory.PhaseMemory (CUDA: max_memory_allocated; CPU: resident
high-water mark minus the RSS before the step). The chunked step's peak should stay flat in N
(set by --chunk), the one-pass step's should grow linearly.

    python bench/chunked_memory.py [--backbone test_vit --crop-res 64 --ns 10,30,100,300,1000 --chunk 32] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time


def worker(mode: str, n: int, a) -> dict:
    import torch

    from edgedd.backbones.forward import backbone_autocast as _autocast
    from edgedd.backbones.forward import resolve_device
    from edgedd.backbones.loader import load_backbone
    from edgedd.core.config import DistillConfig
    from edgedd.distillation.chunked import chunked_step
    from edgedd.distillation.losses import flow
    from edgedd.distillation.pyramid import Pyramid
    from edgedd.distillation.stage2 import feature_loss, sfm_step_loss
    from edgedd.host.memory import PhaseMemory

    dev = resolve_device(a.device)
    model, info = load_backbone(a.backbone, "random", input_size=a.crop_res, resize_size=a.crop_res, device=dev)
    c = 10
    cfg = DistillConfig(method="sfm_anchor", ipc=max(1, n // c), syn_res=a.crop_res, crop_res=a.crop_res)
    g = torch.Generator(device=dev).manual_seed(0)
    pyr = Pyramid.init(c * cfg.ipc, a.crop_res, g, dev)
    while not pyr.full:
        pyr.extend(g)
    centres = torch.randn(c, info.num_features, generator=g, device=dev)
    f_real = flow(centres)
    ac = _autocast(dev, cfg.amp)

    def step():
        for lv in pyr.levels:
            lv.grad = None
        if mode == "one_pass":
            sfm_step_loss(model, pyr.decode(), cfg, info, g, f_real, centres).backward()
        else:
            chunked_step(model, pyr, cfg, info, g, lambda z: feature_loss(z, cfg, f_real, centres), a.chunk, ac)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    step()  # warm-up: allocator pools, lazy init
    mem = PhaseMemory(dev)
    mem.start()
    t = time.perf_counter()
    step()
    sec = time.perf_counter() - t
    return {"n": c * cfg.ipc, "sec": sec, "peak_mb": mem.peak_mb()["working_mb"], "device": str(dev)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="test_vit")
    ap.add_argument("--crop-res", type=int, default=64)
    ap.add_argument("--ns", default="10,30,100,300,1000")
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), a)))
        return
    rows = []
    for n in [int(x) for x in a.ns.split(",")]:
        row = {"n": n}
        for mode in ("one_pass", "chunked"):
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                mode,
                str(n),
                "--backbone",
                a.backbone,
                "--crop-res",
                str(a.crop_res),
                "--chunk",
                str(a.chunk),
                "--device",
                a.device,
            ]
            from edgedd.host.memory import MEASURE_ENV

            r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **MEASURE_ENV})
            if r.returncode:
                sys.exit(r.stderr[-2000:])
            w = json.loads(r.stdout.strip().splitlines()[-1])
            row[f"{mode}_peak_mb"], row[f"{mode}_sec"], row["device"] = w["peak_mb"], w["sec"], w["device"]
        rows.append(row)
        if not a.json:
            print(
                f"N={n:>5}  one-pass {row['one_pass_peak_mb']:>8.1f} MB {row['one_pass_sec']:>7.3f} s   "
                f"chunked({a.chunk}) {row['chunked_peak_mb']:>8.1f} MB {row['chunked_sec']:>7.3f} s",
                flush=True,
            )
    res = {
        "backbone": a.backbone,
        "crop_res": a.crop_res,
        "chunk": a.chunk,
        "rows": rows,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    if a.json:
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
