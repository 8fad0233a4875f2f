"""The real-image baselines of ``edgedd evaluate --baselines`` (the table in :mod:`edgedd.evaluate`'s
docstring): which real training images each baseline picks, and their training and scoring.

* :func:`select_random`, :func:`select_centroids`, :func:`select_neighbors`, :func:`select_kcentre`,
  :func:`select_herding`: the selections, as positions into the training pass (phi_A centre-crop
  features for all but random);
* :class:`BaselineSets`, :func:`baseline_sets`: the training pass and the chosen canvases;
* :func:`run_baselines`: each baseline per seed (``normal`` probe, or Stage I's recipe for
  ``full``), summarised as the modes are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from edgedd.core.config import BASELINES, EvalConfig
from edgedd.core.errors import EdgeddError
from edgedd.core.images import LabelledImages
from edgedd.core.progress import Progress
from edgedd.distillation.rundir import Run
from edgedd.distillation.stage1 import train_golden
from edgedd.host.augment import center_crop
from edgedd.host.rng import seed_for, torch_generator

from .encoders import Encoder, TrainPass, load_canvases, make_sampler, train_pass
from .probes import fit_probe, summarise


def select_random(labels: torch.Tensor, num_classes: int, ipc: int, gen: torch.Generator) -> torch.Tensor:
    """Per class min(IPC, n_c) images drawn without replacement; positions into ``labels``."""
    out = []
    for c in range(num_classes):
        pool = torch.nonzero(labels == c).flatten()
        out.append(pool[torch.randperm(len(pool), generator=gen)[:ipc]])
    return torch.cat(out)


def select_centroids(feats: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor, ipc: int) -> torch.Tensor:
    """Per class the min(IPC, n_c) images with the smallest ||phi_A(x) - mu_c||."""
    out = []
    for c in range(centres.shape[0]):
        pool = torch.nonzero(labels == c).flatten()
        d = (feats[pool].double() - centres[c].double()).norm(dim=1)
        out.append(pool[torch.argsort(d, stable=True)[:ipc]])
    return torch.cat(out)


def select_neighbors(
    feats: torch.Tensor, labels: torch.Tensor, syn_feats: torch.Tensor, syn_labels: torch.Tensor
) -> torch.Tensor:
    """For each synthetic image the real image of its class with the largest cos(phi_A(x), phi_A(s))
    (the reference code's cosine; Euclidean distance also weighs the feature norm). Ties: the first."""
    out = []
    for s, c in zip(syn_feats, syn_labels.tolist(), strict=True):
        pool = torch.nonzero(labels == c).flatten()
        if len(pool) == 0:
            raise EdgeddError(
                f"the training data has no readable image of class {c}", "pass the data the run was distilled on"
            )
        sim = torch.nn.functional.cosine_similarity(feats[pool].double(), s.double().unsqueeze(0), dim=1)
        out.append(pool[torch.argmax(sim)])
    return torch.stack(out)


def select_kcentre(
    feats: torch.Tensor, labels: torch.Tensor, num_classes: int, ipc: int, gen: torch.Generator
) -> torch.Tensor:
    """Per class a k-centre coreset of min(IPC, n_c) images (greedy farthest point, Sener and
    Savarese): a first image drawn from ``gen``, then repeatedly the image whose Euclidean distance
    to its nearest chosen one is largest, s_{k+1} = argmax_x min_j ||phi_A(x) - phi_A(s_j)||."""
    out = []
    for c in range(num_classes):
        pool = torch.nonzero(labels == c).flatten()
        if len(pool) == 0:
            continue
        f = feats[pool].double()
        chosen = [int(torch.randint(len(pool), (1,), generator=gen))]
        nearest = (f - f[chosen[0]]).norm(dim=1)
        for _ in range(min(ipc, len(pool)) - 1):
            nearest[chosen] = -1.0  # never pick an image twice (duplicates sit at distance 0)
            nxt = int(torch.argmax(nearest))
            chosen.append(nxt)
            nearest = torch.minimum(nearest, (f - f[nxt]).norm(dim=1))
        out.append(pool[torch.tensor(chosen)])
    return torch.cat(out)


def select_herding(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, ipc: int) -> torch.Tensor:
    """Per class min(IPC, n_c) images by herding (Welling; Rebuffi et al.'s iCaRL selection): the
    k-th pick brings the mean of the chosen phi_A features closest to the class mean mu_c,
    s_k = argmin_x ||mu_c - (x + sum_{j<k} s_j) / k||, without replacement."""
    out = []
    for c in range(num_classes):
        pool = torch.nonzero(labels == c).flatten()
        f = feats[pool].double()
        mu, total, chosen = f.mean(0), torch.zeros(f.shape[1], dtype=torch.float64), []
        for k in range(1, min(ipc, len(pool)) + 1):
            d = (mu - (f + total) / k).norm(dim=1)
            d[chosen] = float("inf")
            nxt = int(torch.argmin(d))
            chosen.append(nxt)
            total += f[nxt]
        out.append(pool[torch.tensor(chosen, dtype=torch.long)])
    return torch.cat(out)


@dataclass
class BaselineSets:
    """What the baselines train on: the real canvases fixed by phi_A, and the means to draw more."""

    fixed: dict[str, tuple[torch.Tensor, torch.Tensor]]  # centroids, neighbors, herding: canvases in [0, 1], labels
    draw_random: Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # seed -> canvases, labels
    draw_kcentre: Callable[
        [int], tuple[torch.Tensor, torch.Tensor]
    ]  # seed -> canvases, labels (its first pick is seeded)
    full: TrainPass


def baseline_sets(
    run: Run,
    train: LabelledImages,
    train_map: np.ndarray,
    enc_a: Encoder,
    enc_b: Encoder,
    cfg: EvalConfig,
    device,
    progress: bool,
) -> BaselineSets:
    pp = run.preprocess
    tp = train_pass(
        enc_a,
        enc_b,
        train,
        train_map,
        pp.resize_size,
        pp.interpolation,
        cfg,
        run.stage1_config().golden_views,
        device,
        progress,
    )
    centres = run.centres
    syn_a = enc_a(center_crop(run.images.to(device), enc_a.input_size)).cpu()

    def real(pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Canvases at the run's resolution (as the synthetic images) and labels of the images at ``pos``."""
        return load_canvases(train, tp.index[pos.numpy()], pp.resize_size, pp.interpolation, cfg, device), tp.labels[
            pos
        ]

    return BaselineSets(
        fixed={
            "centroids": real(select_centroids(tp.feats_a, tp.labels, centres, run.ipc)),
            "neighbors": real(select_neighbors(tp.feats_a, tp.labels, syn_a, run.labels)),
            "herding": real(select_herding(tp.feats_a, tp.labels, run.num_classes, run.ipc)),
        },
        draw_random=lambda seed: real(
            select_random(tp.labels, run.num_classes, run.ipc, torch_generator("random-baseline", seed))
        ),
        draw_kcentre=lambda seed: real(
            select_kcentre(tp.feats_a, tp.labels, run.num_classes, run.ipc, torch_generator("kcentre-baseline", seed))
        ),
        full=tp,
    )


def run_baselines(sets: BaselineSets, run: Run, enc_b: Encoder, cfg: EvalConfig, device, score, bar: Progress) -> dict:
    c = run.num_classes

    def normal_probe(
        canvases: torch.Tensor, labels: torch.Tensor, seed: int, tag: str
    ) -> tuple[tuple[float, float], dict]:
        """The ``normal`` protocol on real canvases, exactly as on the synthetic set."""
        fit = fit_probe(
            make_sampler(canvases, [enc_b], cfg, seed),
            labels,
            c,
            cfg,
            torch_generator("train", seed),
            device,
            bar=bar,
            tag=tag,
        )
        return score(fit.head), fit.report()

    out: dict[str, list] = {b: [] for b in BASELINES}
    fits: dict[str, list] = {b: [] for b in BASELINES}
    s1 = run.stage1_config()
    for seed in range(cfg.seeds):
        for name, (x, y) in [
            ("random", sets.draw_random(seed)),
            ("kcentre", sets.draw_kcentre(seed)),
            *sets.fixed.items(),
        ]:
            sc, rep = normal_probe(x, y, seed, f"{name}/{seed}")
            out[name].append(sc)
            fits[name].append(rep)
        # full: the golden classifier's own recipe (Stage I) on phi_B of the whole training set
        w, b, rep = train_golden(
            sets.full.feats_b.numpy(),
            sets.full.labels.numpy(),
            c,
            replace(s1, seed=seed_for("full-baseline", s1.seed, seed)),
            device,
            progress=False,
        )
        head = torch.nn.Linear(w.shape[1], c).to(device)
        with torch.no_grad():
            head.weight.copy_(w)
            head.bias.copy_(b)
        bar.update(1, run=f"full/{seed}")
        out["full"].append(score(head))
        fits["full"].append(
            {
                "loss_start": rep["loss_start"],
                "loss_final": rep["loss_final"],
                "steps": rep["steps"],
                "stalled": rep["stalled"],
            }
        )
    return {name: summarise(s, fits[name]) for name, s in out.items()}
