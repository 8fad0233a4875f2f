"""How well each rule for the projector's ridge picks, against the best r on real test images.

For every bundle: the device's phi_B of its stored views (fp32 graph), the targets phi_A, the golden
classifier; the top-1 on a labelled test folder of the device fit at each r of a grid; and the r each
cross-validation criterion picks (edgedd.device.ridge's grouped folds): the held-out error in feature
space (the rule before) or in the classifier's logit space (eq. 5, the rule now), the held-out
cross-entropy, on a decade grid or a half-decade one; and the strength pack recorded, chosen on
held-out real images (format 1.6; summarised when every bundle has one). Bundles whose top-1 does
not depend on r (B = A with the identity prior) are left out of the summary.

    python bench/ridge_selection.py BUNDLE... --data mnist_test --json bench/results/ridge_selection.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edgedd.device.accuracy import load_labelled_folder
from edgedd.device.bundle import open_bundle
from edgedd.device.finetune import fit_features, view_inputs
from edgedd.device.infer import backbone_features
from edgedd.device.ridge import RIDGE_GRID, _fold_predictions, fit_ridge, image_folds, recorded_prior, recorded_ridge

GRID = RIDGE_GRID  # half a decade apart, as the device's rule (3e-3 and 3e-2 added since format 1.6's rule)
DECADES = [0, 2, 4, 6, 8]  # the indices of GRID on a decade grid
RULES = {  # name: (criterion, grid indices)
    "feature error, decades (before)": ("feature", DECADES),
    "feature error, half decades": ("feature", range(len(GRID))),
    "logit error, decades": ("logit", DECADES),
    "logit error, half decades (now)": ("logit", range(len(GRID))),
    "cross-entropy, half decades": ("ce", range(len(GRID))),
}
# format 1.6: the strength pack chose on the golden classifier's held-out real images through B
# (edgedd.device.ridge.select_ridge_on_images), recorded in the bundle
PACK_RULE = "pack: held-out real images (since 1.6)"


def study(path: str, data: str) -> dict:
    b = open_bundle(path, threads=1)
    x_in, y = view_inputs(b)
    x, y = fit_features(b, x_in).astype(np.float64), y.astype(np.float64)
    n, k = b.artifact["targets.boxes"].shape[:2]
    labels = b.artifact["synthetic.labels"]
    image = np.repeat(np.arange(n), k)
    w = b.artifact["classifier.weight"].astype(np.float64)
    cb = b.artifact["classifier.bias"].astype(np.float64)
    prior = recorded_prior(b.meta)
    xt, yt, _ = load_labelled_folder(b, data)
    ft = backbone_features(b, xt).astype(np.float64)
    test = {}
    for r in GRID:
        p, pb = fit_ridge(x, y, r, prior)
        test[r] = float((((ft @ p.T + pb) @ w.T + cb).argmax(1) == yt).mean())
    yr = y - x if prior == "identity" else y
    fold = image_folds(labels, min(5, int(np.bincount(labels).min())))[image]
    crit = {c: np.zeros(len(GRID)) for c in ("feature", "logit", "ce")}
    for f in np.unique(fold):
        tr, te = fold != f, fold == f
        for i, pred in enumerate(_fold_predictions(x[tr], yr[tr], x[te], GRID)):
            d = pred - yr[te]
            crit["feature"][i] += (d**2).sum()
            crit["logit"][i] += ((d @ w.T) ** 2).sum()
            z = (pred + (x[te] if prior == "identity" else 0)) @ w.T + cb
            z -= z.max(1, keepdims=True)
            crit["ce"][i] -= (z - np.log(np.exp(z).sum(1, keepdims=True)))[np.arange(len(z)), labels[image[te]]].sum()
    picks = {}
    for rule, (c, idx) in RULES.items():
        j = min(idx, key=lambda i: (crit[c][i], -GRID[i]))  # ties: the stronger fit, as select_ridge
        picks[rule] = GRID[j]
    picks[PACK_RULE] = recorded_ridge(b.meta)  # None: packed before format 1.6, or without held-out images
    return {"test_top1": {str(r): a for r, a in test.items()}, "picks": picks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--data", required=True, help="labelled ImageFolder the bundles' classes name")
    ap.add_argument("--json", help="write every bundle's figures here")
    a = ap.parse_args()
    out = {}
    for path in a.bundles:
        try:
            out[str(Path(path).resolve())] = study(path, a.data)
        except Exception as e:  # a bundle of other classes, an old format: say so, go on
            print(f"{path}: skipped ({str(e)[:120]})", file=sys.stderr)
    rows = [(p, d) for p, d in out.items() if max(d["test_top1"].values()) - min(d["test_top1"].values()) >= 0.005]
    if not rows:
        sys.exit("no bundle whose top-1 depends on r")
    rules = list(RULES) + ([PACK_RULE] if all(d["picks"][PACK_RULE] is not None for _, d in rows) else [])
    print(f"{len(rows)} bundles (of {len(out)}) whose top-1 depends on r; top-1 % at each rule's pick:")
    for rule in rules:
        acc = [d["test_top1"][str(d["picks"][rule])] for _, d in rows]
        gap = [max(d["test_top1"].values()) - a for (_, d), a in zip(rows, acc, strict=True)]
        print(f"  {rule:34s} mean {100 * np.mean(acc):5.2f}  worst gap to the best r {100 * max(gap):4.1f}")
    best = np.mean([max(d["test_top1"].values()) for _, d in rows])
    print(f"  {'best r per bundle (oracle)':34s} mean {100 * best:5.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
