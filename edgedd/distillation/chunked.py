"""The SFM step in feature space: memory-bounded (chunks) and shardable (ranks).

The SFM loss depends on the synthetic images only through their features Z (N x D). So:

    1. Z_mine = phi(aug(decode(my rows)))     in chunks, without a graph   (memory: one chunk)
    2. Z = all_gather(Z_mine)                   every rank holds the same N x D matrix
    3. G = dL/dZ                                 on that small matrix, identical on every rank
    4. per chunk again, with a graph: backward(phi(aug(decode(rows))), G[rows])

By the chain rule dL/dtheta = sum_rows (dZ_rows/dtheta)^T G_rows, which step 4 accumulates into
the pyramid's .grad: the same update as the one-pass step (up to float summation order), whatever
the chunk size and number of ranks. Augmentation draws are addressable by view index
(:class:`~edgedd.host.augment.StepDraws`), so every chunk and rank sees the views the one-pass step
would. With ``chunk = 0`` steps 1 and 4 are one forward that keeps its graph.
"""

from __future__ import annotations

import torch

from edgedd.host.augment import StepDraws, apply_augment, normalize
from edgedd.host.distributed import SINGLE, Dist
from edgedd.host.rng import torch_generator

from .pyramid import decode


def _views_features(model, pyr, draws: StepDraws, local_views: torch.Tensor, cfg, info, autocast) -> torch.Tensor:
    """Features of this rank's local views ``local_views`` (pass-major: v = pass * n_mine + row)."""
    n_mine = pyr.rows[1] - pyr.rows[0]
    rows = local_views % n_mine
    global_views = (local_views // n_mine) * pyr.total + pyr.rows[0] + rows
    x = decode([lv[rows] for lv in pyr.levels], pyr.syn_res)
    with autocast:
        z = model(
            normalize(
                apply_augment(x, draws.params_of(global_views), cfg.crop_res), info.preprocess.mean, info.preprocess.std
            )
        )
    return z.float()


def chunked_step(
    model, pyr, cfg, info, gen: torch.Generator, loss_fn, chunk: int, autocast, group: Dist = SINGLE
) -> torch.Tensor:
    """Leaves gradients in ``pyr.levels[*].grad`` (this rank's rows) and returns the loss (detached).

    ``loss_fn(z)`` maps the (N, D) per-image features (mean over the A views) to the scalar loss.
    """
    a, n_mine = cfg.augs_per_batch, pyr.rows[1] - pyr.rows[0]
    dev = pyr.levels[0].device
    draws = StepDraws.draw(gen, pyr.total * a, cfg.augment, cfg.crop_res, dtype=pyr.levels[0].dtype, canvas=pyr.syn_res)
    local = a * n_mine
    step = chunk if 0 < chunk < local else local
    chunks = [torch.arange(s, min(s + step, local), device=dev) for s in range(0, local, step)]

    def image_features(z_views):  # (A * n_mine, D) pass-major -> (n_mine, D) mean over views
        return z_views.view(a, n_mine, -1).mean(0)

    one = len(chunks) == 1  # one chunk: its forward keeps the graph; several: re-run each with one below
    with torch.set_grad_enabled(one):
        z_views = torch.cat([_views_features(model, pyr, draws, r, cfg, info, autocast) for r in chunks])
    if not one:
        z_views.requires_grad_(True)
    z_mine = image_features(z_views)
    z_all = group.all_gather_rows(z_mine.detach()).requires_grad_(True)
    loss = loss_fn(z_all)
    (g_all,) = torch.autograd.grad(loss, z_all)
    g_mine = g_all[pyr.rows[0] : pyr.rows[1]]
    if one:
        z_mine.backward(g_mine)
        return loss.detach()
    (g_views,) = torch.autograd.grad(z_mine, z_views, g_mine)
    for r in chunks:
        _views_features(model, pyr, draws, r, cfg, info, autocast).backward(g_views[r])
    return loss.detach()


def auto_chunk_size(model, pyr, cfg, info, device, autocast, fraction: float = 0.6) -> int:
    """0 (one pass) if this rank's N * A views fit in ``fraction`` of the free memory, else the
    largest chunk that does. Per-image working memory is measured with a 2-image forward + backward."""
    from edgedd.host.memory import PhaseMemory

    total = (pyr.rows[1] - pyr.rows[0]) * cfg.augs_per_batch
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        avail = None
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        avail = int(line.split()[1]) * 1024
        except OSError:
            pass
        if avail is None:
            return 0
        free = avail
    mem = PhaseMemory(device)
    mem.start()
    probe_gen = torch_generator("chunk-probe", device=device)  # never touches the run's generator
    draws = StepDraws.draw(
        probe_gen,
        pyr.total * cfg.augs_per_batch,
        cfg.augment,
        cfg.crop_res,
        dtype=pyr.levels[0].dtype,
        canvas=pyr.syn_res,
    )
    z = _views_features(model, pyr, draws, torch.arange(min(2, total), device=device), cfg, info, autocast)
    z.sum().backward()
    for lv in pyr.levels:
        lv.grad = None
    used = mem.peak_mb()["working_mb"]
    if not used:
        return 0
    per_image = used * 2**20 / min(2, total)
    fits = int(fraction * free // per_image)
    return 0 if fits >= total else max(1, fits)
