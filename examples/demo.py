"""The main job on the embedded default, end to end, offline, on a CPU in minutes:

    distill (sub-centre SFM, edgedd's default, from real images through the ImageNet EfficientNet-Lite0
    at 64 px) ->
    evaluate against the baselines -> pack for the edge: the same network, int8 if it passes pack's
    gate (the device fits its projector towards the identity: edgedd.device.ridge eq. 4) ->
    deploy-check (fp32 and int8) -> predict a few test images

Why the host is the edge's own network: across networks, Classifier Inheritance from 10 images
per class is capped well below 85% even with *real* images (examples/projector_ceiling.py).
``--host edgedd/host-vit`` runs the self-supervised toy ViT instead (``--edge`` another B).

and one results table (also written to runs/demo/RESULTS.md) with the preview of the synthetic set,
and one self-contained HTML page about it all (runs/demo/report.html, edgedd.evaluation.report).
Run it with `make demo` (or `python examples/demo.py --out runs/demo`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from edgedd.core.config import DistillConfig, StageIConfig
from edgedd.core.errors import EdgeddError
from edgedd.core.images import write_image_folder
from edgedd.device.checks import deploy_check
from edgedd.device.predict import predict
from edgedd.distillation.pipeline import RunOptions, distill
from edgedd.evaluation.evaluate import EvalConfig, evaluate_run
from edgedd.evaluation.report import write_report
from edgedd.export.pack import PackConfig, pack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument(
        "--ipc",
        type=int,
        default=10,
        help="10: the projector's ridge is cross-validated (IPC 1 cannot hold an image out)",
    )
    ap.add_argument(
        "--iterations",
        type=int,
        default=100,
        help="100: what fits the demo's 10-minute budget on 2 CPU cores with the Lite0 host at IPC 10 (host-vit: 300 "
        "fit)",
    )
    ap.add_argument("--method", default=DistillConfig.method, help="matching loss [default: edgedd's default]")
    ap.add_argument(
        "--protocol", default=EvalConfig.protocol, choices=("converged", "reference"), help="evaluation protocol"
    )
    ap.add_argument(
        "--seeds", type=int, default=2, help="evaluation seeds (2: the 10-minute budget with the Lite0 host)"
    )
    ap.add_argument(
        "--golden-views",
        type=int,
        default=1,
        help="augmented views per image for the golden classifier (Stage I's default is 4; 1 fits the budget)",
    )
    ap.add_argument(
        "--host",
        default="edgedd/efficientnet-lite0",
        help="distillation backbone A (edgedd/host-vit: the shipped self-supervised toy ViT)",
    )
    ap.add_argument(
        "--host-crop-res",
        type=int,
        default=None,
        help="A's input size [default: 64 for an EfficientNet-Lite (its 224 costs ~12x the time on a CPU), else the "
        "backbone's]",
    )
    ap.add_argument(
        "--edge", default=None, help="edge backbone B [default: the host's network, int8 if it passes pack's gate]"
    )
    ap.add_argument("--edge-crop-res", type=int, default=None, help="B's input size [default: the host's]")
    a = ap.parse_args()
    crop = a.host_crop_res or (64 if "efficientnet-lite" in a.host else None)
    a.edge, a.edge_crop_res = a.edge or a.host, a.edge_crop_res or crop
    out = Path(a.out)
    t0 = time.perf_counter()
    progress = os.environ.get("EDGEDD_PROGRESS", "1") != "0"

    phases = {}
    print(f"[1/5] distill embedded:mnist with {a.method} on {a.host}", flush=True)
    run = out / "run"
    s = distill(
        "embedded:mnist",
        a.host,
        run,
        weights="hub",
        config=DistillConfig(method=a.method, ipc=a.ipc, iterations=a.iterations),
        stage1_config=StageIConfig(golden_views=a.golden_views),
        options=RunOptions(progress=progress),
        overwrite=True,
        crop_res=crop,
    )
    phases["distill"] = time.perf_counter() - t0

    print("[2/5] evaluate on embedded:mnist/test against the baselines", flush=True)
    ev = evaluate_run(
        run,
        "embedded:mnist/test",
        modes=("normal", "ci"),
        config=EvalConfig(protocol=a.protocol, seeds=a.seeds),
        baselines=True,
        progress=progress,
    )

    phases["evaluate"] = time.perf_counter() - t0 - sum(phases.values())
    print(f"[3/5] pack for {a.edge}", flush=True)
    bundle = out / "bundle"
    try:  # int8 if it passes pack's gate (top-1 on the held-out real images within 5 points of fp32), else fp32 only
        p = pack(
            run,
            bundle,
            edge_backbone=a.edge,
            edge_crop_res=a.edge_crop_res,
            config=PackConfig(int8=True),
            overwrite=True,
        )
    except EdgeddError as e:
        print(f"      int8 refused ({e.problem}); packing fp32 only", flush=True)
        p = pack(run, bundle, edge_backbone=a.edge, edge_crop_res=a.edge_crop_res, config=PackConfig(), overwrite=True)
    int8 = "int8_synthetic_top1_packed_projector" in p["reference"]
    phases["pack"] = time.perf_counter() - t0 - sum(phases.values())

    print("[4/5] deploy-check on the test split (no torch needed on a device)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        test = write_image_folder("embedded:mnist/test", Path(tmp) / "test")
        dc = deploy_check(bundle, data=test)
        dc8 = (
            deploy_check(bundle, data=test, int8=True) if int8 else None
        )  # last: predict --int8 uses its fitted projector
        print("[5/5] predict a few test images", flush=True)
        picks = [sorted((test / c).iterdir())[0] for c in sorted(os.listdir(test))[:5]]
        preds = predict(bundle, [str(x) for x in picks], topk=1, int8=int8)
        shutil.copy(picks[0], out / "example_input.png")
    phases["deploy-check and predict"] = time.perf_counter() - t0 - sum(phases.values())
    report = write_report(run, eval=ev, deploy_check=dc, bundle=bundle, out=out / "report.html")["report"]
    print(f"report: {report}", flush=True)

    m, b = ev["modes"], ev["baselines"]
    pct = lambda v: f"{100 * v['top1_mean']:.1f} ± {100 * v['top1_std']:.1f}"  # noqa: E731
    loss = lambda v: (
        f"{sum(v['train_loss_final']) / len(v['train_loss_final']):.3g}" + (" (stalled)" if v["stalled"] else "")
    )  # noqa: E731
    rows = [
        (
            "full-data linear probe (ceiling: the golden recipe on B, 3,600 of the 4,000 real images; 400 choose its "
            "settings)",
            a.host,
            pct(b["full"]),
            loss(b["full"]),
        ),
        (f"random real images, IPC {a.ipc}", a.host, pct(b["random"]), loss(b["random"])),
        (f"class centroids (nearest real), IPC {a.ipc}", a.host, pct(b["centroids"]), loss(b["centroids"])),
        (f"{a.method} synthetic, IPC {a.ipc}, normal probe", a.host, pct(m["normal"]), loss(m["normal"])),
        (f"{a.method} synthetic, IPC {a.ipc}, classifier inheritance", a.host, pct(m["ci"]), loss(m["ci"])),
        (
            "pack's expectation for the edge (host torch, held-out real images)",
            a.edge,
            f"{100 * p['reference']['expected_edge_top1']:.1f}"
            if p["reference"].get("expected_edge_top1") is not None
            else "n/a",
            "",
        ),
        ("deploy-check on the edge (onnxruntime, device-fitted projector)", a.edge, f"{100 * dc['data_top1']:.1f}", ""),
    ]
    if dc8:
        if p["reference"].get("int8_expected_edge_top1") is not None:
            rows.append(
                (
                    "pack's expectation for the int8 backbone (onnxruntime, the same held-out images)",
                    a.edge,
                    f"{100 * p['reference']['int8_expected_edge_top1']:.1f}",
                    "",
                )
            )
        rows.append(
            ("deploy-check on the edge, int8 backbone (static QDQ)", a.edge, f"{100 * dc8['data_top1']:.1f}", "")
        )
    table = [
        f"| | backbone | top-1 % on embedded:mnist/test (1,000) | final training loss ({a.protocol} protocol) |",
        "|---|---|---|---|",
    ]
    table += [f"| {r} | `{bb}` | {v} | {lo} |" for r, bb, v, lo in rows]
    right = sum(1 for x in preds if x["top"][0]["label"] == Path(x["image"]).parent.name)
    notes = [
        f"deploy-check: {'PASSED' if dc['ok'] else 'FAILED'}; batch-1 latency p50 {dc['latency_ms_p50']:.2f} ms, "
        f"p95 {dc['latency_ms_p95']:.2f} ms; peak RSS {dc['peak_rss_mb']:.0f} MB"
        + (
            f"; int8: {'PASSED' if dc8['ok'] else 'FAILED'}, p50 {dc8['latency_ms_p50']:.2f} ms"
            if dc8
            else "; int8 refused by pack's gate"
        )
        + f"; projector ridge {p['reference']['projector_ridge']:g} (cross-validated); predict: {right}/{len(preds)} "
        "of the sampled test images right.",
        f"evaluation: {a.protocol} protocol, {a.seeds} seeds; distillation: {s['method']}, {a.iterations} iterations; "
        f"flow cosine {s['flow_cosine']:.3f}; synthetic class centres {s['landing']['centre_offset_mean']:.2f} "
        "inter-centre distances "
        f"from the real ones; golden classifier {s['golden'].get('recipe')} recipe, held-out "
        f"{100 * (s['golden'].get('heldout_top1') or 0):.1f}%; "
        f"wall time {time.perf_counter() - t0:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items())
        + f"); host {a.host} at {crop or 'its own'} px, edge {a.edge} at {a.edge_crop_res or 'its own'} px.",
    ]
    text = "\n".join(table + [""] + notes)
    (out / "RESULTS.md").write_text("# edgedd demo results\n\n" + text + "\n\n![synthetic set](run/preview.png)\n")
    (out / "results.json").write_text(
        json.dumps(
            {"distill": s, "evaluate": ev, "pack": p, "deploy_check": dc, "deploy_check_int8": dc8, "predict": preds},
            indent=2,
            default=str,
        )
    )
    print("\n" + text)
    print(f"\npreview of the synthetic set: {run / 'preview.png'}; full results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
