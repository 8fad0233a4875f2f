"""Mobile-ready bundles (docs/MOBILE.md): one bundle through each runtime it carries, on labelled images.

For --runtime onnx, ort and (where ai-edge-litert imports) litert, with the packed projector and
the fp32 backbone (and the int8 one where packed): top-1 on DATA, agreement of the top-1 answers
with the onnx runtime's, and batch-1 latency (p50/p95 over RUNS calls of the whole edge path,
the runtimes interleaved call by call so that a busy machine weighs on each alike). Also
onnxruntime's mobile checker on backbone.onnx and backbone.static.onnx.

    python bench/mobile_bundle.py BUNDLE DATA [--runs 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("data")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--runtimes", default="onnx,ort,litert")
    a = ap.parse_args()

    from edgedd.core.errors import EdgeddError
    from edgedd.device.accuracy import load_labelled_folder
    from edgedd.device.bundle import open_bundle
    from edgedd.device.infer import classify
    from edgedd.device.mobile import readiness

    opened = {}
    for rt in a.runtimes.split(","):
        for int8 in (False, True):
            try:
                opened[(rt, int8)] = open_bundle(a.bundle, int8=int8, runtime=rt)
            except EdgeddError as e:
                print(f"{rt}{' int8' if int8 else ''}: not run ({e.problem})")
    ref = opened[("onnx", False)]
    x, y, _ = load_labelled_folder(ref, a.data)
    out = {"images": len(y), "runtimes": {}}
    answers = {}
    for (rt, int8), b in opened.items():
        pred = classify(b, x).argmax(1)
        answers[(rt, int8)] = pred
        base = answers.get(("onnx", int8), pred)
        out["runtimes"][f"{rt}{'-int8' if int8 else ''}"] = {
            "top1": float((pred == y).mean()),
            "agree_with_onnx": float((pred == base).mean()),
        }
    times = {k: [] for k in opened}
    x1 = x[:1]
    for b in opened.values():  # warm-up
        for _ in range(5):
            classify(b, x1)
    for _ in range(a.runs):
        for k, b in opened.items():
            s = time.perf_counter()
            classify(b, x1)
            times[k].append((time.perf_counter() - s) * 1000)
    for (rt, int8), t in times.items():
        out["runtimes"][f"{rt}{'-int8' if int8 else ''}"].update(
            p50_ms=float(np.percentile(t, 50)), p95_ms=float(np.percentile(t, 95))
        )
    for name in ("backbone.onnx", "backbone.static.onnx"):
        r = readiness(open(f"{a.bundle}/{name}", "rb").read())
        out[f"mobile {name}"] = {
            k: f"{v['supported_nodes']}/{v['nodes']} in {v['partitions']}" for k, v in r.get("targets", {}).items()
        } or r
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
