"""Stage II methods under the fixed evaluation protocol: one distill, its normal probe, and where it went.

Distils ``embedded:mnist`` with one method / augmentation / learning rate (Stage I cached), then
scores it with the protocol fixed before any method was compared (``edgedd evaluate RUN
--test-data embedded:mnist/test --mode normal --seeds 2``, converged), and records:

* the normal probe's top-1 (mean, sd over the 2 evaluation seeds);
* the first and final training loss;
* the centre-view flow cosine and centre offset (``landing``) of the final images and of the
  images the run started from (computed here from the same seed's step-0 images);
* the pixel copy ratio: each synthetic image's RMS distance (28 x 28 grey, [0, 1]) to its nearest
  training digit over the median nearest-other distance between training digits, and the share
  of images under 0.5.

    python bench/stage2_methods.py NAME --backbone edgedd/efficientnet-lite0 --method sfm_probe --noise-p 0 \\
        [--ipc 10] [--iterations 100] [--lr 2e-3] [--crop-scale LO HI] [--seed 0] [--init real] [--out DIR] \\
        [--json-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def copy_ratio(images: np.ndarray, train_pixels: np.ndarray) -> dict:
    """images (N, 3, R, R) in [0, 1]; train_pixels (n, 28, 28, 3) uint8."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images).float().mean(1, keepdim=True)
    side = train_pixels.shape[1]
    syn = F.interpolate(x, size=(side, side), mode="area").flatten(1).double()
    real = torch.from_numpy(train_pixels).double().mean(-1).flatten(1) / 255
    d = torch.cdist(syn, real) / side  # RMS = L2 / sqrt(pixels)
    rr = torch.cdist(real, real) / side
    rr.fill_diagonal_(float("inf"))
    median = float(rr.min(1).values.median())
    ratio = d.min(1).values / median
    return {
        "median_real_nearest_other_rms": median,
        "ratio_median": float(ratio.median()),
        "ratio_min": float(ratio.min()),
        "share_under_0_5": float((ratio < 0.5).double().mean()),
        "share_at_least_1": float((ratio >= 1).double().mean()),
    }


def start_figures(out: Path, cfg, crop: int | None) -> dict:
    """Flow cosine and landing of the step-0 images: the run's initial.safetensors (whatever --init
    made them)."""
    import torch
    from safetensors.torch import load_file

    from edgedd.backbones.forward import encode
    from edgedd.distillation import stage2
    from edgedd.distillation.fidelity import synthetic_landing
    from edgedd.distillation.losses import flow
    from edgedd.distillation.rundir import load_run
    from edgedd.distillation.stage1_files import load_stage1

    run = load_run(out)
    pp = run.preprocess
    model, info = run.load_backbone(torch.device("cpu"))
    start = load_file(out / "initial.safetensors")
    x0, labels = start["images"].float(), start["labels"]
    s1 = load_stage1(out)
    num_classes = s1.centres.shape[0]
    fc = stage2.flow_cosine(model, x0, info, flow(s1.centres).float(), num_classes, False)
    lands = synthetic_landing(
        lambda x: encode(model, x, pp, amp=False),
        x0,
        pp.input_size,
        labels,
        s1.centres,
        s1.weight,
        s1.bias,
        seed=cfg.seed,
    )
    return {"flow_cosine": fc, "landing": lands}


def main() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from edgedd.core.config import DistillConfig, EvalConfig, StageIConfig, method_views
    from edgedd.core.images import open_dataset
    from edgedd.distillation.pipeline import RunOptions, distill
    from edgedd.evaluation.evaluate import evaluate_run

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("--backbone", default="edgedd/efficientnet-lite0")
    ap.add_argument("--method", default=DistillConfig.method)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--lr", type=float, default=DistillConfig.lr)
    ap.add_argument("--init", default="real")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gamma", type=float, default=DistillConfig.gamma)
    ap.add_argument("--kappa", type=float, default=DistillConfig.kappa)
    ap.add_argument("--crop-scale", type=float, nargs=2, default=None, help="[default: the method's]")
    ap.add_argument("--noise-p", type=float, default=None, help="[default: the method's]")
    ap.add_argument("--out", default="runs/stage2_methods")
    ap.add_argument("--json-dir", default="bench/results/stage2_methods")
    a = ap.parse_args()
    os.environ.setdefault("EDGEDD_PROGRESS", "0")
    crop = 64 if "efficientnet-lite" in a.backbone else None  # the demo's host size
    cfg = DistillConfig(
        method=a.method,
        ipc=a.ipc,
        iterations=a.iterations,
        lr=a.lr,
        init=a.init,
        seed=a.seed,
        gamma=a.gamma,
        kappa=a.kappa,
        augment=method_views(
            a.method,
            crop_min=a.crop_scale[0] if a.crop_scale else None,
            crop_max=a.crop_scale[1] if a.crop_scale else None,
            noise_p=a.noise_p,
        ),
    )
    out = Path(a.out) / a.name
    t0 = time.perf_counter()
    s = distill(
        "embedded:mnist",
        a.backbone,
        out,
        config=cfg,
        stage1_config=StageIConfig(golden_views=1),  # the demo's Stage I
        options=RunOptions(progress=False, checkpoint_every=0, preview_every=0),
        overwrite=True,
        crop_res=crop,
    )
    t_distill = time.perf_counter() - t0
    ev = evaluate_run(out, "embedded:mnist/test", modes=("normal",), config=EvalConfig(seeds=2), progress=False)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    from safetensors.numpy import load_file

    images = load_file(str(out / "synthetic.safetensors"))["images"]
    n = ev["modes"]["normal"]
    rec = {
        "name": a.name,
        "command": "python bench/stage2_methods.py " + " ".join(os.sys.argv[1:]),
        "backbone": a.backbone,
        "config": s["config"],
        "normal_top1_mean": n["top1_mean"],
        "normal_top1_std": n["top1_std"],
        "first_loss": lines[0]["loss"],
        "final_loss": s["final_loss"],
        "flow_cosine": s["flow_cosine"],
        "landing": s["landing"],
        "start": start_figures(out, cfg, crop),
        "copy_ratio_pixels": copy_ratio(images, open_dataset("embedded:mnist").pixels),
        "distill_seconds": t_distill,
        "stage2_seconds": s["stage2_seconds"],
        "loss_curve": [ln["loss"] for ln in lines],
    }
    Path(a.json_dir).mkdir(parents=True, exist_ok=True)
    (Path(a.json_dir) / f"{a.name}.json").write_text(json.dumps(rec, indent=1))
    brief = {
        k: rec[k] for k in ("name", "normal_top1_mean", "normal_top1_std", "first_loss", "final_loss", "flow_cosine")
    }
    brief["centre_offset"] = rec["landing"].get("centre_offset_mean")
    print(json.dumps(brief))


if __name__ == "__main__":
    main()
