"""The int8 device fit: the projector fitted on the int8 graph's view features vs on the fp32 graph's,
side by side on the same bundles, scored on real test digits.

deploy-check --int8 fits the projector P (closed-form ridge, cross-validated strength, the bundle's
prior; edgedd.device.ridge) on the N*K stored synthetic views. Which backbone's features of those
views should it fit on?

* ``int8 views``: the int8 graph's own (what deploy-check --int8 did before this bench);
* ``fp32 views``: the fp32 graph's, run once on the device (what it does now,
  edgedd.device.finetune.fit_features); P is then used with the int8 graph.

Per bundle, top-1 on the embedded:mnist/test digits (the device's preprocessing, Bundle.inputs) of:
fp32 graph + P(fp32 views) (what deploy-check without --int8 gets), int8 graph + P(int8 views),
int8 graph + P(fp32 views); and the mean feature cosine int8 vs fp32 on the views and on the test
digits: how faithful int8 is on each.

    python bench/int8_device_fit.py BUNDLE [BUNDLE ...] [--test-images 1000] [--json OUT]

Every bundle must hold an int8 backbone (edgedd pack --int8). Needs no torch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from edgedd.core.images import open_dataset
from edgedd.device.bundle import open_bundle
from edgedd.device.finetune import fit_on_features, view_inputs
from edgedd.device.infer import backbone_features
from edgedd.device.ridge import recorded_prior


def fit(b, feats: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """deploy-check's fit (edgedd.device.finetune.fit_on_features) on the given view features."""
    ft = fit_on_features(b, feats, y)
    return ft["weight"], ft["bias"], ft["ridge"]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)).mean())


def measure(path: Path, test, idx: np.ndarray) -> dict:
    b32, b8 = open_bundle(path), open_bundle(path, int8=True)
    x_in, y = view_inputs(b32)
    v32, v8 = backbone_features(b32, x_in), backbone_features(b8, x_in)
    xt = b32.inputs(list(test.pixels[idx]))
    t32, t8 = backbone_features(b32, xt), backbone_features(b8, xt)
    wc, bc = b32.artifact["classifier.weight"], b32.artifact["classifier.bias"]
    labels = test.labels[idx]

    def top1(f, w, bias) -> float:
        return float((((f @ w.T + bias) @ wc.T + bc).argmax(1) == labels).mean())

    w32, c32, r32 = fit(b32, v32, y)
    w8, c8, r8 = fit(b8, v8, y)
    return {
        "bundle": str(path),
        "host": b32.meta["distill"]["backbone"]["name"],
        "edge": b32.meta["edge"]["backbone"]["name"],
        "edge_input_size": b32.edge_preprocess["input_size"],
        "synthetic_images": int(len(b32.artifact["synthetic.labels"])),
        "views": int(len(y)),
        "prior": recorded_prior(b32.meta),
        "ridge_fp32_views": r32,
        "ridge_int8_views": r8,
        "fp32_graph_fp32_views": top1(t32, w32, c32),
        "int8_graph_int8_views": top1(t8, w8, c8),
        "int8_graph_fp32_views": top1(t8, w32, c32),
        "cosine_views": cosine(v8, v32),
        "cosine_test": cosine(t8, t32),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--test-images", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = ap.parse_args()
    t0 = time.perf_counter()
    test = open_dataset("embedded:mnist/test")
    idx = np.linspace(0, len(test) - 1, min(a.test_images, len(test))).round().astype(np.int64)
    rows = []
    for p in a.bundles:
        rows.append(measure(p, test, idx))
        print(f"  {p} done", file=sys.stderr, flush=True)
    print(
        f"{platform.machine()}, {os.cpu_count()} CPUs; top-1 on {len(idx)} embedded:mnist/test digits; P fitted by "
        "deploy-check's rule"
    )
    print(
        "| bundle | host A -> edge B | IPC | fp32 graph, P on fp32 views | int8 graph, P on int8 views (before) | "
        "int8 graph, P on fp32 views (now) | now - before | cosine int8/fp32 views / test |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ipc = r["synthetic_images"] // 10  # the embedded digits have 10 classes
        print(
            f"| {Path(r['bundle']).name} | {r['host'].split('/')[-1]} -> "
            f"{r['edge'].split('/')[-1]}@{r['edge_input_size']} | {ipc} | "
            f"{100 * r['fp32_graph_fp32_views']:.1f} | {100 * r['int8_graph_int8_views']:.1f} | "
            f"{100 * r['int8_graph_fp32_views']:.1f} | "
            f"{100 * (r['int8_graph_fp32_views'] - r['int8_graph_int8_views']):+.1f} | {r['cosine_views']:.3f} / "
            f"{r['cosine_test']:.3f} |"
        )
    print(f"total {time.perf_counter() - t0:.0f} s")
    if a.json:
        a.json.write_text(
            json.dumps({"command": "python bench/int8_device_fit.py " + " ".join(sys.argv[1:]), "rows": rows}, indent=2)
            + "\n"
        )


if __name__ == "__main__":
    main()
