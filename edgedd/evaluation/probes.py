"""The heads :mod:`edgedd.evaluate` and :mod:`edgedd.evaluation.baselines` train and score under one protocol
(the evaluation protocol of :mod:`edgedd.evaluate`'s docstring): the probe (hard labels, or KD with a
teacher), the classifier-inheritance projector, top-k accuracy and the summary over seeds. Both
callers import this module, so neither imports the other."""

from __future__ import annotations

import numpy as np
import torch

from edgedd.core.config import EvalConfig
from edgedd.core.progress import Progress
from edgedd.device.ridge import choose_strength
from edgedd.host.heads import (
    Fit,
    Sampler,
    ce_loss,
    fit_lbfgs,
    fit_ridge,
    kd_loss,
    mse_loss,
    new_probe,
    new_projector,
    train_reference,
)

from .encoders import CachedViews, sampler_dim

# ----------------------------------------------------------------------------- training: edgedd.host.heads


def fit_probe(
    sampler: Sampler,
    labels: torch.Tensor,
    num_classes: int,
    cfg: EvalConfig,
    gen: torch.Generator,
    device,
    teacher: torch.nn.Module | None = None,
    bar: Progress | None = None,
    tag: str = "",
) -> Fit:
    """``normal`` (hard labels) or, with a teacher, ``kd`` (features (z_B, z_A) of the same view):
    a fresh Linear(D_B, C) fitted under the config's protocol."""
    labels = labels.to(device)
    head = new_probe(sampler_dim(sampler, 0), num_classes, gen, device)
    loss = ce_loss(labels) if teacher is None else kd_loss(labels, teacher, cfg.kd_temperature, cfg.kd_alpha)
    if cfg.protocol == "converged":
        fit = fit_lbfgs(head, sampler.feats, loss, cfg.probe_l2, cfg.max_iter)
        if bar is not None:
            bar.update(1, run=tag, loss=fit.loss_final)
        return fit
    batch = cfg.resolved_batch(sampler.n)
    return train_reference(head, sampler, loss, cfg.epochs, batch, cfg.probe_lr(batch), gen, bar, tag)


def fit_projector(
    sampler: Sampler,
    cfg: EvalConfig,
    gen: torch.Generator,
    device,
    bar: Progress | None = None,
    tag: str = "",
    labels: torch.Tensor | None = None,
    classifier: torch.nn.Linear | None = None,
    real: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[Fit, dict]:
    """CI projector P: D_B -> D_A on features (z_B, z_A) of the same views, and how its strength was
    chosen ({"ridge": r, "ridge_from": "fixed" | "views" | "heldout"}; {} under the reference
    protocol, whose Adam has no strength). The labels (the folds), the golden classifier and
    ``real`` (phi_B and labels of its held-out training images, or None) serve the choice when
    ``cfg.ridge`` is None: pack's rule for the device (:func:`choose_ridge`)."""
    proj = new_projector(sampler_dim(sampler, 0), sampler_dim(sampler, 1), gen, device)
    if cfg.protocol == "converged":
        ridge, source = choose_ridge(sampler, cfg, labels, classifier, real)
        fit = fit_ridge(proj, sampler.feats[0], sampler.feats[1], ridge)
        if bar is not None:
            bar.update(1, run=tag, loss=fit.loss_final)
        return fit, {"ridge": ridge, "ridge_from": source}
    batch = cfg.resolved_batch(sampler.n)
    fit = train_reference(proj, sampler, mse_loss, cfg.epochs, batch, cfg.projector_lr(batch), gen, bar, tag)
    return fit, {}


def choose_ridge(
    sampler: CachedViews,
    cfg: EvalConfig,
    labels: torch.Tensor | None,
    classifier: torch.nn.Linear | None,
    real: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[float, str]:
    """The CI projector's strength and its source: ``cfg.ridge`` when given ("fixed"); else
    edgedd.device.ridge.choose_strength, the rule pack records for the device, on these views and
    the held-out images ``real`` ("heldout" when they chose it, also when they kept the views' choice;
    "views" when they did not). Unlike the device, the fit always shrinks towards 0 (the module
    docstring of edgedd.evaluation.evaluate), so with B = A's network the strength can differ from pack's."""
    if cfg.ridge is not None:
        return cfg.ridge, "fixed"
    if labels is None or classifier is None:
        raise ValueError("choosing the projector's ridge needs the synthetic images' labels and the golden classifier")
    zb, za = (f.detach().cpu().double().numpy() for f in sampler.feats[:2])
    n, v = zb.shape[:2]
    choice = choose_strength(
        zb.reshape(n * v, -1),
        za.reshape(n * v, -1),
        np.repeat(np.arange(n), v),
        labels.cpu().numpy(),
        classifier.weight.detach().cpu().double().numpy(),
        classifier.bias.detach().cpu().double().numpy(),
        real,
    )
    return choice.ridge, ("views" if choice.heldout is None else "heldout")


# ----------------------------------------------------------------------------- scoring


@torch.no_grad()
def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Top-1 and top-k, k = min(5, C), as fractions."""
    if len(labels) == 0:
        return float("nan"), float("nan")
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices.cpu()
    labels = labels.cpu()
    return float((top[:, 0] == labels).double().mean()), float((top == labels[:, None]).any(1).double().mean())


def summarise(scores: list[tuple[float, float]], fits: list[dict] | None = None) -> dict:
    """Mean and std over seeds; with ``fits`` (Fit.report() per seed) each head's training loss,
    and ``stalled`` when any seed's head ended above 0.9 x its starting loss."""
    top1 = [s[0] for s in scores]
    out = {
        "top1_mean": float(np.mean(top1)),
        "top1_std": float(np.std(top1)),  # population std over seeds (0 for one seed)
        "top5_mean": float(np.mean([s[1] for s in scores])),
        "seeds": top1,
    }
    if fits:
        out["train_loss_start"] = [f["loss_start"] for f in fits]
        out["train_loss_final"] = [f["loss_final"] for f in fits]
        out["train_steps"] = [f["steps"] for f in fits]
        out["stalled"] = any(f["stalled"] for f in fits)
        if "ridge" in fits[0]:  # the CI projector: its strength per seed and where it came from
            out["ridge"] = [f["ridge"] for f in fits]
            out["ridge_from"] = [f["ridge_from"] for f in fits]
    return out
