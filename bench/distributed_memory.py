"""Memory per process for ImageNet-1k on ViT-B/16, estimated from measured per-image figures.

Measured here (each in a fresh process, working memory = peak minus the level before, see
edgedd.host.memory): one SFM view's forward + backward to the pixels, at chunk sizes 1, 2 and 4
(the per-image figure is the slope, so fixed costs drop out), and one Stage I crop's forward
without a graph. Computed: the pyramid state per image (levels + grad + Adam's two moments, at
the backbone's synthetic resolution) and the weights. The table then adds them for ImageNet-1k
(1,000 classes) at IPC 1 and 10 over 1, 8 and 16 processes. It is an estimate: on a GPU the
activations run in bf16 under autocast (roughly half the fp32 figure measured on a CPU) and the
CUDA caching allocator adds fragmentation.

    python bench/distributed_memory.py [--backbone vit_base_patch16_224] [--device cpu] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys


def worker(kind: str, k: int, a) -> dict:
    import torch

    from edgedd.backbones.forward import resolve_device
    from edgedd.backbones.loader import load_backbone
    from edgedd.core.config import AugmentConfig
    from edgedd.host.augment import StepDraws, apply_augment, center_crop, normalize
    from edgedd.host.memory import PhaseMemory

    dev = resolve_device(a.device)
    model, info = load_backbone(a.backbone, "random", device=dev)
    pp = info.preprocess
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.rand(k, 3, pp.resize_size, pp.resize_size, generator=g, device=dev)

    def run():
        if kind == "sfm_view":  # what one SFM view costs: augment, forward, backward to the pixels
            xi = x.clone().requires_grad_(True)
            draws = StepDraws.draw(g, k, AugmentConfig(), pp.input_size)
            z = model(normalize(apply_augment(xi, draws.params(0, k), pp.input_size), pp.mean, pp.std))
            z.float().sum().backward()
        else:  # a Stage I crop: forward only
            with torch.no_grad():
                model(normalize(center_crop(x, pp.input_size), pp.mean, pp.std))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    run()  # warm-up
    mem = PhaseMemory(dev)
    mem.start()
    run()
    m = mem.peak_mb()
    return {
        "kind": kind,
        "k": k,
        "working_mb": m["working_mb"],
        "memory_kind": m["kind"],
        "params": sum(p.numel() for p in model.parameters()),
        "dim": info.num_features,
        "syn_res": pp.resize_size,
        "crop_res": pp.input_size,
    }


def slope(rows):
    """Least-squares MB per image over the measured batch sizes."""
    ks = [r["k"] for r in rows]
    ms = [r["working_mb"] for r in rows]
    mk, mm = sum(ks) / len(ks), sum(ms) / len(ms)
    return sum((k - mk) * (m - mm) for k, m in zip(ks, ms, strict=True)) / sum((k - mk) ** 2 for k in ks)


def estimate(per_view_mb, params, dim, syn_res, classes=1000, chunk=64):
    """Per process: weights + pyramid state of its rows + gathered features + activations of the
    views it forward-passes at once (all of them in one pass, or ``chunk``)."""
    from edgedd.distillation.pyramid import level_resolutions

    floats = 3 * sum(r * r for r in level_resolutions(syn_res))
    state_mb = floats * 4 * 4 / 2**20  # level, its grad, Adam exp_avg and exp_avg_sq (float32)
    weights_mb = params * 4 / 2**20
    rows = []
    for ipc in (1, 10):
        n = classes * ipc
        for world in (1, 8, 16):
            mine = -(-n // world)
            pyramid = mine * state_mb
            gathered = 2 * world * mine * dim * 4 / 2**20  # all_gather buffers of Z (padded) + Z itself
            base = weights_mb + pyramid + gathered
            rows.append(
                {
                    "ipc": ipc,
                    "n": n,
                    "processes": world,
                    "images_per_process": mine,
                    "pyramid_state_mb": pyramid,
                    "weights_mb": weights_mb,
                    "features_mb": gathered,
                    "chunk": chunk,
                    "one_pass_total_mb": base + mine * per_view_mb,
                    "chunked_total_mb": base + min(chunk, mine) * per_view_mb,
                }
            )
    return state_mb, weights_mb, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="vit_base_patch16_224")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), a)))
        return
    from edgedd.host.memory import MEASURE_ENV

    env = {**os.environ, **MEASURE_ENV}
    measured = {}
    for kind in ("sfm_view", "stage1_crop"):
        measured[kind] = []
        for k in (1, 2, 4):
            out = subprocess.run(
                [sys.executable, __file__, "--backbone", a.backbone, "--device", a.device, "--worker", kind, str(k)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            measured[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"measured {kind} x{k}: {measured[kind][-1]['working_mb']:.0f} MB", file=sys.stderr)
    ref = measured["sfm_view"][0]
    per_view, per_crop = slope(measured["sfm_view"]), slope(measured["stage1_crop"])
    state_mb, weights_mb, rows = estimate(per_view, ref["params"], ref["dim"], ref["syn_res"])
    result = {
        "backbone": a.backbone,
        "device": a.device,
        "machine": platform.processor() or platform.machine(),
        "memory_kind": ref["memory_kind"],
        "per_view_mb": per_view,
        "per_stage1_crop_mb": per_crop,
        "pyramid_state_mb_per_image": state_mb,
        "weights_mb": weights_mb,
        "measured": measured,
        "estimate": rows,
    }
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{a.backbone} on {a.device} ({ref['memory_kind']}): SFM view fwd+bwd {per_view:.1f} MB/image, "
        f"Stage I crop fwd {per_crop:.1f} MB/image, pyramid state {state_mb:.2f} MB/image (syn_res {ref['syn_res']}), "
        f"weights {weights_mb:.0f} MB"
    )
    print("| IPC | N | processes | images/process | pyramid state | total, one pass | total, chunk 64 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['ipc']} | {r['n']} | {r['processes']} | {r['images_per_process']} | "
            f"{r['pyramid_state_mb'] / 1024:.1f} GB "
            f"| {r['one_pass_total_mb'] / 1024:.1f} GB | {r['chunked_total_mb'] / 1024:.1f} GB |"
        )


if __name__ == "__main__":
    main()
