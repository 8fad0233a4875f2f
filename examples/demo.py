"""The main job on the embedded default, end to end, offline, on a CPU in minutes:

    distill (sub-centre SFM, edgedd's default, from a coreset of real digits through the ImageNet
    EfficientNet-Lite1 at 64 px, with the edge's network as the projector-aware surrogate) ->
    evaluate on the edge's network against the real-image baselines -> pack for the edge, the
    smaller EfficientNet-Lite0, int8 if it passes pack's gate -> deploy-check (fp32 and int8) ->
    predict a few test images

The host is not the edge's network: a stronger host and a smaller device, the case Classifier
Inheritance exists for (the device fits a projector Lite0 -> Lite1 on the synthetic views and
inherits Lite1's golden classifier). The pack knows the device's network, so Stage II also
optimises the set for the projector the device will fit (``--surrogate``,
edgedd.distillation.projector_aware). ``--edge same`` runs the host's own network on the device
instead (the projector then starts from the identity: edgedd.device.ridge eq. 4), ``--host
edgedd/host-vit`` the self-supervised toy ViT.

It prints one results table (also written to runs/demo/RESULTS.md) with the preview of the
synthetic set, and writes one self-contained HTML page about it all (runs/demo/report.html,
edgedd.evaluation.report). Run it with `make demo` (or `python examples/demo.py --out runs/demo`).
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
from edgedd.distillation.rundir import INITIAL, PREVIEWS, SYNTHETIC
from edgedd.evaluation.evaluate import EvalConfig, evaluate_run
from edgedd.evaluation.report import write_report
from edgedd.export.pack import PackConfig, pack

# evaluate's classifier-inheritance mode fits the projector on its own views (random-resized crops), not on the
# views pack stores for the device (the eval crop and crops of at least half the image): its figure is lower
VIEWS_NOTE = " (evaluate's random-resized-crop views, not pack's)"


def starting_set_run(run: Path, dest: Path) -> Path:
    """A copy of ``run`` whose synthetic set is its starting images (the real digits Stage II started from,
    initial.safetensors): packed like the run, it measures what the real images the set replaces give the
    device, under the same pack and deploy-check."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(".edgedd.lock", PREVIEWS))
    shutil.copyfile(dest / INITIAL, dest / SYNTHETIC)
    return dest


def ridge_note(ref: dict) -> str:
    """The device fit's strength and where it came from (pack's reference, format 1.6)."""
    if ref.get("device_ridge") is not None:
        return (
            f"{ref['device_ridge']:g} (pack's choice on {ref['device_ridge_images']} held-out real images; the "
            f"synthetic views' cross-validation: {ref['projector_ridge_views']:g})"
        )
    return f"{ref['projector_ridge']:g} (cross-validated on the synthetic views)"


def pack_int8_or_fp32(run: Path, bundle: Path, edge: str, edge_crop_res: int | None, int8: bool = True):
    """Pack ``run`` for the edge with the int8 build if it passes pack's gate (top-1 on the held-out real
    images within 5 points of fp32), else fp32 only; returns pack's result and whether int8 is in it."""
    if int8:
        try:
            p = pack(
                run,
                bundle,
                edge_backbone=edge,
                edge_crop_res=edge_crop_res,
                config=PackConfig(int8=True),
                overwrite=True,
            )
            return p, "int8_synthetic_top1_packed_projector" in p["reference"]
        except EdgeddError as e:
            print(f"      int8 refused ({e.problem}); packing fp32 only", flush=True)
    p = pack(run, bundle, edge_backbone=edge, edge_crop_res=edge_crop_res, config=PackConfig(), overwrite=True)
    return p, False


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
        default=200,
        help="Stage II steps (200: about 10 minutes on 2 CPU cores with the Lite1 host, the Lite0 surrogate and "
        "IPC 10; the device reads the same at 100 within the seeds' spread, 200 make the loss's fall visible)",
    )
    ap.add_argument("--method", default=DistillConfig.method, help="matching loss [default: edgedd's default]")
    ap.add_argument(
        "--protocol", default=EvalConfig.protocol, choices=("converged", "reference"), help="evaluation protocol"
    )
    ap.add_argument("--seeds", type=int, default=2, help="evaluation seeds (2 keep the demo to minutes on a CPU)")
    ap.add_argument(
        "--golden-views",
        type=int,
        default=1,
        help="augmented views per image for the golden classifier (Stage I's default is 4; 1 fits the budget)",
    )
    ap.add_argument(
        "--host",
        default="edgedd/efficientnet-lite1",
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
        "--edge",
        default="edgedd/efficientnet-lite0",
        help="edge backbone B; 'same': the host's own network (A = B)",
    )
    ap.add_argument(
        "--edge-crop-res",
        type=int,
        default=None,
        help="B's input size [default: 64 for an EfficientNet-Lite, else B's own]",
    )
    ap.add_argument(
        "--surrogate-weight",
        type=float,
        default=10.0,
        help="weight of the projector-aware term, with B as the surrogate (B != A only; 0: off)",
    )
    a = ap.parse_args()
    crop = a.host_crop_res or (64 if "efficientnet-lite" in a.host else None)
    a.edge = a.host if a.edge == "same" else a.edge
    a.edge_crop_res = a.edge_crop_res or (crop if a.edge == a.host or "efficientnet-lite" in a.edge else None)
    cross = a.edge != a.host
    # the pack knows B: Stage II also fits the set to the projector B will fit (edgedd.distillation.projector_aware)
    surrogates = (f"{a.edge}@{a.edge_crop_res}" if a.edge_crop_res else a.edge,) if cross and a.surrogate_weight else ()
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
        config=DistillConfig(
            method=a.method,
            ipc=a.ipc,
            iterations=a.iterations,
            surrogates=surrogates,
            surrogate_weight=a.surrogate_weight if surrogates else DistillConfig.surrogate_weight,
        ),
        stage1_config=StageIConfig(golden_views=a.golden_views),
        options=RunOptions(progress=progress),
        overwrite=True,
        crop_res=crop,
    )
    phases["distill"] = time.perf_counter() - t0

    print(f"[2/5] evaluate on embedded:mnist/test through {a.edge} against the baselines", flush=True)
    ev = evaluate_run(
        run,
        "embedded:mnist/test",
        modes=("normal", "ci"),
        eval_backbone=a.edge if cross else None,
        eval_crop_res=a.edge_crop_res if cross else None,
        config=EvalConfig(protocol=a.protocol, seeds=a.seeds),
        baselines=True,
        progress=progress,
    )

    phases["evaluate"] = time.perf_counter() - t0 - sum(phases.values())
    print(f"[3/5] pack for {a.edge}", flush=True)
    bundle = out / "bundle"
    p, int8 = pack_int8_or_fp32(run, bundle, a.edge, a.edge_crop_res)
    work = Path(tempfile.mkdtemp(prefix=".demo-", dir=out))  # the test digits and the starting set's bundle
    try:
        start_bundle, start_int8 = work / "start_bundle", False
        if cross:  # the real images the set replaces, packed the same way: does the set earn its place on the device?
            print("      and the set's starting images (real digits), packed the same way", flush=True)
            _, start_int8 = pack_int8_or_fp32(
                starting_set_run(run, work / "start_run"), start_bundle, a.edge, a.edge_crop_res, int8
            )
        phases["pack"] = time.perf_counter() - t0 - sum(phases.values())

        print("[4/5] deploy-check on the test split (no torch needed on a device)", flush=True)
        test = write_image_folder("embedded:mnist/test", work / "test")
        starts = [deploy_check(start_bundle, data=test)] if cross else []
        if start_int8:
            starts.append(deploy_check(start_bundle, data=test, int8=True))
        dc = deploy_check(bundle, data=test)
        dc8 = (
            deploy_check(bundle, data=test, int8=True) if int8 else None
        )  # last: predict --int8 uses its fitted projector
        print("[5/5] predict a few test images", flush=True)
        picks = [sorted((test / c).iterdir())[0] for c in sorted(os.listdir(test))[:5]]
        preds = predict(bundle, [str(x) for x in picks], topk=1, int8=int8)
        shutil.copy(picks[0], out / "example_input.png")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    phases["deploy-check and predict"] = time.perf_counter() - t0 - sum(phases.values())
    report = write_report(run, eval=ev, deploy_check=dc, bundle=bundle, out=out / "report.html")["report"]
    print(f"report: {report}", flush=True)

    m, b = ev["modes"], ev["baselines"]
    pct = lambda v: f"{100 * v['top1_mean']:.1f} ± {100 * v['top1_std']:.1f}"  # noqa: E731
    loss = lambda v: (
        f"{sum(v['train_loss_final']) / len(v['train_loss_final']):.3g}" + (" (stalled)" if v["stalled"] else "")
    )  # noqa: E731
    start = ev.get("starting_set", {})
    rows = [
        (
            "full-data linear probe (ceiling: the golden recipe on B, 3,600 of the 4,000 real images; 400 choose its "
            "settings)",
            a.edge,
            pct(b["full"]),
            loss(b["full"]),
        ),
        (f"random real images, IPC {a.ipc}, linear probe", a.edge, pct(b["random"]), loss(b["random"])),
        (
            f"class centroids (nearest real), IPC {a.ipc}, linear probe",
            a.edge,
            pct(b["centroids"]),
            loss(b["centroids"]),
        ),
    ]
    if "normal" in start:
        rows.append(
            (
                f"the set's starting images (real), IPC {a.ipc}, linear probe",
                a.edge,
                pct(start["normal"]),
                loss(start["normal"]),
            )
        )
    rows.append((f"{a.method} synthetic, IPC {a.ipc}, linear probe", a.edge, pct(m["normal"]), loss(m["normal"])))
    if "ci" in start:
        rows.append(
            (
                f"the set's starting images (real), IPC {a.ipc}, classifier inheritance from {a.host}" + VIEWS_NOTE,
                a.edge,
                pct(start["ci"]),
                loss(start["ci"]),
            )
        )
    rows += [
        (
            f"{a.method} synthetic, IPC {a.ipc}, classifier inheritance from {a.host}" + VIEWS_NOTE,
            a.edge,
            pct(m["ci"]),
            loss(m["ci"]),
        ),
        (
            "pack's expectation for the edge (host torch, held-out real images)",
            a.edge,
            f"{100 * p['reference']['expected_edge_top1']:.1f}"
            if p["reference"].get("expected_edge_top1") is not None
            else "n/a",
            "",
        ),
    ]
    if starts:
        rows.append(
            (
                "deploy-check of the set's starting images (real digits) packed the same way: fp32"
                + (" / int8" if len(starts) > 1 else ""),
                a.edge,
                " / ".join(f"{100 * x['data_top1']:.1f}" for x in starts),
                "",
            )
        )
    rows.append(
        ("deploy-check on the edge (onnxruntime, device-fitted projector)", a.edge, f"{100 * dc['data_top1']:.1f}", "")
    )
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
    cr = s["copy_ratio"]["spaces"]["pixels"]
    notes = [
        f"deploy-check: {'PASSED' if dc['ok'] else 'FAILED'}; batch-1 latency p50 {dc['latency_ms_p50']:.2f} ms, "
        f"p95 {dc['latency_ms_p95']:.2f} ms; peak RSS {dc['peak_rss_mb']:.0f} MB"
        + (
            f"; int8: {'PASSED' if dc8['ok'] else 'FAILED'}, p50 {dc8['latency_ms_p50']:.2f} ms"
            if dc8
            else "; int8 refused by pack's gate"
        )
        + f"; projector ridge {ridge_note(p['reference'])}; predict: {right}/{len(preds)} of the sampled test images "
        "right.",
        f"evaluation: {a.protocol} protocol, {a.seeds} seeds; distillation: {s['method']}, {a.iterations} iterations; "
        f"flow cosine {s['flow_cosine']:.3f}; synthetic class centres {s['landing']['centre_offset_mean']:.2f} "
        "inter-centre distances "
        f"from the real ones; golden classifier {s['golden'].get('recipe')} recipe, held-out "
        f"{100 * (s['golden'].get('heldout_top1') or 0):.1f}%; "
        f"wall time {time.perf_counter() - t0:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items())
        + f"); host {a.host} at {crop or 'its own'} px, edge {a.edge} at {a.edge_crop_res or 'its own'} px"
        + (f"; projector-aware surrogate {surrogates[0]}, weight {a.surrogate_weight:g}" if surrogates else "")
        + f"; copy ratio (pixels) median {cr['median']:.2f}, {cr['below']} of {cr['images']} images under "
        f"{s['copy_ratio']['near_copy_below']:g} (near-copies of training images).",
    ]
    text = "\n".join(table + [""] + notes)
    (out / "RESULTS.md").write_text("# edgedd demo results\n\n" + text + "\n\n![synthetic set](run/preview.png)\n")
    (out / "results.json").write_text(
        json.dumps(
            {
                "distill": s,
                "evaluate": ev,
                "pack": p,
                "deploy_check": dc,
                "deploy_check_int8": dc8,
                "deploy_check_starting_set": starts,
                "predict": preds,
            },
            indent=2,
            default=str,
        )
    )
    print("\n" + text)
    print(f"\npreview of the synthetic set: {run / 'preview.png'}; full results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
