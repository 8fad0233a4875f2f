"""How ``edgedd adapt``'s fit (edgedd.device.adapt.adapt_fit) scales with the number of local images,
on random features of a Lite's width (D_A = D_B = 1,280, 10 classes, 800 views), no bundle or
backbone: the fit alone, one process, numpy's threads as the environment sets them. Prints the
seconds and what was kept; two code versions are compared by running it under each (e.g. with
farm-bench --vs and PYTHONPATH pointing at the other checkout).

    python bench/adapt_fit_scale.py PER_CLASS [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    from edgedd.device.adapt import adapt_fit

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("per_class", type=int, help="local images per class (10 classes)")
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--views", type=int, default=800)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    c, d = 10, a.dim
    rng = np.random.default_rng(0)
    means = rng.normal(size=(c, d)).astype(np.float32)
    vl = np.repeat(np.arange(c), a.views // c)
    xv = means[vl] + rng.normal(size=(len(vl), d)).astype(np.float32)
    yv = xv + 0.1 * rng.normal(size=xv.shape).astype(np.float32)
    wc, bc = rng.normal(size=(c, d)) / d**0.5, np.zeros(c)
    yl = np.repeat(np.arange(c), a.per_class)
    xl = means[yl] + rng.normal(size=(len(yl), d)).astype(np.float32)
    t = time.perf_counter()
    r = adapt_fit(xv, yv, vl, wc, bc, xl, yl, view_ridge=0.1)
    out = {
        "local_images": int(len(yl)),
        "seconds": time.perf_counter() - t,
        "used": r["used"],
        "local_weight": r["local_weight"],
        "wins": r["wins"],
        "losses": r["losses"],
        "weight_checksum": float(np.abs(r["weight"]).sum()),
    }
    print(json.dumps(out) if a.json else " ".join(f"{k}={v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
