"""Closed-form (device) vs torch-trained (host) projector, and int8 recovery, on held-out data.

Distills the embedded MNIST train split, packs it (fp32 and --int8), writes the embedded test
split to an ImageFolder, and runs deploy-check --data on it. deploy-check reports, on the same
views and the same test images, top-1 with the packed torch projector and with the projector the
device fits in closed form; with --int8, "packed" is before the on-device fit and the other
figure after it (the device fit on the fp32 graph's view features since the int8 device-fit
change, bench/int8_device_fit.py; the RESULTS.md table predates it and fitted on int8 features).

    python bench/projector_accuracy.py [--backbone test_vit --crop-res 32 --ipc 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from edgedd.core.config import DistillConfig, StageIConfig
from edgedd.core.images import write_image_folder
from edgedd.device.checks import deploy_check
from edgedd.distillation.pipeline import RunOptions, distill
from edgedd.export.pack import PackConfig, pack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="test_vit")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--edge-backbone", default=None)
    ap.add_argument("--edge-weights", default="random")
    ap.add_argument("--crop-res", type=int, default=32)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    os.environ.setdefault("EDGEDD_PROGRESS", "0")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = tmp / "run"
        s = distill(
            "embedded:mnist",
            a.backbone,
            run,
            weights=a.weights,
            config=DistillConfig(ipc=a.ipc, iterations=a.iterations),
            stage1_config=StageIConfig(),
            options=RunOptions(progress=False),
            crop_res=a.crop_res,
            syn_res=a.crop_res,
        )
        test = write_image_folder("embedded:mnist/test", tmp / "test")
        out = {
            "backbone": a.backbone,
            "edge_backbone": a.edge_backbone or a.backbone,
            "ipc": a.ipc,
            "iterations": a.iterations,
            "views": a.views,
            "golden_train_top1": s["golden_train_top1"],
        }
        edge = dict(
            edge_backbone=a.edge_backbone,
            edge_weights=a.edge_weights if a.edge_backbone else None,
            edge_crop_res=a.crop_res if a.edge_backbone else None,
        )
        pack(run, tmp / "fp32", **edge, config=PackConfig(views=a.views))
        r = deploy_check(tmp / "fp32", data=test)
        out["fp32"] = {
            k: r[k]
            for k in (
                "ok",
                "synthetic_top1",
                "synthetic_top1_packed_projector",
                "data_top1",
                "data_top1_packed_projector",
            )
        }
        pack(run, tmp / "int8", **edge, config=PackConfig(views=a.views, int8=True, int8_max_drop=1.0))
        r = deploy_check(tmp / "int8", data=test, int8=True)
        out["int8"] = {
            k: r[k]
            for k in (
                "ok",
                "synthetic_top1",
                "synthetic_top1_packed_projector",
                "data_top1",
                "data_top1_packed_projector",
            )
        }
    if a.json:
        print(json.dumps(out, indent=2))
        return
    f, q = out["fp32"], out["int8"]
    print(
        f"{out['backbone']} -> {out['edge_backbone']}, IPC {a.ipc}, K={a.views}; test top-1 on embedded:mnist/test "
        "(1000 images)"
    )
    print(
        f"  fp32 backbone: torch projector {f['data_top1_packed_projector']:.1%}, closed-form device projector "
        f"{f['data_top1']:.1%} "
        f"(diff {100 * (f['data_top1'] - f['data_top1_packed_projector']):+.1f} pt)"
    )
    print(
        f"  int8 backbone: packed projector {q['data_top1_packed_projector']:.1%}, after on-device fit "
        f"{q['data_top1']:.1%} "
        f"(diff {100 * (q['data_top1'] - q['data_top1_packed_projector']):+.1f} pt)"
    )


if __name__ == "__main__":
    main()
