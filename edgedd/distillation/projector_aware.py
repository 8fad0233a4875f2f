"""Projector-aware distillation (``--surrogate``): the synthetic set is optimised for the projector
the device will fit on it, not only for A's statistics.

On a device whose backbone B is not A, Classifier Inheritance scores g(P(phi_B(x))) = W (P z + p) + b,
with P the closed-form ridge fitted on the synthetic set's views (edgedd.device.ridge, eq. 3):

    P(X) = argmin_P ||Xc P^T - Yc||^2 + lam ||P||^2,  lam = r tr(Xc^T Xc) / D_B,
    X = phi_B(views of the synthetic images), Y = phi_A(the same views)

P(X) is a differentiable function of the synthetic images (through X and Y). So the images can be
trained for what the device needs: that the P they induce classifies *real* images well through
the golden classifier. B is unknown at distillation time; the loss uses one or more surrogate
backbones B' (shipped networks other than A), and averages over them and over a few relative
strengths r (the device picks r by cross-validation; the set should serve whichever it picks):

    L_proj = mean_{B', r} CE(W (P_{B',r}(X_syn) phi_B'(x_real) + p) + b, y_real)            (1)

with x_real a batch of real training images (centre crops; phi_B' of the whole pool is computed
once, without a graph) and the total loss L = L_stage2 + lambda L_proj (``surrogate_weight``).
This is the kernel-inducing-points idea (Nguyen et al.: a closed-form learner fitted on the
synthetic set, scored on real data, differentiated through the closed form) applied to Classifier
Inheritance: the learner is the device's own ridge, and its labels are A's features, so the
golden classifier is inherited as before. Real images enter the host's loss only; the bundle
still ships only the synthetic set.

The ridge here is the torch twin of ``edgedd.device.ridge.fit_ridge`` (the same centring, the same
scale-free lam, the same prior convention); tests hold the two equal. With fewer views than
features (the usual case: N*K views, D_B in the thousands) it solves the n x n system instead of the
D x D one, by the push-through identity (Xc^T Xc + lam I)^-1 Xc^T = Xc^T (Xc Xc^T + lam I)^-1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edgedd.backbones.loader import BackboneInfo, check_model_name, load_backbone
from edgedd.core.config import DistillConfig
from edgedd.core.errors import EdgeddError
from edgedd.core.images import LabelledImages
from edgedd.device.ridge import PRIORS
from edgedd.host.augment import device_views, eval_box, eval_view, normalize, render_views, set_eval_view

# At most this many real training images (a seeded draw) form the pool whose phi_B' is computed
# once per surrogate: a pool of 10,000 x D = 1,280 floats is 51 MB, and each step draws its real
# batch from it.
POOL = 10_000


def parse_surrogate(spec: str) -> tuple[str, int | None]:
    """``name`` or ``name@input_size`` (the size the device's B runs at; default the backbone's)."""
    name, at, res = spec.partition("@")
    if at and not (res.isdigit() and 1 <= int(res) <= 2048):
        raise EdgeddError(
            f"--surrogate {spec!r}: the size after @ must be a whole number of pixels",
            "write e.g. edgedd/efficientnet-lite0@64",
        )
    check_model_name(name)
    return name, int(res) if at else None


def validate(cfg: DistillConfig) -> None:
    for spec in cfg.surrogates:
        parse_surrogate(spec)
    if not (cfg.surrogate_weight >= 0 and math.isfinite(cfg.surrogate_weight)):
        raise EdgeddError(
            f"--surrogate-weight must be a finite value >= 0 (got {cfg.surrogate_weight})", "pass e.g. 1.0"
        )
    if not 0 < cfg.surrogate_crop_min <= 1:
        raise EdgeddError(
            f"surrogate_crop_min must lie in (0, 1] (got {cfg.surrogate_crop_min})", "pass e.g. 0.5, pack's default"
        )
    if cfg.surrogate_views < 1 or cfg.surrogate_real < 1:
        raise EdgeddError("--surrogate-views and --surrogate-real must be at least 1", "pass positive values")
    if not cfg.surrogate_ridge or not all(r > 0 and math.isfinite(r) for r in cfg.surrogate_ridge):
        raise EdgeddError(
            f"the surrogate ridge strengths must be finite and > 0 (got {list(cfg.surrogate_ridge)})",
            "pass e.g. 0.1 and 1.0",
        )


def ridge_fit(x: torch.Tensor, y: torch.Tensor, ridge: float, prior: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """edgedd.device.ridge.fit_ridge (its eq. 3, or 4 with prior="identity") in torch, differentiable
    in x and y: x (n, D_B), y (n, D_A) -> P (D_A, D_B), p (D_A,), in x's dtype."""
    if prior not in PRIORS:
        raise ValueError(f"unknown projector prior {prior!r}")
    if prior == "identity":
        y = y - x
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    n, d = xc.shape
    lam = ridge * (xc * xc).sum().clamp_min(1e-12) / d
    if n <= d:  # push-through: the n x n system
        wt = xc.T @ torch.linalg.solve(xc @ xc.T + lam * torch.eye(n, dtype=x.dtype, device=x.device), yc)
    else:
        wt = torch.linalg.solve(xc.T @ xc + lam * torch.eye(d, dtype=x.dtype, device=x.device), xc.T @ yc)
    w = wt.T + (torch.eye(wt.shape[1], dtype=x.dtype, device=x.device) if prior == "identity" else 0.0)
    return w, my - mx @ wt


def inherited_ce(
    x_syn: torch.Tensor,
    y_syn: torch.Tensor,
    z_real: torch.Tensor,
    labels: torch.Tensor,
    golden_w: torch.Tensor,
    golden_b: torch.Tensor,
    ridges,
) -> torch.Tensor:
    """Equation (1) for one surrogate: the cross-entropy of the real batch through the projector
    fitted on (x_syn, y_syn), averaged over the relative strengths ``ridges``. Float64 inside.

    The logits are W (P z + p) + b = z (W P)^T + (W p + b): W is folded into P first, so each real
    image costs C x D_B multiply-adds instead of D_A x D_B (C classes, D_A the host's width), and
    the real batch can be the whole pool (bench/projector_term_cost.py)."""
    x, y, z = x_syn.double(), y_syn.double(), z_real.double()
    w, b = golden_w.double(), golden_b.double()
    losses = []
    for r in ridges:
        p, pb = ridge_fit(x, y, float(r))
        losses.append(F.cross_entropy(z @ (w @ p).T + (w @ pb + b), labels))
    return torch.stack(losses).mean().float()


@dataclass(eq=False)
class Surrogate:
    """A surrogate backbone B' and phi_B' of the real pool's centre crops (no graph)."""

    spec: str
    model: torch.nn.Module
    info: BackboneInfo
    real: torch.Tensor  # (pool, D_B')

    def views(self, images: torch.Tensor, views) -> torch.Tensor:
        pp = self.info.preprocess
        return self.model(normalize(render_views(images, views, pp.input_size), pp.mean, pp.std)).float()


@torch.no_grad()
def _pool_canvases(
    source: LabelledImages, size: int, interpolation: str, seed: int, workers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The real pool: at most POOL training images (a seeded draw), as [0, 1] canvases of the
    synthetic size, and their labels. Unreadable images are left out (Stage I counted them)."""
    import numpy as np

    from edgedd.host.data import canvas_loader
    from edgedd.host.rng import numpy_generator

    idx = np.arange(len(source))
    if len(idx) > POOL:
        idx = np.sort(numpy_generator("surrogate-pool", seed).choice(idx, POOL, replace=False))
    batches = [idx[s : s + 256].tolist() for s in range(0, len(idx), 256)]
    canv, labels = [], []
    for images, y, _errors in canvas_loader(source, size, interpolation, 256, workers, batches=batches):
        canv.append(images)
        labels.append(y)
    return torch.cat(canv), torch.cat(labels)


@torch.no_grad()
def load_surrogates(
    cfg: DistillConfig, source: LabelledImages, info_a: BackboneInfo, device, workers: int
) -> tuple[list[Surrogate], torch.Tensor]:
    """Every surrogate (pretrained weights, frozen, eval mode) with phi_B' of the real pool, and the
    pool's labels."""
    pp_a = info_a.preprocess
    canvases, labels = _pool_canvases(source, pp_a.resize_size, pp_a.interpolation, cfg.seed, workers)
    out = []
    for spec in cfg.surrogates:
        name, res = parse_surrogate(spec)
        model, info = load_backbone(name, "hub", input_size=res, device=device, seed=cfg.seed)
        if info.weights_sha256 == info_a.weights_sha256:
            raise EdgeddError(
                f"--surrogate {spec} is the distillation backbone itself",
                "a surrogate stands in for another edge network: name a different backbone",
            )
        for p in model.parameters():
            p.requires_grad_(False)
        pp = info.preprocess
        feats = [
            model(
                normalize(
                    eval_view(canvases[s : s + 256].to(device).float().div(255), pp.resize_size, pp.input_size),
                    pp.mean,
                    pp.std,
                )
            ).float()
            for s in range(0, len(canvases), 256)
        ]
        out.append(Surrogate(spec, model, info, torch.cat(feats)))
    return out, labels.to(device)


def projector_loss(
    images: torch.Tensor,
    model_a,
    info_a: BackboneInfo,
    surrogates: list[Surrogate],
    pool_labels: torch.Tensor,
    golden: tuple[torch.Tensor, torch.Tensor],
    cfg: DistillConfig,
    gen: torch.Generator,
) -> torch.Tensor:
    """Equation (1), averaged over the surrogates: K = ``surrogate_views`` views per synthetic image,
    its centre crop and K - 1 flip + random crops (edgedd.host.augment.device_views: the kind pack
    fits the device's projector on), rendered from the same boxes at A's and at each B''s input
    size, and ``surrogate_real`` real images drawn from the pool (one draw per step, shared by the
    surrogates)."""
    n, k = images.shape[0], cfg.surrogate_views
    rep = images.repeat_interleave(k, dim=0)
    pp = info_a.preprocess
    views = device_views(n, k, (0.0, 1.0), cfg.surrogate_crop_min, gen)  # view 0 set per surrogate below
    pick = torch.randperm(len(pool_labels), generator=gen, device=gen.device)[: cfg.surrogate_real].to(
        pool_labels.device
    )
    w, b = (t.to(images.device, torch.float32) for t in golden)
    losses, y_by_box = [], {}  # A's features depend on the views only: once per distinct eval box
    for s in surrogates:
        # view 0 = the surrogate's own eval view, the crop its device applies P to (pack does the same for B)
        box = eval_box(s.info.preprocess.resize_size, s.info.preprocess.input_size)
        set_eval_view(views, n, k, box)
        if box not in y_by_box:
            y_by_box[box] = model_a(normalize(render_views(rep, views, pp.input_size), pp.mean, pp.std)).float()
        losses.append(
            inherited_ce(s.views(rep, views), y_by_box[box], s.real[pick], pool_labels[pick], w, b, cfg.surrogate_ridge)
        )
    return torch.stack(losses).mean()


class ProjectorAware:
    """Wraps a Stage II step: its own gradients, then lambda * (1)'s added into the pyramid. Keeps
    the history of (1) for the summary."""

    def __init__(
        self,
        step,
        model_a,
        info_a: BackboneInfo,
        cfg: DistillConfig,
        source: LabelledImages,
        golden,
        device,
        workers: int,
    ):
        self.step, self.model_a, self.info_a, self.cfg, self.golden = step, model_a, info_a, cfg, golden
        self.surrogates, self.pool_labels = load_surrogates(cfg, source, info_a, device, workers)
        self.history: list[float] = []

    def __call__(self, loop) -> torch.Tensor:
        loss = self.step(loop)
        proj = projector_loss(
            loop.pyr.decode(),
            self.model_a,
            self.info_a,
            self.surrogates,
            self.pool_labels,
            self.golden,
            self.cfg,
            loop.gen,
        )
        (self.cfg.surrogate_weight * proj).backward()
        self.history.append(float(proj.detach()))
        return loss.detach() + self.cfg.surrogate_weight * proj.detach()

    def summary(self) -> dict:
        h = self.history
        return {
            "surrogates": [s.spec for s in self.surrogates],
            "weight": self.cfg.surrogate_weight,
            "steps": len(h),
            "loss_first": h[0] if h else None,
            "loss_last": h[-1] if h else None,
            "loss_last10_mean": sum(h[-10:]) / len(h[-10:]) if h else None,
        }
