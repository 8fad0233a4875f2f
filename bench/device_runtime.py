"""Device-path costs, measured side by side in one run.

1. Projector fit on the device path for N*K views: render the stored views (numpy), edge-backbone
   features (onnxruntime), the ridge's cross-validated choice (edgedd.device.ridge.select_ridge, 10
   classes round-robin over the N images) and the closed-form solve (numpy) -- each timed.
2. Edge-backbone inference throughput, onnxruntime vs torch eager, same inputs, same batch,
   same thread count; the ratio ORT / torch.

    python bench/device_runtime.py [--backbone resnet18 --crop-res 224 --images 100 --views 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import onnxruntime as ort
import torch

from edgedd.backbones.loader import load_backbone
from edgedd.core.config import AugmentConfig
from edgedd.device.render import normalize, render_views
from edgedd.device.ridge import fit_ridge as fit_projector_ridge
from edgedd.device.ridge import select_ridge
from edgedd.export.onnx_graphs import export_backbone
from edgedd.host.augment import sample_views


def _median_time(fn, repeats):
    t = []
    for _ in range(repeats):
        s = time.perf_counter()
        fn()
        t.append(time.perf_counter() - s)
    return statistics.median(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--crop-res", type=int, default=224)
    ap.add_argument("--images", type=int, default=100, help="synthetic images N (e.g. 10 classes x IPC 10)")
    ap.add_argument("--views", type=int, default=8, help="views K per image")
    ap.add_argument("--target-dim", type=int, default=384, help="D_A of the (absent) host backbone")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    threads = torch.get_num_threads()
    model, info = load_backbone(a.backbone, "random", input_size=a.crop_res)
    pp = info.preprocess
    onnx_bytes = export_backbone(model, pp.input_size, {"model": a.backbone})
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])

    # --- 1. the device's projector fit for N*K views
    rng = np.random.default_rng(0)
    n, k = a.images, a.views
    canvases = rng.random((n, 3, pp.resize_size, pp.resize_size), dtype=np.float32)
    g = torch.Generator().manual_seed(0)
    v = sample_views(n * k, AugmentConfig(), g)
    boxes, flips = v.boxes.numpy(), v.flips.numpy()
    targets = rng.standard_normal((n * k, a.target_dim)).astype(np.float32)
    classifier = rng.standard_normal((10, a.target_dim)).astype(np.float32)  # the golden W_c the choice scores in
    t0 = time.perf_counter()
    x = normalize(render_views(np.repeat(canvases, k, axis=0), boxes, flips, pp.input_size), pp.mean, pp.std)
    t1 = time.perf_counter()
    feats = np.concatenate([sess.run(None, {"images": x[i : i + a.batch]})[0] for i in range(0, len(x), a.batch)])
    t2 = time.perf_counter()
    ridge, _ = select_ridge(feats, targets, np.repeat(np.arange(n), k), np.arange(n) % 10, classifier=classifier)
    t_cv = time.perf_counter()
    fit_projector_ridge(feats, targets, ridge)
    t3 = time.perf_counter()

    # --- 2. ORT vs torch eager throughput on the same batch
    xb = x[: a.batch]
    xt = torch.from_numpy(xb)
    with torch.no_grad():
        model(xt)
    sess.run(None, {"images": xb})
    with torch.no_grad():
        t_torch = _median_time(lambda: model(xt), a.repeats)
    t_ort = _median_time(lambda: sess.run(None, {"images": xb}), a.repeats)

    r = {
        "backbone": a.backbone,
        "input_size": pp.input_size,
        "features": info.num_features,
        "images": n,
        "views": k,
        "fit_views": n * k,
        "target_dim": a.target_dim,
        "batch": a.batch,
        "threads": threads,
        "render_s": t1 - t0,
        "backbone_s": t2 - t1,
        "ridge_cv_s": t_cv - t2,
        "ridge_s": t3 - t_cv,
        "projector_fit_total_s": t3 - t0,
        "torch_images_per_s": a.batch / t_torch,
        "ort_images_per_s": a.batch / t_ort,
        "ort_over_torch": t_torch / t_ort,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }
    if a.json:
        print(json.dumps(r, indent=2))
        return
    print(f"edge backbone {a.backbone} @ {pp.input_size}px, D_B={info.num_features}, {threads} threads")
    print(
        f"projector fit, {n * k} views ({n} images x {k}): render {r['render_s']:.2f}s + backbone (ORT) "
        f"{r['backbone_s']:.2f}s "
        f"+ ridge choice (5-fold CV) {r['ridge_cv_s']:.3f}s + ridge solve {r['ridge_s']:.3f}s = "
        f"{r['projector_fit_total_s']:.2f}s; "
        f"CV / backbone = {r['ridge_cv_s'] / r['backbone_s']:.3f}"
    )
    print(
        f"inference, batch {a.batch}: torch {r['torch_images_per_s']:.1f} img/s, onnxruntime "
        f"{r['ort_images_per_s']:.1f} img/s, "
        f"ORT/torch = {r['ort_over_torch']:.2f}x"
    )


if __name__ == "__main__":
    main()
