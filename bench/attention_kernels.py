"""Fused (scaled_dot_product_attention) vs plain attention for the host's backbone work, side by
side in one process: no-grad forward time (Stage I, evaluation), forward + backward time to the
input (a distillation step), and the bytes autograd saves for that backward. Edgedd builds
backbones exportable (plain) and switches them to fused for host work (edgedd/backbones/forward.py); the
ONNX export sees plain attention. Timings alternate the two kernels, best of --repeats each.

    python bench/attention_kernels.py [--backbones vit_tiny_patch16_224,vit_small_patch16_224 --batch 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def measure(model, x, repeats: int) -> dict:
    import torch

    from edgedd.host.memory import SavedTensors

    with SavedTensors(exclude=model.parameters()) as saved:
        model(x).sum().backward()
    fwd, step = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        with torch.no_grad():
            model(x)
        fwd.append(time.perf_counter() - t)
        t = time.perf_counter()
        model(x).sum().backward()
        step.append(time.perf_counter() - t)
    return {"saved_mb": sum(saved.mb().values()), "forward_s": min(fwd), "fwd_bwd_s": min(step)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default="vit_tiny_patch16_224,vit_small_patch16_224")
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    import torch

    from edgedd.backbones.forward import plain_attention, resolve_device
    from edgedd.backbones.loader import load_backbone

    dev = resolve_device(a.device)
    rows = []
    for name in a.backbones.split(","):
        model, _ = load_backbone(name, "random", input_size=a.res, device=dev, seed=0)
        x = (
            torch.rand(a.batch, 3, a.res, a.res, generator=torch.Generator().manual_seed(0))
            .to(dev)
            .requires_grad_(True)
        )
        with torch.no_grad():
            z_fused = model(x)
            with plain_attention(model):
                z_plain = model(x)
        res = {"fused": [], "plain": []}
        for _ in range(2):  # alternate, so drift on a shared machine hits both
            res["fused"].append(measure(model, x, a.repeats))
            with plain_attention(model):
                res["plain"].append(measure(model, x, a.repeats))
        best = {k: {m: min(r[m] for r in v) for m in v[0]} for k, v in res.items()}
        rows.append(
            {
                "backbone": name,
                "batch": a.batch,
                "res": a.res,
                **best,
                "max_abs_diff": float((z_fused - z_plain).abs().max()),
                "saved_ratio": best["plain"]["saved_mb"] / best["fused"]["saved_mb"],
                "forward_speedup": best["plain"]["forward_s"] / best["fused"]["forward_s"],
                "fwd_bwd_speedup": best["plain"]["fwd_bwd_s"] / best["fused"]["fwd_bwd_s"],
            }
        )
    out = {
        "device": str(dev),
        "rows": rows,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
    }
    if a.json:
        print(json.dumps(out, indent=2))
        return
    print(f"device {dev}, batch {a.batch} at {a.res} px; plain / fused (>1: fused is better)")
    print(
        f"{'backbone':<26} {'saved MB plain/fused':>21} {'fwd s plain/fused':>19} {'fwd+bwd s plain/fused':>23} "
        f"{'max |diff|':>11}"
    )
    for r in rows:
        p, f = r["plain"], r["fused"]
        print(
            f"{r['backbone']:<26} {p['saved_mb']:>7.1f}/{f['saved_mb']:<6.1f}{r['saved_ratio']:>5.2f}x "
            f"{p['forward_s']:>6.3f}/{f['forward_s']:<6.3f}{r['forward_speedup']:>5.2f}x "
            f"{p['fwd_bwd_s']:>8.3f}/{f['fwd_bwd_s']:<7.3f}{r['fwd_bwd_speedup']:>5.2f}x {r['max_abs_diff']:>11.2e}"
        )


if __name__ == "__main__":
    main()
