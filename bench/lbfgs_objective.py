"""The L-BFGS probe objective: a standardised copy of the rows vs the standardisation folded into
the weights, side by side in one run.

``edgedd.host.heads.fit_lbfgs`` fits a linear head on standardised inputs x' = (x - m) / sd. Once it
built x' at every loss evaluation (an n x D copy: 92 MB for 18,000 x 1,280 EfficientNet
features); now it evaluates the same logits as x (W'/sd)^T + (b' - (W'/sd) m), so only the D x C
weights are rescaled. This times one loss + gradient evaluation each way (the unit L-BFGS repeats
hundreds of times per candidate of the golden recipe) and checks the two objectives agree.

    python bench/lbfgs_objective.py [--rows 18000] [--dim 1280] [--classes 10] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--rows", type=int, default=18_000, help="3,600 images x 5 views: Stage I's golden fit on embedded:mnist"
    )
    ap.add_argument("--dim", type=int, default=1280, help="EfficientNet-Lite's feature width")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(a.rows, a.dim, generator=gen) * 3
    y = torch.randint(0, a.classes, (a.rows,), generator=gen)
    mean, sd = x.mean(0), x.std(0)
    w = (0.01 * torch.randn(a.classes, a.dim, generator=gen)).requires_grad_(True)
    b = torch.zeros(a.classes, requires_grad=True)

    def copy() -> float:  # before: standardise every row at every evaluation
        loss = F.cross_entropy(((x - mean) / sd) @ w.T + b, y)
        loss.backward()
        return float(loss.detach())

    def folded() -> float:  # now (edgedd.host.heads.fit_lbfgs)
        w_raw = w / sd
        loss = F.cross_entropy(x @ w_raw.T + (b - w_raw @ mean), y)
        loss.backward()
        return float(loss.detach())

    times = {}
    for name, fn in (("copy", copy), ("folded", folded)) * 2:  # interleaved twice: warm-up, then measured
        t = []
        for _ in range(a.repeats):
            w.grad = b.grad = None
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
        times[name] = sorted(t)
    w.grad = None
    l_copy = copy()
    g_copy = w.grad.clone()
    w.grad = None
    l_fold = folded()
    agree = abs(l_copy - l_fold), float((w.grad - g_copy).abs().max())

    med = {k: v[len(v) // 2] * 1e3 for k, v in times.items()}
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {a.rows} x {a.dim} rows, {a.classes} classes"
    )
    print(
        f"one loss + gradient, median of {a.repeats}: copy {med['copy']:.1f} ms, folded {med['folded']:.1f} ms, "
        f"ratio {med['copy'] / med['folded']:.2f}x (min {times['copy'][0] * 1e3:.1f} / {times['folded'][0] * 1e3:.1f} "
        "ms)"
    )
    print(f"agreement: |loss difference| {agree[0]:.2e}, max |gradient difference| {agree[1]:.2e}")


if __name__ == "__main__":
    main()
