"""How far can on-device adaptation go on one bundle? Upper bounds beside what `adapt` does.

`bench/adapt_accuracy.py` scores `adapt` as shipped. This script asks whether a miss is the
selection rule's or the formulation's, on the same features (its ``--features`` cache or a fresh
pass) and the same draws (seed 1000 k + d):

    adapt        edgedd.device.adapt.adapt_fit as shipped (grouped CV, the keep-the-better rule)
    oracle (5)   the candidate (lam, w) of (5) with the best *test* top-1 over the whole grid: not a
                 method (it reads the test labels), the most any selection rule over (5) could reach
    probe        a ridge probe on the k local images alone (bench/adapt_accuracy.probe)
    logit affine the CI logits z -> A z + c (A = I + 10x10, c) fitted by cross-entropy on the k local
                 images (L2 strength 10 toward the identity): a correction that needs no phi_B, to
                 see whether a few labels fix the classifier's scale or bias rather than the projector

at k images per class over several draws, and for large k (20, 50, 100 per class) to find how many
local labels each reaches. Run (Lite1 -> Lite0 projector-aware bundle, the 4,000 training digits):

    python bench/adapt_ceiling.py BUNDLE --train mnist_train --test mnist_test --features CACHE.npz \\
        --json bench/results/adapt_ceiling.json

Needs scipy (the `bench` extra's scikit-learn installs it) for the logit-affine fit's L-BFGS.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from adapt_accuracy import draw, features, probe
from scipy.optimize import minimize

from edgedd.device.adapt import WEIGHT_GRID, _Problem, adapt_fit, delta
from edgedd.device.ridge import RIDGE_GRID, fit_ridge


def logit_affine(z: np.ndarray, y: np.ndarray, lam: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """A = I + E (C x C), c (C): min sum_i CE(A z_i + c, y_i) + lam (||E||^2 + ||c||^2), by L-BFGS."""
    c = z.shape[1]

    def f(th):
        a, cc = np.eye(c) + th[: c * c].reshape(c, c), th[c * c :]
        lg = z @ a.T + cc
        lg = lg - lg.max(1, keepdims=True)
        lse = np.log(np.exp(lg).sum(1))
        p = np.exp(lg - lse[:, None])
        p[np.arange(len(y)), y] -= 1
        loss = (lse - lg[np.arange(len(y)), y]).sum() + lam * (th**2).sum()
        return loss, np.concatenate([(p.T @ z).ravel(), p.sum(0)]) + 2 * lam * th

    th = minimize(f, np.zeros(c * c + c), jac=True, method="L-BFGS-B").x
    return np.eye(c) + th[: c * c].reshape(c, c), th[c * c :]


def rows_for(f: dict, k: int, d: int) -> dict:
    fv, yv, vlab, wc, bc, ft, yt, fp, yp = (f[n] for n in ("fv", "yv", "vlab", "wc", "bc", "ft", "yt", "fp", "yp"))
    prior, r0 = str(f["prior"]), float(f["ridge"])
    wc64, bc64 = wc.astype(np.float64), bc.astype(np.float64)

    def top1(w, b, x=ft, y=yt):
        return float((((x @ w.T + b) @ wc64.T + bc64).argmax(1) == y).mean())

    idx = draw(yp, k, 1000 * k + d)
    xl, yl = fp[idx], yp[idx]
    row = {"k": k, "draw": d, "ci": top1(f["ciw"], f["cib"])}
    ad = adapt_fit(fv, yv, vlab, wc, bc, xl, yl, prior, r0)
    row["adapt"], row["used"] = top1(ad["weight"], ad["bias"]), ad["used"]
    pw, pb = probe(xl.astype(np.float64), yl, len(bc))
    row["probe"] = float(((ft @ pw.T + pb).argmax(1) == yt).mean())
    if k <= 20:  # the oracle's grid costs one fit per candidate
        p = _Problem(fv, yv, vlab, wc, bc, xl, yl, prior)
        best = (-1.0, None)
        for r in sorted(set(RIDGE_GRID) | {r0}):  # adapt's candidates: its strengths x WEIGHT_GRID
            wt, b = fit_ridge(fv, yv, r, prior)
            for w in WEIGHT_GRID:
                dw, db = delta(p, r, w)
                best = max(best, (top1(wt + dw, b + db), (r, w)), key=lambda t: t[0])
        row["oracle5"], row["oracle5_at"] = best[0], list(best[1])
    zl = (xl @ f["ciw"].T.astype(np.float64) + f["cib"]) @ wc64.T + bc64
    zt = (ft @ f["ciw"].T.astype(np.float64) + f["cib"]) @ wc64.T + bc64
    a, c = logit_affine(zl, yl)
    row["logit_affine"] = float(((zt @ a.T + c).argmax(1) == yt).mean())
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--train", required=True, type=Path)
    ap.add_argument("--test", required=True, type=Path)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 5, 10])
    ap.add_argument("--large-k", type=int, nargs="*", default=[20, 50, 100], help="one draw each")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--int8", action="store_true")
    ap.add_argument("--features", type=Path, help="an .npz feature cache (bench/adapt_accuracy.py's)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    f = features(a.bundle, a.int8, a.train, a.test, a.features)
    rows = [rows_for(f, k, d) for k in a.k for d in range(a.draws)] + [rows_for(f, k, 0) for k in a.large_k]
    cols = ("ci", "adapt", "oracle5", "probe", "logit_affine")
    print("| k | draws | " + " | ".join(cols) + " |\n" + "|---" * (len(cols) + 2) + "|")
    for k in dict.fromkeys(r["k"] for r in rows):
        rs = [r for r in rows if r["k"] == k]
        cells = [f"{100 * np.mean([r[c] for r in rs]):.1f}" if all(c in r for r in rs) else "" for c in cols]
        print(f"| {k} | {len(rs)} | " + " | ".join(cells) + " |")
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "command": " ".join(sys.argv)}, indent=1))


if __name__ == "__main__":
    main()
