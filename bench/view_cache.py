"""Do cached views change accuracy? Two shortcuts against their exact protocols, side by side.

1. ``edgedd evaluate --view-cache V``: V augmented views per synthetic image rendered once per
   seed, against the exact protocol (fresh flip + RRC views through the backbone every batch),
   on a finished run, modes normal and ci, the same seeds.
2. Stage I's golden classifier on K cached views per image (METHOD.md's *(choice)*, what
   ``edgedd distill`` does), against re-running the backbone on a fresh view every epoch, on the
   whole training set; scored on the test set's centre crops. METHOD.md allows the shortcut if
   the accuracy stays within 0.5 pt.

    python bench/view_cache.py runs/accuracy/sfm_ipc10 --test-data embedded:mnist/test [--seeds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time


def golden_compare(run_dir, test_data: str, seeds: int, views: int, device_name: str) -> dict:
    import numpy as np
    import torch

    from edgedd.backbones.forward import encode, resolve_device
    from edgedd.backbones.loader import load_backbone
    from edgedd.core.config import AugmentConfig, StageIConfig
    from edgedd.core.images import open_dataset
    from edgedd.distillation.rundir import load_run
    from edgedd.distillation.stage1 import train_golden
    from edgedd.host.augment import center_crop, render_views, sample_views
    from edgedd.host.data import CanvasDataset
    from edgedd.host.heads import new_probe
    from edgedd.host.rng import torch_generator

    device = resolve_device(device_name)
    run = load_run(run_dir)
    info0 = run.summary["backbone"]
    model, info = load_backbone(
        info0["name"],
        "hub",
        input_size=run.preprocess.input_size,
        resize_size=run.preprocess.resize_size,
        device=device,
    )
    pp = info.preprocess
    train, test = open_dataset(run.summary["dataset"]["name"]), open_dataset(test_data)

    def canvases(src):
        ds = CanvasDataset(src, pp.resize_size, pp.interpolation)
        x = np.stack([ds[i][0] for i in range(len(src))])
        return torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255), torch.from_numpy(src.labels)

    def feats(x):  # x on the CPU, batches of 512 moved to the device
        return encode(model, x, pp, batch=512)

    xtr, ytr = canvases(train)
    xte, yte = canvases(test)
    z_test = feats(center_crop(xte, pp.input_size))
    aug = AugmentConfig()
    out = {"cached": [], "exact": [], "views": views}
    for seed in range(seeds):
        cfg = StageIConfig(
            golden_views=views, golden_recipe="reference", seed=seed
        )  # METHOD.md's recipe: what the shortcut is for
        g = torch.Generator().manual_seed(1000 + seed)
        # cached: slot 0 centre crop, slots 1..K views drawn once (Stage I's layout)
        t = time.perf_counter()
        slots = [feats(center_crop(xtr, pp.input_size))] + [
            feats(render_views(xtr, sample_views(len(xtr), aug, g), pp.input_size)) for _ in range(views)
        ]
        bank = torch.stack(slots, 1).cpu().numpy()
        w, b, _ = train_golden(bank, ytr.numpy(), train.num_classes, cfg, device, progress=False)
        acc = float(((z_test.cpu() @ w.T + b).argmax(1) == yte).float().mean())
        out["cached"].append({"seed": seed, "top1": acc, "seconds": time.perf_counter() - t})
        # exact: the same probe, optimiser and schedule; each epoch a fresh view per image through the backbone
        t = time.perf_counter()
        gen = torch_generator(
            "golden-reference", cfg.seed
        )  # the reference recipe's streams (edgedd.distillation.stage1)
        n = len(xtr)
        head = new_probe(info.num_features, train.num_classes, torch_generator("golden-init", cfg.seed), device)
        opt = torch.optim.Adam(head.parameters(), lr=cfg.resolved_golden_lr())
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.golden_epochs * -(-n // cfg.golden_batch))
        for _ in range(cfg.golden_epochs):
            perm = torch.randperm(n, generator=gen)
            for s in range(0, n, cfg.golden_batch):
                idx = perm[s : s + cfg.golden_batch]
                z = feats(render_views(xtr[idx], sample_views(len(idx), aug, gen), pp.input_size))
                loss = torch.nn.functional.cross_entropy(head(z), ytr[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        with torch.no_grad():
            acc = float((head(z_test).argmax(1).cpu() == yte).float().mean())
        out["exact"].append({"seed": seed, "top1": acc, "seconds": time.perf_counter() - t})
        print(f"golden seed {seed}: cached {out['cached'][-1]['top1']:.4f}  exact {acc:.4f}", file=sys.stderr)
    for k in ("cached", "exact"):
        v = np.array([r["top1"] for r in out[k]])
        out[k + "_mean"], out[k + "_std"] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
    out["difference_pt"] = 100 * (out["cached_mean"] - out["exact_mean"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--test-data", default="embedded:mnist/test")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--view-cache", type=int, default=16)
    ap.add_argument("--golden-views", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-golden", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    from edgedd.evaluation.evaluate import EvalConfig, evaluate_run

    res = {
        "run": a.run_dir,
        "machine": platform.processor() or platform.machine(),
        "seeds": a.seeds,
        "epochs": a.epochs,
        "command": " ".join(sys.argv),
    }
    for name, v in (("exact", 0), ("cached", a.view_cache)):
        t = time.perf_counter()
        ev = evaluate_run(
            a.run_dir,
            a.test_data,
            modes=("normal", "ci"),
            config=EvalConfig(epochs=a.epochs, seeds=a.seeds, view_cache=v, device=a.device),
            progress=False,
        )
        res[name] = {"view_cache": v, "seconds": time.perf_counter() - t, "modes": ev["modes"]}
        print(
            f"evaluate {name}: {json.dumps({m: round(100 * r['top1_mean'], 2) for m, r in ev['modes'].items()})} "
            f"in {res[name]['seconds']:.0f}s",
            file=sys.stderr,
        )
    res["difference_pt"] = {
        m: 100 * (res["cached"]["modes"][m]["top1_mean"] - res["exact"]["modes"][m]["top1_mean"])
        for m in ("normal", "ci")
    }
    if not a.skip_golden:
        res["golden"] = golden_compare(a.run_dir, a.test_data, a.seeds, a.golden_views, a.device)
    if a.json:
        print(json.dumps(res, indent=2))
        return
    pct = lambda r: f"{100 * r['top1_mean']:.2f} ± {100 * r['top1_std']:.2f}"  # noqa: E731
    print(f"| protocol ({a.seeds} seeds, {a.epochs} epochs) | normal | ci | seconds |")
    print("|---|---|---|---|")
    for name in ("exact", "cached"):
        r = res[name]
        print(
            f"| {name} (view cache {r['view_cache']}) | {pct(r['modes']['normal'])} | {pct(r['modes']['ci'])} | "
            f"{r['seconds']:.0f} |"
        )
    print(f"| cached - exact (pt) | {res['difference_pt']['normal']:+.2f} | {res['difference_pt']['ci']:+.2f} | |")
    if "golden" in res:
        g = res["golden"]
        print(
            f"\ngolden classifier, test top-1 over {a.seeds} seeds: cached {g['views']} views "
            f"{100 * g['cached_mean']:.2f} ± "
            f"{100 * g['cached_std']:.2f}, exact (fresh view every epoch) {100 * g['exact_mean']:.2f} ± "
            f"{100 * g['exact_std']:.2f}, "
            f"difference {g['difference_pt']:+.2f} pt"
        )


if __name__ == "__main__":
    main()
