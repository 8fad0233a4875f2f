"""How far the synthetic images moved from the training images (a proxy of the copy ratio).

For each synthetic image of a run: grey (channel mean), resampled to the training images' size
(area), and the RMS pixel distance in [0, 1] to its nearest training image. Printed beside the
training set's own median distance from a real image to its nearest *other* one, and the share of
synthetic images nearer than that set's 10th percentile. Run:

    python bench/copy_proxy.py RUN [RUN ...] --data embedded:mnist [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from edgedd.core.images import open_dataset
from edgedd.distillation.rundir import load_run
from edgedd.host.data import CanvasDataset


def real_pixels(data: str, size: int) -> np.ndarray:
    source = open_dataset(data)
    ds = CanvasDataset(source, size, "bicubic")
    rows = [ds[i][0] for i in range(len(source))]
    return np.stack([r.astype(np.float32).mean(-1) / 255 for r in rows if r is not None]).reshape(len(rows), -1)


def nearest(a: np.ndarray, b: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """RMS distance of each row of a to its nearest row of b."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
    if exclude_self:
        np.fill_diagonal(d2, np.inf)
    return np.sqrt(np.clip(d2.min(1), 0, None) / a.shape[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data", default="embedded:mnist")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--json")
    a = ap.parse_args()
    real = real_pixels(a.data, a.size)
    rr = nearest(real, real, exclude_self=True)
    p10, med = float(np.percentile(rr, 10)), float(np.median(rr))
    out = {"real_to_real_median": med, "real_to_real_p10": p10, "runs": {}}
    print(f"real -> nearest other real: median {med:.3f}, 10th percentile {p10:.3f}")
    for r in a.runs:
        x = load_run(r).images.mean(1, keepdim=True)
        x = F.interpolate(x, size=(a.size, a.size), mode="area").flatten(1).numpy()
        d = nearest(x, real)
        out["runs"][r] = {
            "median": float(np.median(d)),
            "mean": float(d.mean()),
            "ratio_median": float(np.median(d) / med),
            "share_below_p10": float((d < p10).mean()),
        }
        print(
            f"{r}: nearest real median {np.median(d):.3f} (ratio {np.median(d) / med:.2f}), below p10: "
            f"{100 * (d < p10).mean():.0f}%"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
