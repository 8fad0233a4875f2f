"""Where one distillation step's memory goes: the tensors autograd saves for the backward pass,
split by stage (decode the pyramid, augment, backbone), per view, for SFM's 1 augmentation pass
and LGM's 10; the synthetic set's own state; and the process RSS growth of the first step
against a later one (the framework's lazy allocations). It explains the two memory figures of
bench/distill_cost.py (step vs phase).

Saved tensors are counted once per storage; the backbone's weights, which the linear layers save
but which exist before the step, are left out.

    python bench/step_memory_breakdown.py [--backbone vit_tiny_patch16_224 --crop-res 224 --syn-res 256] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys


def saved_bytes(model, info, pyr, cfg, gen) -> dict:
    """MB autograd saves in decode / augment / backbone for the step's views of the set
    (``stage2.view_features``: the path LGM's step and the one-pass SFM step take)."""
    from edgedd.distillation.stage2 import view_features
    from edgedd.host.memory import SavedTensors

    saved = SavedTensors(exclude=model.parameters())
    hook = model.register_forward_pre_hook(lambda *_: setattr(saved, "stage", "backbone"))
    try:
        with saved:
            saved.stage = "decode"
            x = pyr.decode()
            saved.stage = "augment"  # crop, flip, noise, normalise: until the backbone's forward starts
            view_features(model, x, cfg, info, gen)
    finally:
        hook.remove()
    return {"decode": 0.0, "augment": 0.0, "backbone": 0.0, **saved.mb()}


def first_vs_later_step(model, info, pyr, cfg, gen) -> dict:
    """RSS the first SFM step of a process leaves behind vs a later one (Adam moments + lazy init)."""
    import torch

    from edgedd.backbones.forward import backbone_autocast as _autocast
    from edgedd.distillation.checkpoint import adam as _adam
    from edgedd.distillation.chunked import chunked_step
    from edgedd.distillation.losses import flow
    from edgedd.distillation.stage2 import feature_loss
    from edgedd.host.memory import PhaseMemory

    dev = pyr.levels[0].device
    centres = torch.randn(pyr.levels[0].shape[0], info.num_features, generator=gen, device=dev)  # IPC 1
    f_real = flow(centres)
    opt = _adam(pyr.levels, cfg.lr)
    rows = []
    for _ in range(3):
        m = PhaseMemory(dev)
        m.start()
        opt.zero_grad(set_to_none=True)
        chunked_step(
            model, pyr, cfg, info, gen, lambda z: feature_loss(z, cfg, f_real, centres), 0, _autocast(dev, False)
        )
        opt.step()
        rows.append(m.peak_mb())
    before = [r["before_mb"] for r in rows]
    return {
        "step_working_mb": [r["working_mb"] for r in rows],
        "rss_left_by_first_step_mb": None if None in before else before[1] - before[0],
        "rss_left_by_second_step_mb": None if None in before else before[2] - before[1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="vit_tiny_patch16_224")
    ap.add_argument("--crop-res", type=int, default=224)
    ap.add_argument("--syn-res", type=int, default=256)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from edgedd.host.memory import MEASURE_ENV

    if any(os.environ.get(k) != v for k, v in MEASURE_ENV.items()):  # malloc settings act at process start
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MEASURE_ENV})
    import torch

    from edgedd.backbones.loader import load_backbone
    from edgedd.core.config import DistillConfig
    from edgedd.distillation.pyramid import Pyramid

    dev = torch.device("cpu")
    model, info = load_backbone(a.backbone, "random", input_size=a.crop_res, resize_size=a.syn_res, device=dev, seed=0)
    gen = torch.Generator().manual_seed(0)
    n = a.classes  # IPC 1
    pyr = Pyramid.init(n, a.syn_res, gen)
    while not pyr.full:
        pyr.extend(gen)
    level_mb = sum(lv.numel() * lv.element_size() for lv in pyr.levels) / 2**20
    res = {
        "backbone": a.backbone,
        "crop_res": a.crop_res,
        "syn_res": a.syn_res,
        "images": n,
        "state_mb": {"levels": level_mb, "adam_moments": 2 * level_mb, "level_grads": level_mb},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
    }
    # the anchored loss these figures were measured with (sfm_sub, the default since, needs real targets)
    cfg = DistillConfig(method="sfm_anchor", ipc=1, syn_res=a.syn_res, crop_res=a.crop_res, augs_per_batch=1)
    res["sfm_steps"] = first_vs_later_step(model, info, pyr, cfg, gen)  # first: the process's first steps
    for method, augs in (("sfm", 1), ("lgm", 10)):
        cfg = DistillConfig(method="sfm_anchor", ipc=1, syn_res=a.syn_res, crop_res=a.crop_res, augs_per_batch=augs)
        s = saved_bytes(model, info, pyr, cfg, gen)
        res[method] = {
            "augs_per_batch": augs,
            "saved_mb": s,
            "saved_total_mb": sum(s.values()),
            "backbone_mb_per_view": s["backbone"] / (n * augs),
        }
    if a.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{a.backbone} @ {a.crop_res} px, synthetic {a.syn_res} px, {n} images (IPC 1)")
    st = res["state_mb"]
    print(
        f"synthetic set state: levels {st['levels']:.1f} MB, Adam moments {st['adam_moments']:.1f} MB, level grads "
        f"{st['level_grads']:.1f} MB"
    )
    print(
        f"{'method':<6} {'views':>5} {'decode':>8} {'augment':>8} {'backbone':>9} {'total':>8} {'backbone/view':>14}  "
        "(saved for backward, MB)"
    )
    for m in ("sfm", "lgm"):
        r = res[m]
        s = r["saved_mb"]
        print(
            f"{m:<6} {n * r['augs_per_batch']:>5} {s['decode']:>8.1f} {s['augment']:>8.1f} {s['backbone']:>9.1f} "
            f"{r['saved_total_mb']:>8.1f} {r['backbone_mb_per_view']:>14.2f}"
        )
    sw = res["sfm_steps"]
    print(
        "SFM step working MB, steps 1-3 of a process: "
        + ", ".join(f"{w:.1f}" for w in sw["step_working_mb"] if w is not None)
    )
    if sw["rss_left_by_first_step_mb"] is not None:
        print(
            f"RSS left behind: first step {sw['rss_left_by_first_step_mb']:.1f} MB "
            f"(Adam moments {st['adam_moments']:.1f} MB + lazy framework allocations), second "
            f"{sw['rss_left_by_second_step_mb']:.1f} MB"
        )


if __name__ == "__main__":
    main()
