"""Which views should the device fit its projector on? Side by side, one set at a time.

The device fits P: phi_B -> phi_A by the closed-form ridge of edgedd.device.ridge (strength chosen
by its grouped cross-validation) on K views of the bundle's images, then scores the golden
classifier on P(phi_B(real test image's centre crop)). This script makes that fit on the host in
torch + numpy, for one image set and several kinds of views, and prints top-1 on the test digits:

* ``rrc:K``      K flip + random-resized crops of 8-100% (METHOD.md's; what pack stored before)
* ``mildF:K``    K flip + crops of area >= F
* ``cmildF:K``   view 0 the centre crop, then K - 1 crops of area >= F (pack's default, F = 0.5)
* ``center:1``   the centre crop only

A set is a run directory distilled through A (its synthetic images and golden classifier), or
``real:SEED`` (10 random real training images per class, the seeded draw ``--init real`` makes,
with the golden classifier of ``--golden-run``). Run (Lite1 -> Lite0 at 64 px):

    python bench/device_views.py RUN real:0 real:1 real:2 --golden-run RUN \\
        --kinds rrc:8,cmild0.5:8,mild0.5:32 --out bench/results/device_views/rows.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edgedd.backbones.forward import encode
from edgedd.backbones.loader import load_backbone
from edgedd.core.config import AugmentConfig
from edgedd.core.images import open_dataset
from edgedd.device.ridge import fit_ridge, select_ridge
from edgedd.distillation.rundir import load_run
from edgedd.distillation.stage2 import real_init_images
from edgedd.host.augment import Views, device_views, eval_box, render_views, sample_views


def image_set(spec: str, golden_run: str | None, ipc: int, canvas: int):
    """(images in [0, 1], labels, golden W, golden b) of a run or of ``real:SEED``."""
    run = load_run(golden_run if spec.startswith("real:") else spec)
    if spec.startswith("real:"):
        pix = real_init_images(open_dataset("embedded:mnist"), ipc, canvas, "bicubic", int(spec[5:]))  # in [0, 1]
        labels = np.repeat(np.arange(run.num_classes), ipc)
    else:
        pix, labels = run.images.float(), run.labels.numpy()
        pix = pix / 255 if pix.max() > 2 else pix
    return pix, labels, run.golden_weight.numpy(), run.golden_bias.numpy()


def views_of(kind: str, n: int, box: tuple[float, float], gen: torch.Generator) -> tuple[int, Views]:
    name, k = kind.split(":")
    k = int(k)
    if name == "center":
        v = device_views(n, 1, box, 0.5, gen)
        return 1, v
    if name == "rrc":
        return k, sample_views(n * k, AugmentConfig(), gen)
    if name.startswith("cmild"):
        return k, device_views(n, k, box, float(name[5:]), gen)
    if name.startswith("mild"):
        return k, sample_views(n * k, AugmentConfig(crop_scale=(float(name[4:]), 1.0)), gen)
    raise SystemExit(f"error: unknown view kind {kind!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+", help="run directories or real:SEED")
    ap.add_argument("--golden-run", help="the run whose golden classifier real:SEED sets use")
    ap.add_argument("--host", default="edgedd/efficientnet-lite1@64")
    ap.add_argument("--edge", default="edgedd/efficientnet-lite0@64")
    ap.add_argument("--kinds", default="rrc:8,cmild0.5:8,mild0.5:32")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # not a package
    from projector_ceiling import features

    t0 = time.perf_counter()
    models = {}
    for role, spec in (("a", a.host), ("b", a.edge)):
        name, _, res = spec.partition("@")
        models[role] = load_backbone(name, "hub", input_size=int(res) if res else None, device="cpu", seed=0)
    test_b, y_test, _ = features(a.edge, "embedded:mnist/test")
    pp_a = models["a"][1].preprocess

    @torch.no_grad()
    def enc(role, x):
        model, info = models[role]
        return torch.cat([encode(model, x[i : i + 512], info.preprocess) for i in range(0, len(x), 512)]).numpy()

    for spec in a.sets:
        pix, labels, w, b = image_set(spec, a.golden_run, a.ipc, pp_a.resize_size)
        n = len(labels)
        gen = torch.Generator().manual_seed(0)
        for kind in a.kinds.split(","):
            pp_b = models["b"][1].preprocess  # view 0: B's eval view, as pack stores it
            k, views = views_of(kind, n, eval_box(pp_b.resize_size, pp_b.input_size), gen)
            idx = np.repeat(np.arange(n), k)
            xa = enc("a", render_views(pix[idx], views, models["a"][1].preprocess.input_size))
            xb = enc("b", render_views(pix[idx], views, models["b"][1].preprocess.input_size))
            r, _ = select_ridge(xb, xa, idx, labels[idx], prior="none", classifier=w)
            p, pb = fit_ridge(xb, xa, r, "none")
            top1 = float((((test_b @ p.T + pb) @ w.T + b).argmax(1) == y_test).mean())
            row = {"set": spec, "kind": kind, "views": len(idx), "ridge": r, "top1": top1}
            print(json.dumps(row), f"({time.perf_counter() - t0:.0f} s)", flush=True)
            if a.out:
                a.out.parent.mkdir(parents=True, exist_ok=True)
                with a.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
