"""The golden classifier against an independent probe, on the same features, in one run.

Stage I's feature pass (centre crop + K flip/RRC views per training image) with a backbone, then:

1. ``converged`` (edgedd's default golden recipe: L2 and inputs chosen on a held-out slice, L-BFGS);
2. ``reference`` (METHOD.md: Adam 5e-4, cosine, 10 epochs on the cached views);
3. scikit-learn's LogisticRegressionCV (L2, C chosen by 5-fold cross-validation over 10 values,
   lbfgs) on standardised centre-crop features: a probe edgedd's code has no part in.

All three are scored on the test split's centre crops, with their training loss (mean CE on the
training centre crops).

    python bench/golden_accuracy.py [--backbone edgedd/host-vit] [--data embedded:mnist] \\
        [--test embedded:mnist/test] [--json]

Needs scikit-learn (pip install -e '.[bench]').
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def main() -> None:
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import log_loss
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from edgedd.backbones.forward import encode
    from edgedd.backbones.loader import load_backbone
    from edgedd.core.config import StageIConfig
    from edgedd.core.images import open_dataset
    from edgedd.distillation.stage1 import extract_features, train_golden
    from edgedd.host.augment import center_crop
    from edgedd.host.data import canvas_loader

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="edgedd/host-vit")
    ap.add_argument("--data", default="embedded:mnist")
    ap.add_argument("--test", default="embedded:mnist/test")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    device = torch.device("cpu")
    model, info = load_backbone(a.backbone, "hub", device=device)
    pp = info.preprocess
    train, test = open_dataset(a.data), open_dataset(a.test)
    cfg = StageIConfig()
    with tempfile.TemporaryDirectory() as tmp:
        _, _, feats, labels, _ = extract_features(
            model, info, train, cfg, device, Path(tmp) / "views.npy", progress=False
        )
        feats = np.asarray(feats).copy()
    zt, yt = [], []
    for images, y, _ in canvas_loader(test, pp.resize_size, pp.interpolation, 256, 0):
        zt.append(encode(model, center_crop(images.float() / 255, pp.input_size), pp).numpy())
        yt.append(y.numpy())
    z_test, y_test = np.concatenate(zt), np.concatenate(yt)
    out = {
        "backbone": a.backbone,
        "data": a.data,
        "test": a.test,
        "train_images": len(labels),
        "test_images": len(y_test),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
    }

    def score(w, b) -> dict:
        logits = z_test @ w.T + b
        train_logits = torch.from_numpy(feats[:, 0] @ w.T + b)
        return {
            "test_top1": float((logits.argmax(1) == y_test).mean()),
            "train_ce_centre_crops": float(torch.nn.functional.cross_entropy(train_logits, torch.from_numpy(labels))),
        }

    for recipe in ("converged", "reference"):
        t = time.perf_counter()
        w, b, rep = train_golden(
            feats, labels, train.num_classes, replace(cfg, golden_recipe=recipe), device, progress=False
        )
        out[recipe] = {
            **score(w.numpy(), b.numpy()),
            "seconds": time.perf_counter() - t,
            **{k: v for k, v in rep.items() if k != "candidates"},
        }
    t = time.perf_counter()
    lr = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=10, cv=5, max_iter=2000))
    lr.fit(feats[:, 0], labels)
    out["sklearn_logreg_cv"] = {
        "test_top1": float((lr.predict(z_test) == y_test).mean()),
        "train_ce_centre_crops": float(log_loss(labels, lr.predict_proba(feats[:, 0]))),
        "C": float(lr[-1].C_[0]),
        "seconds": time.perf_counter() - t,
    }
    out["converged_minus_sklearn_pt"] = 100 * (out["converged"]["test_top1"] - out["sklearn_logreg_cv"]["test_top1"])
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        for k in ("converged", "reference", "sklearn_logreg_cv"):
            print(
                f"{k:<18} test top-1 {100 * out[k]['test_top1']:.1f}%  train CE {out[k]['train_ce_centre_crops']:.4f}  "
                f"({out[k]['seconds']:.1f} s)"
            )
        print(f"converged - sklearn: {out['converged_minus_sklearn_pt']:+.1f} pt")


if __name__ == "__main__":
    main()
