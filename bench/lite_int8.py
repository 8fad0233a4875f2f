"""EfficientNet-Lite0/1/2 as edge graphs: ONNX fp32 vs int8 on this CPU, side by side in one run.

For each model, at its timm input size (224 / 240 / 260) and at a small size (--small):

* ``fp32``: the graph ``export_backbone`` writes (what ``pack`` ships);
* ``int8``: ``quantize_int8`` of it (what ``pack --int8`` ships: onnxruntime's static quantisation,
  QDQ, int8 weights per channel, uint8 activations calibrated -> QLinearConv), calibrated on
  ``calibration_count(size)`` training images (pack's cap; pack calibrates on synthetic views,
  which a benchmark on real digits does not have) unless --calib says otherwise;
* ``dyn`` (--dynamic only): what ``pack --int8`` shipped before: onnxruntime's dynamic quantisation,
  int8 weights per tensor, activations quantised at run time -> ConvInteger (slow: the full-size
  cells then take minutes).

Measured, all variants of one cell interleaved (A B C, C B A, ...) so load drifts hit all alike:
batch-1 latency p50 (each run a different embedded:mnist/test image; the same images give the
feature cosine int8 vs fp32), batch-32 throughput (small size only: dynamic int8 at the full sizes
takes ~20-50 s per batch of 32 here), graph sizes.

Accuracy (small size only): a ridge classifier (edgedd.device.ridge.fit_ridge on one-hot
labels, the device's own closed form) fitted on **fp32** features of --train-images embedded:mnist
training images (evenly spaced), then applied to fp32 / int8 (/ dyn) features of --test-images
embedded:mnist/test images (evenly spaced): top-1 of each, and how many test images change their
answer. That is what an int8 graph does to a head fitted on fp32 features (the packed projector).
"refit": the ridge fitted again on that int8 variant's own training features: what information
the quantised features still carry. (The device's projector fit no longer uses int8 features:
bench/int8_device_fit.py.)

    python bench/lite_int8.py [--models lite0 lite1 lite2] [--small 96] [--threads 1] [--dynamic] [--json]

Writes bench/results/lite_int8.json (--out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from edgedd.backbones import zoo
from edgedd.backbones.loader import load_backbone
from edgedd.core.images import open_dataset
from edgedd.device.ridge import fit_ridge as fit_projector_ridge
from edgedd.export.onnx_graphs import calibration_count, export_backbone, quantize_int8
from edgedd.host.augment import center_crop, normalize
from edgedd.host.data import canvas_loader

VARIANTS = ("fp32", "int8", "dyn")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def evenly(n_total: int, n: int) -> np.ndarray:
    return np.linspace(0, n_total - 1, min(n, n_total)).round().astype(int)


def model_inputs(source, idx: np.ndarray, pp) -> np.ndarray:
    """edgedd's host preprocessing (canvas at resize_size, centre crop, normalise) as ORT input."""
    sub = dataclasses.replace(source, labels=source.labels[idx], pixels=source.pixels[idx])
    out = [
        normalize(center_crop(images.float() / 255, pp.input_size), pp.mean, pp.std).numpy()
        for images, _, _ in canvas_loader(sub, pp.resize_size, pp.interpolation, 256, 0)
    ]
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def session(data: bytes, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def features(sess: ort.InferenceSession, x: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([sess.run(None, {"images": x[s : s + batch]})[0] for s in range(0, len(x), batch)])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def dynamic_int8(fp32: bytes) -> bytes:
    """What ``pack --int8`` shipped before static quantisation (the "before" of bench/RESULTS.md):
    onnxruntime's dynamic quantisation, int8 weights per tensor."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "dyn.onnx"
        src.write_bytes(fp32)
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        return dst.read_bytes()


def interleaved(sessions: dict, inputs, runs: int, budget_s: float, min_runs: int = 5) -> tuple[dict, dict]:
    """Time one ``sess.run`` per variant per round, the order reversed every other round; stop after
    ``runs`` rounds or once ``budget_s`` is spent (at least ``min_runs``). ``inputs(r)`` is round r's
    input. Returns per-variant times (s) and outputs."""
    names = list(sessions)
    for name in names:  # warm-up: first runs allocate and pick kernels
        sessions[name].run(None, {"images": inputs(0)})
    times, outs = {n: [] for n in names}, {n: [] for n in names}
    start = time.perf_counter()
    for r in range(runs):
        if r >= min_runs and time.perf_counter() - start > budget_s:
            break
        x = inputs(r)
        for name in names if r % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            y = sessions[name].run(None, {"images": x})[0]
            times[name].append(time.perf_counter() - t)
            outs[name].append(y)
    return times, {n: np.concatenate(o) for n, o in outs.items()}


def probe(
    sess: dict, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, classes: int
) -> dict:
    """Ridge classifier fitted on fp32 features, scored on each variant's test features; and, for
    the int8 variants, refitted on their own training features: what the quantised features still hold."""
    onehot = np.eye(classes, dtype=np.float32)[y_train]
    ridge = {n: fit_projector_ridge(features(s, x_train), onehot) for n, s in sess.items()}
    f = {n: features(s, x_test) for n, s in sess.items()}

    def pred(n, fit):
        return (f[n] @ ridge[fit][0].T + ridge[fit][1]).argmax(1)

    p32 = pred("fp32", "fp32")
    out = {"fp32_top1": float((p32 == y_test).mean())}
    for n in sess:
        if n != "fp32":
            c = cosine(f["fp32"], f[n])
            out[n] = {
                "top1": float((pred(n, "fp32") == y_test).mean()),
                "changed_answers": int((pred(n, "fp32") != p32).sum()),
                "top1_refit": float((pred(n, n) == y_test).mean()),
                "cosine_mean": float(c.mean()),
                "cosine_min": float(c.min()),
            }
    return out


def cell(name: str, size: int, a, data: dict, small: bool) -> dict:
    t0 = time.perf_counter()
    model, info = load_backbone(name, input_size=size)
    pp = info.preprocess
    graphs = {"fp32": export_backbone(model, size, {"model": name})}
    n_calib = a.calib or calibration_count(size)
    # the full training subset only where the probe needs it; elsewhere just the calibration images
    # (1,000 inputs at 260 px would be 0.8 GB)
    train_idx = data["train_idx"] if small else data["train_idx"][evenly(len(data["train_idx"]), n_calib)]
    x_train = model_inputs(data["train"], train_idx, pp)
    t = time.perf_counter()
    graphs["int8"] = quantize_int8(graphs["fp32"], x_train[evenly(len(x_train), n_calib)])
    quantize_s = time.perf_counter() - t
    if a.dynamic:
        graphs["dyn"] = dynamic_int8(graphs["fp32"])
    sess = {n: session(g, a.threads) for n, g in graphs.items()}
    x_test = model_inputs(data["test"], data["test_idx"] if small else data["test_idx"][: a.runs], pp)
    prep_s = time.perf_counter() - t0

    times, outs = interleaved(sess, lambda r: x_test[r % len(x_test)][None], a.runs, a.cell_budget_s)
    r = {
        "model": name,
        "input_size": size,
        "prep_s": prep_s,
        "calib_images": min(n_calib, len(x_train)),
        "quantize_s": quantize_s,
        "mb": {n: len(g) / 1e6 for n, g in graphs.items()},
        "batch1": {n: {"runs": len(t), "p50_ms": 1e3 * statistics.median(t)} for n, t in times.items()},
    }
    for n in graphs:
        if n != "fp32":
            c = cosine(outs["fp32"], outs[n])
            r["batch1"][n].update(
                speedup=r["batch1"]["fp32"]["p50_ms"] / r["batch1"][n]["p50_ms"],
                cosine_mean=float(c.mean()),
                cosine_min=float(c.min()),
            )
    if small:
        xb = x_test[: a.batch]
        times, _ = interleaved(sess, lambda r: xb, a.repeats, float("inf"), min_runs=a.repeats)
        r["batch32"] = {n: {"runs": len(t), "images_per_s": a.batch / statistics.median(t)} for n, t in times.items()}
        for n in graphs:
            r["batch32"][n]["speedup"] = r["batch32"][n]["images_per_s"] / r["batch32"]["fp32"]["images_per_s"]
        r["probe"] = probe(
            sess,
            x_train,
            data["train"].labels[data["train_idx"]],
            x_test,
            data["test"].labels[data["test_idx"]],
            data["train"].num_classes,
        )
    r["seconds"] = time.perf_counter() - t0
    return r


def table(rows: list[dict]) -> str:
    q = [n for n in VARIANTS[1:] if n in rows[0]["mb"]]
    head = (
        "model   px  MB fp32/"
        + "/".join(q)
        + " | b1 p50 ms fp32 "
        + " ".join(f"{n} (x)" for n in q)
        + " | cos "
        + "/".join(q)
        + " | b32 img/s fp32 "
        + " ".join(f"{n} (x)" for n in q)
        + " | probe top-1 fp32 "
        + " ".join(q)
    )
    lines = [head]
    for r in rows:
        b1, b32, p = r["batch1"], r.get("batch32"), r.get("probe")
        s = (
            f"{r['model'].split('-')[-1]:<6} {r['input_size']:>4}  "
            + "/".join(f"{r['mb'][n]:.1f}" for n in ("fp32", *q))
            + f" | {b1['fp32']['p50_ms']:7.1f} "
            + " ".join(f"{b1[n]['p50_ms']:7.1f} ({b1[n]['speedup']:.2f})" for n in q)
            + f" [n={b1['fp32']['runs']}] | "
            + "/".join(f"{b1[n]['cosine_mean']:.3f}" for n in q)
        )
        s += (
            f" | {b32['fp32']['images_per_s']:6.1f} "
            + " ".join(f"{b32[n]['images_per_s']:6.1f} ({b32[n]['speedup']:.2f})" for n in q)
            if b32
            else " | -"
        )
        s += (
            f" | {100 * p['fp32_top1']:.1f} "
            + " ".join(
                f"{100 * p[n]['top1']:.1f} ({p[n]['changed_answers']} changed, refit {100 * p[n]['top1_refit']:.1f})"
                for n in q
            )
            if p
            else " | -"
        )
        lines.append(s)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["lite0", "lite1", "lite2"])
    ap.add_argument(
        "--small", type=int, default=96, help="the small input size (also where accuracy and batch-32 are measured)"
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="onnxruntime intra-op threads (and torch's; OMP_NUM_THREADS)"
    )
    ap.add_argument("--runs", type=int, default=30, help="batch-1 rounds per cell (fewer if --cell-budget-s runs out)")
    ap.add_argument(
        "--cell-budget-s", type=float, default=12.0, help="stop batch-1 rounds after this long (at least 5 rounds)"
    )
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="batch-32 rounds (small size only)")
    ap.add_argument("--train-images", type=int, default=1000)
    ap.add_argument("--test-images", type=int, default=500)
    ap.add_argument(
        "--calib", type=int, default=None, help="int8 calibration images [default: pack's cap, calibration_count(size)]"
    )
    ap.add_argument(
        "--dynamic", action="store_true", help="also measure the dynamic int8 pack --int8 shipped before (slow)"
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "lite_int8.json"))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # for anything that reads it later (the quantizer's numpy)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    train, test = open_dataset("embedded:mnist"), open_dataset("embedded:mnist/test")
    data = {
        "train": train,
        "test": test,
        "train_idx": evenly(len(train), a.train_images),
        "test_idx": evenly(len(test), a.test_images),
    }
    rows = []
    for m in a.models:
        name = f"edgedd/efficientnet-{m}"
        for size, small in ((a.small, True), (zoo.preprocess(name)["input_size"], False)):
            rows.append(cell(name, size, a, data, small))
            print(f"  {name} @ {size}px done in {rows[-1]['seconds']:.0f} s", file=sys.stderr, flush=True)
    out = {
        "command": "python bench/lite_int8.py " + " ".join(sys.argv[1:]),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs",
        "threads": {
            "onnxruntime_intra_op": a.threads,
            "inter_op": 1,
            "torch": torch.get_num_threads(),
            "OMP_NUM_THREADS": a.threads,
        },
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "train_images": len(data["train_idx"]),
        "test_images": len(data["test_idx"]),
        "calib_images": a.calib or "calibration_count(size)",
        "rows": rows,
        "total_s": time.perf_counter() - t0,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    if a.json:
        print(json.dumps(out, indent=2))
        return
    print(
        f"{out['machine']}; onnxruntime {out['onnxruntime']}, intra-op threads {a.threads}, inter-op 1; "
        f"probe: ridge on fp32 features of {out['train_images']} train images, scored on {out['test_images']} test "
        "images"
    )
    print("(x) = speed-up over fp32 (> 1 is faster); cos = mean feature cosine vs fp32 on the batch-1 images")
    print(table(rows))
    print(f"total {out['total_s']:.0f} s; JSON: {a.out}")


if __name__ == "__main__":
    main()
