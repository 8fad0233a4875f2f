"""Memory-bounded SFM step: peak memory set by the chunk size, not by N.

The SFM loss depends on the synthetic images only through their features Z (N x D). So:

    1. Z = phi(aug(decode(pyramid)))  in chunks, without a graph        (memory: one chunk)
    2. G = dL/dZ                       on the small N x D matrix
    3. per chunk again, with a graph: backward(phi(aug(decode(rows))), G[rows])

By the chain rule dL/dtheta = sum_rows (dZ_rows/dtheta)^T G_rows, which step 3 accumulates into
the pyramid's .grad: the same update as the one-pass step (up to float summation order). All
random draws of the augmentation are made once for the whole batch (AugmentParams), so both
passes, and the one-pass step, see identical views.
"""

from __future__ import annotations

import torch

from .augment import apply_augment, normalize, sample_augment
from .synthetic import decode


def _rows_features(model, levels, syn_res, rows, params, cfg, info, autocast):
    x = decode([lv[rows % levels[0].shape[0]] for lv in levels], syn_res)
    with autocast:
        z = model(normalize(apply_augment(x, params[rows], cfg.crop_res), info.preprocess.mean, info.preprocess.std))
    return z.float()


def chunked_step(model, pyr, cfg, info, gen: torch.Generator, loss_fn, chunk: int, autocast) -> torch.Tensor:
    """Leaves gradients in ``pyr.levels[*].grad`` and returns the loss (detached).

    ``loss_fn(z)`` maps the (N, D) per-image features (mean over the A views) to the scalar loss.
    """
    n, a = pyr.levels[0].shape[0], cfg.augs_per_batch
    total = n * a  # view j shows image j % n (pass j // n), as images.repeat(a) orders them
    dev = pyr.levels[0].device
    params = sample_augment(total, cfg.augment, cfg.crop_res, gen, dtype=pyr.levels[0].dtype)
    chunks = [torch.arange(s, min(s + chunk, total), device=dev) for s in range(0, total, chunk)]
    with torch.no_grad():
        z_all = torch.cat([_rows_features(model, pyr.levels, pyr.syn_res, r, params, cfg, info, autocast) for r in chunks])
    z_all.requires_grad_(True)
    loss = loss_fn(z_all.view(a, n, -1).mean(0))
    (g_all,) = torch.autograd.grad(loss, z_all)
    for r in chunks:
        z = _rows_features(model, pyr.levels, pyr.syn_res, r, params, cfg, info, autocast)
        z.backward(g_all[r])
    return loss.detach()


def auto_chunk_size(model, pyr, cfg, info, device, autocast, fraction: float = 0.6) -> int:
    """0 (one pass) if N * A images fit in ``fraction`` of the free memory, else the largest chunk
    that does. Per-image working memory is measured with a 2-image forward + backward."""
    from .memory import PhaseMemory

    total = pyr.levels[0].shape[0] * cfg.augs_per_batch
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        avail = None
        try:
            for line in open("/proc/meminfo"):
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
        except OSError:
            pass
        if avail is None:
            return 0
        free = avail
    mem = PhaseMemory(device)
    mem.start()
    probe_gen = torch.Generator(device=device).manual_seed(0)  # never touches the run's generator
    rows = torch.arange(min(2, total), device=device)
    params = sample_augment(total, cfg.augment, cfg.crop_res, probe_gen, dtype=pyr.levels[0].dtype)
    z = _rows_features(model, pyr.levels, pyr.syn_res, rows, params, cfg, info, autocast)
    z.sum().backward()
    for lv in pyr.levels:
        lv.grad = None
    used = mem.peak_mb()["working_mb"]
    if not used:
        return 0
    per_image = used * 2**20 / len(rows)
    fits = int(fraction * free // per_image)
    return 0 if fits >= total else max(1, fits)
