"""Evaluation of a distilled set (METHOD.md, "Stage III" and "Evaluation protocol").

A plain library: :func:`evaluate_run` takes a finished ``edgedd distill`` run directory and a
labelled test set and returns a JSON-ready dict. Notation: phi_A the distillation backbone (reloaded
exactly as distilled; its weights hash must match), phi_B the evaluation backbone (default: A),
N synthetic images, C classes, g(z) = W_g z + b_g the frozen golden classifier of Stage I.

Modes, each trained ``seeds`` times and scored on the test set after the final epoch:

``normal``  fresh probe h(z) = W z + b on phi_B, W ~ N(0, 0.01^2), b = 0, hard labels:
            L = CE(h(phi_B(v)), y)
``kd``      the same probe with soft labels from the golden classifier on the *same* view v:
            L = alpha T^2 KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) CE(s, y),
            s = h(phi_B(v)), t = g(phi_A(v))                          (Hinton's KD direction)
``ci``      Classifier Inheritance: projector P(z) = W_p z + b_p, D_B -> D_A, labels unused:
            L = MSE(P(phi_B(v)), phi_A(v));  test logits = g(P(phi_B(x)))

Two protocols (``EvalConfig.protocol``), fixed before any method is compared, the same for every
row of a table. Views v: flip + random-resized-crop (no noise), rendered from the same crop box at
each backbone's input size.

``converged`` (default)  V = 64 views per image rendered once per seed; every head fitted to the
    optimum of its L2-regularised objective over all of them (:mod:`edgedd.heads`): the probes by
    L-BFGS with relative L2 ``probe_l2`` = 1e-3, the projector by closed-form ridge at the strength
    the device's fit picks (edgedd.device.ridge; ``ridge`` fixes it). No lr, no epochs: the same fit
    at N = 10 as at N = 10,000. The projector shrinks towards 0 (the ridge module's equation 3)
    even when B is A: ``ci`` measures what the synthetic set teaches a projector. (The device
    shrinks towards I when pack records B = A's network, equation 4; there the set barely matters.)
``reference``  METHOD.md: Adam with a cosine schedule over all steps; batch min(100, N); lr
    1e-3 * batch / 256 (probes) and 1e-2 * batch / 256 (projector), 1000 epochs; fresh views every
    batch (``view_cache = 0``) or V cached views, one drawn per image per epoch. On small N it
    under-trains (at IPC 1 on 10 classes the probe's lr is 3.9e-5 and it ends at chance-level loss).

Every head's training loss at its start and end goes into the result; a head whose loss ended
above 0.9 x its start is marked ``stalled``. All randomness comes from explicit generators derived
from the seed index, so a fixed seed gives identical numbers. The result also says where the
synthetic features land (:mod:`edgedd.fidelity`).

Test images: shorter side resized to B's ``resize_size``, centre crop to its ``input_size``; phi_B
features are computed once and shared by every mode, seed and baseline.

Baselines (``baselines=True``), each trained with the ``normal`` protocol on phi_B:

``random``     IPC random real training images per class, a new draw per seed
``centroids``  per class the IPC real images whose phi_A centre-crop features lie nearest the
               class centre mu_c of stats.safetensors (Euclidean)
``neighbors``  for each synthetic image the nearest real image of its class in phi_A centre-crop
               feature space by cosine similarity, as the reference code (duplicates kept: one
               real image per synthetic image)
``full``       the golden classifier's own recipe (``statistics.train_golden`` with the run's
               Stage I config) on phi_B of the whole training set: centre view + K views per image

Real images enter as canvases at the run's ``resize_size`` in [0, 1], exactly like the synthetic
images. Limitation: the baselines hold phi_A (and phi_B) features of the whole training set in
memory, n x (D_A + V D_B) floats; fine for the small data sets edgedd evaluates on, not for
ImageNet-scale folders.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file

from .augment import Views, center_crop, render_views, sample_views
from .backbones import BackboneInfo, encode, load_backbone, resolve_device
from .config import EVAL_MODES, RECIPES, AugmentConfig, EvalConfig, Preprocess, to_dict
from .data import CanvasDataset, canvas_loader, collate_canvases
from .images import LabelledImages, open_dataset
from .errors import EdgeddError
from .fidelity import synthetic_landing
from .device.ridge import select_ridge
from .heads import Fit, Sampler, ce_loss, fit_lbfgs, fit_ridge, kd_loss, mse_loss, new_probe, new_projector, train_reference
from .progress import Progress
from .statistics import train_golden
from .rundir import Run, load_run

MODES = EVAL_MODES
BASELINES = ("random", "centroids", "neighbors", "full")


def validate_config(cfg: EvalConfig) -> None:
    if cfg.protocol not in RECIPES:
        raise EdgeddError(f"unknown protocol {cfg.protocol!r}", f"choose one of {', '.join(RECIPES)}")
    if cfg.protocol == "converged" and cfg.views() < 1:
        raise EdgeddError("the converged protocol fits on cached views (got view_cache 0)", "pass --view-cache V with V >= 1, or --protocol reference")
    for name in ("probe_l2", "ridge"):
        if getattr(cfg, name) is None:
            continue
        if not (getattr(cfg, name) > 0 and math.isfinite(getattr(cfg, name))):
            raise EdgeddError(f"{name} must be a finite positive value (got {getattr(cfg, name)})", "the defaults are 1e-3")
    for name in ("epochs", "seeds", "eval_batch", "max_iter"):
        if getattr(cfg, name) < 1:
            raise EdgeddError(f"{name} must be at least 1 (got {getattr(cfg, name)})", "pass a positive value")
    if cfg.batch is not None and cfg.batch < 1:
        raise EdgeddError(f"batch must be at least 1 (got {cfg.batch})", "pass a positive batch size, or leave it unset for min(100, N)")
    if cfg.lr is not None and not cfg.lr > 0:
        raise EdgeddError(f"lr must be positive (got {cfg.lr})", "pass a positive learning rate, or leave it unset")
    if cfg.view_cache is not None and cfg.view_cache < 0:
        raise EdgeddError(f"view_cache must be 0 or more (got {cfg.view_cache})", "0 is the exact protocol, V > 0 caches V views per image")
    if not cfg.kd_temperature > 0:
        raise EdgeddError(f"kd_temperature must be positive (got {cfg.kd_temperature})", "the reference uses 4")
    if not 0 <= cfg.kd_alpha <= 1:
        raise EdgeddError(f"kd_alpha must lie in [0, 1] (got {cfg.kd_alpha})", "the reference uses 0.5")
    if cfg.num_workers < 0:
        raise EdgeddError(f"num_workers must be 0 or more (got {cfg.num_workers})", "pass 0 to decode in the main process")


def _generator(*parts) -> torch.Generator:
    """A CPU generator seeded from a purpose and a seed index: independent streams, same on any device."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _label_map(source: LabelledImages, class_names: list[str], what: str) -> np.ndarray:
    """source label -> run label, by class name (test folders may hold a subset of the classes)."""
    index = {c: i for i, c in enumerate(class_names)}
    unknown = [c for c in source.class_names if c not in index]
    if unknown:
        raise EdgeddError(
            f"{what} {source.name} has class(es) {', '.join(unknown[:5])} that the run does not know",
            f"use folders named after the run's classes ({', '.join(class_names[:10])})",
        )
    return np.asarray([index[c] for c in source.class_names], dtype=np.int64)


# ----------------------------------------------------------------------------- backbones


@dataclass(eq=False)
class Encoder:
    """A frozen backbone with its preprocessing: pixels in [0, 1] at ``input_size`` -> features."""

    model: torch.nn.Module
    info: BackboneInfo
    batch: int = 256

    @property
    def pp(self) -> Preprocess:
        return self.info.preprocess

    @property
    def input_size(self) -> int:
        return self.pp.input_size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return encode(self.model, x, self.pp, self.batch)

    def centre_view(self, canvases: torch.Tensor) -> torch.Tensor:
        """The eval view of square canvases: resize to ``resize_size`` then centre crop ``input_size``,
        i.e. the central input/resize fraction of the canvas, resampled to ``input_size``."""
        side = canvases.shape[-1]
        if side == self.pp.resize_size:
            return center_crop(canvases, self.input_size)  # exact, no resampling
        f = min(1.0, self.input_size / self.pp.resize_size)
        n = canvases.shape[0]
        box = torch.tensor([[(1 - f) / 2, (1 - f) / 2, (1 + f) / 2, (1 + f) / 2]]).repeat(n, 1)
        return render_views(canvases, Views(box, torch.zeros(n, dtype=torch.bool)), self.input_size)


def load_encoders(run: Run, eval_backbone, eval_weights, eval_crop_res, device, batch: int, need_a: bool) -> tuple[Encoder | None, Encoder]:
    """A exactly as distilled (weights hash checked) and B; B *is* A (one object) when unchanged."""
    a_meta, a_pp = run.backbone, run.preprocess
    name_b = eval_backbone or a_meta["name"]
    same = name_b == a_meta["name"] and eval_weights in (None, a_meta["weights"]) and eval_crop_res in (None, a_pp.input_size)
    seed = int(run.config.get("seed", 0))  # random weights are reproducible from the run's seed
    enc_a = Encoder(*run.load_backbone(device), batch) if same or need_a else None
    if same:
        return enc_a, enc_a
    weights_b = eval_weights or (a_meta["weights"] if name_b == a_meta["name"] else "hub")
    model, info = load_backbone(name_b, weights_b, input_size=eval_crop_res, device=device, seed=seed)
    return enc_a, Encoder(model, info, batch)


# ----------------------------------------------------------------------------- feature samplers


class FreshViews:
    """The exact protocol: every batch a new flip + RRC box per image, rendered at each encoder's
    input size from the same box, through the backbone. Encoders that are one object run once."""

    def __init__(self, canvases: torch.Tensor, encoders: list[Encoder], aug: AugmentConfig = AugmentConfig()):
        self.canvases, self.encoders, self.aug = canvases, encoders, aug
        self.n = canvases.shape[0]

    def epoch(self, gen: torch.Generator) -> torch.Tensor:
        return torch.randperm(self.n, generator=gen)

    def batch(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        views = sample_views(len(idx), self.aug, gen)
        x = self.canvases[idx.to(self.canvases.device)]
        done: dict[int, torch.Tensor] = {}
        for enc in self.encoders:
            if id(enc) not in done:
                done[id(enc)] = enc(render_views(x, views, enc.input_size))
        return tuple(done[id(enc)] for enc in self.encoders)


class CachedViews:
    """Features of V fixed views per image, (n, V, D) per encoder; each epoch one view per image."""

    def __init__(self, feats: tuple[torch.Tensor, ...]):
        self.feats = feats
        self.n, self.v = feats[0].shape[:2]
        self.pick = torch.zeros(self.n, dtype=torch.long)

    @classmethod
    def render(cls, canvases: torch.Tensor, encoders: list[Encoder], v: int, gen: torch.Generator,
               aug: AugmentConfig = AugmentConfig(), chunk: int = 64) -> "CachedViews":
        n = canvases.shape[0]
        views = sample_views(n * v, aug, gen)  # image i owns views i*V .. i*V + V - 1
        uniq = list({id(e): e for e in encoders}.values())
        parts: dict[int, list[torch.Tensor]] = {id(e): [] for e in uniq}
        for s in range(0, n, chunk):
            x = canvases[s : s + chunk].repeat_interleave(v, dim=0)
            vs = Views(views.boxes[s * v : (s + chunk) * v], views.flips[s * v : (s + chunk) * v])
            for e in uniq:
                parts[id(e)].append(e(render_views(x, vs, e.input_size)))
        full = {k: torch.cat(p).view(n, v, -1) for k, p in parts.items()}
        return cls(tuple(full[id(e)] for e in encoders))

    def epoch(self, gen: torch.Generator) -> torch.Tensor:
        self.pick = torch.randint(self.v, (self.n,), generator=gen)  # one view per image, then the order
        return torch.randperm(self.n, generator=gen)

    def batch(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        return tuple(f[idx.to(f.device), self.pick[idx].to(f.device)] for f in self.feats)


def make_sampler(canvases: torch.Tensor, encoders: list[Encoder], cfg: EvalConfig, seed: int) -> Sampler:
    if cfg.views() > 0:
        return CachedViews.render(canvases, encoders, cfg.views(), _generator("view-cache", seed))
    return FreshViews(canvases, encoders)


# ----------------------------------------------------------------------------- training: edgedd.heads


def fit_probe(sampler: Sampler, labels: torch.Tensor, num_classes: int, cfg: EvalConfig, gen: torch.Generator, device,
              teacher: torch.nn.Module | None = None, bar: Progress | None = None, tag: str = "") -> Fit:
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


def fit_projector(sampler: Sampler, cfg: EvalConfig, gen: torch.Generator, device, bar: Progress | None = None, tag: str = "",
                  labels: torch.Tensor | None = None) -> Fit:
    """CI projector P: D_B -> D_A on features (z_B, z_A) of the same views. The labels only make
    the cross-validation folds when ``cfg.ridge`` is None (the device's rule)."""
    proj = new_projector(sampler_dim(sampler, 0), sampler_dim(sampler, 1), gen, device)
    if cfg.protocol == "converged":
        fit = fit_ridge(proj, sampler.feats[0], sampler.feats[1], _ridge(sampler, cfg, labels))
        if bar is not None:
            bar.update(1, run=tag, loss=fit.loss_final)
        return fit
    batch = cfg.resolved_batch(sampler.n)
    return train_reference(proj, sampler, mse_loss, cfg.epochs, batch, cfg.projector_lr(batch), gen, bar, tag)


def _ridge(sampler: "CachedViews", cfg: EvalConfig, labels: torch.Tensor | None) -> float:
    if cfg.ridge is not None:
        return cfg.ridge
    if labels is None:
        raise ValueError("choosing the projector's ridge needs the synthetic images' labels")
    zb, za = (f.detach().cpu().double().numpy() for f in sampler.feats[:2])
    n, v = zb.shape[:2]
    return select_ridge(zb.reshape(n * v, -1), za.reshape(n * v, -1), np.repeat(np.arange(n), v), labels.cpu().numpy())[0]


def sampler_dim(sampler: Sampler, k: int) -> int:
    if isinstance(sampler, CachedViews):
        return int(sampler.feats[k].shape[-1])
    return int(sampler.encoders[k].info.num_features)


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
    return out


# ----------------------------------------------------------------------------- real images


class _IndexedCanvases(CanvasDataset):
    """Canvases with their dataset index, so a skipped (unreadable) image shifts nothing."""

    def __getitem__(self, i: int):
        return (*super().__getitem__(i), i)


def _collate_indexed(batch):
    images, labels, errors = collate_canvases([b[:3] for b in batch])
    return images, labels, errors, torch.tensor([b[3] for b in batch if b[0] is not None], dtype=torch.long)


def _subset(source: LabelledImages, idx: np.ndarray) -> LabelledImages:
    return LabelledImages(
        name=source.name, class_names=source.class_names, labels=source.labels[idx],
        paths=[source.paths[i] for i in idx] if source.paths is not None else None,
        pixels=source.pixels[idx] if source.pixels is not None else None,
    )


def load_canvases(source: LabelledImages, idx: np.ndarray, size: int, interpolation: str, cfg: EvalConfig, device) -> torch.Tensor:
    """The chosen real images as (n, 3, size, size) canvases in [0, 1], in ``idx`` order."""
    loader = canvas_loader(_subset(source, np.asarray(idx, dtype=np.int64)), size, interpolation, cfg.eval_batch, cfg.num_workers)
    parts = []
    for images, _, errors in loader:
        if errors:  # they were readable in the feature pass
            raise EdgeddError(f"cannot read image {errors[0]}", "keep the training data unchanged while evaluating")
        parts.append(images.to(device).float().div_(255))
    return torch.cat(parts)


@torch.no_grad()
def test_features(enc: Encoder, source: LabelledImages, label_map: np.ndarray, cfg: EvalConfig, device) -> tuple[torch.Tensor, torch.Tensor]:
    """phi_B of every readable test image: shorter side to resize_size, centre crop input_size."""
    feats, labels, skipped = [], [], []
    loader = canvas_loader(source, enc.pp.resize_size, enc.pp.interpolation, cfg.eval_batch, cfg.num_workers)
    for images, y, errors in loader:
        skipped.extend(errors)
        if images.shape[0]:
            feats.append(enc(center_crop(images.to(device).float().div_(255), enc.input_size)))
            labels.append(torch.from_numpy(label_map[y.numpy()]))
    if skipped:
        warnings.warn(f"{len(skipped)} unreadable test image(s) skipped, e.g. {skipped[0]}")
    if not feats:
        raise EdgeddError(f"no readable images in the test data {source.name}", "pass a folder of images")
    return torch.cat(feats), torch.cat(labels)


@dataclass
class TrainPass:
    """One streaming pass over the real training set (readable images only)."""

    index: np.ndarray  # (n,) dataset indices of the readable images
    labels: torch.Tensor  # (n,) run labels
    feats_a: torch.Tensor  # (n, D_A) phi_A of the centre crop (centroids, neighbors)
    feats_b: torch.Tensor  # (n, 1 + K, D_B) phi_B of the centre view and K views: Stage I's layout (full)


@torch.no_grad()
def train_pass(enc_a: Encoder, enc_b: Encoder, source: LabelledImages, label_map: np.ndarray, canvas: int, interpolation: str,
               cfg: EvalConfig, views: int, device, progress: bool) -> TrainPass:
    from torch.utils.data import DataLoader

    loader = DataLoader(_IndexedCanvases(source, canvas, interpolation), batch_size=cfg.eval_batch, shuffle=False,
                        num_workers=cfg.num_workers, collate_fn=_collate_indexed)
    gen = _generator("full-views")
    aug = AugmentConfig()
    idx_all, fa, fb, skipped = [], [], [], []
    with Progress(len(source), "evaluate: training-set features", enabled=None if progress else False) as bar:
        for images, _, errors, idx in loader:
            skipped.extend(errors)
            if images.shape[0]:
                x = images.to(device).float().div_(255)
                za = enc_a(center_crop(x, enc_a.input_size))
                # the centre view, then K views rendered one view at a time to bound memory
                zb = [za if enc_b is enc_a else enc_b(enc_b.centre_view(x))]
                zb += [enc_b(render_views(x, sample_views(x.shape[0], aug, gen), enc_b.input_size)) for _ in range(views)]
                zb = torch.stack(zb, dim=1)
                idx_all.append(idx.numpy())
                fa.append(za.cpu())
                fb.append(zb.cpu())
            bar.update(images.shape[0] + len(errors))
    if skipped:
        warnings.warn(f"{len(skipped)} unreadable training image(s) skipped, e.g. {skipped[0]}")
    if not idx_all:
        raise EdgeddError(f"no readable images in the training data {source.name}", "pass the data the run was distilled on")
    index = np.concatenate(idx_all)
    return TrainPass(index, torch.from_numpy(label_map[source.labels[index]]), torch.cat(fa), torch.cat(fb))


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


def select_neighbors(feats: torch.Tensor, labels: torch.Tensor, syn_feats: torch.Tensor, syn_labels: torch.Tensor) -> torch.Tensor:
    """For each synthetic image the real image of its class with the largest cos(phi_A(x), phi_A(s))
    (the reference code's cosine; Euclidean distance also weighs the feature norm). Ties: the first."""
    out = []
    for s, c in zip(syn_feats, syn_labels.tolist()):
        pool = torch.nonzero(labels == c).flatten()
        if len(pool) == 0:
            raise EdgeddError(f"the training data has no readable image of class {c}", "pass the data the run was distilled on")
        sim = torch.nn.functional.cosine_similarity(feats[pool].double(), s.double().unsqueeze(0), dim=1)
        out.append(pool[torch.argmax(sim)])
    return torch.stack(out)


# ----------------------------------------------------------------------------- the entry point


def _check_modes(modes) -> tuple[str, ...]:
    modes = tuple(dict.fromkeys(modes))
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise EdgeddError(f"unknown evaluation mode(s) {', '.join(bad) or '(none given)'}", f"choose from {', '.join(MODES)}")
    return modes


def evaluate_run(
    run_dir,
    test_data: str,
    modes=("normal",),
    eval_backbone: str | None = None,
    eval_weights: str | None = None,
    eval_crop_res: int | None = None,
    config: EvalConfig = EvalConfig(),
    baselines: bool = False,
    train_data: str | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate a run's synthetic set in each mode (and the baselines); see the module docstring."""
    modes = _check_modes(modes)
    validate_config(config)
    run = load_run(run_dir)
    test = open_dataset(test_data)
    test_map = _label_map(test, run.class_names, "test data")
    if baselines:
        train = open_dataset(train_data or run.train_data())
        train_map = _label_map(train, run.class_names, "training data")
        if not (run.directory / "stats.safetensors").is_file():
            raise EdgeddError(f"{run.directory} has no stats.safetensors (needed for the centroids baseline)", "re-run edgedd distill")
    device = resolve_device(config.device)
    # A is needed for CI/KD targets, the baselines' selections, and as B when B is not given;
    # with only `normal` on another B it is not loaded (nor its weights hash checked).
    need_a = baselines or "ci" in modes or "kd" in modes
    enc_a, enc_b = load_encoders(run, eval_backbone, eval_weights, eval_crop_res, device, config.eval_batch, need_a)
    if enc_a is not None and run.golden_weight.shape[1] != enc_a.info.num_features:
        raise EdgeddError(f"the golden classifier has {run.golden_weight.shape[1]} inputs, {enc_a.info.name} gives "
                          f"{enc_a.info.num_features} features", "the run directory is inconsistent; re-run edgedd distill")
    golden = torch.nn.Linear(run.golden_weight.shape[1], run.num_classes).to(device).requires_grad_(False)
    with torch.no_grad():
        golden.weight.copy_(run.golden_weight)
        golden.bias.copy_(run.golden_bias)

    # every feature pass first (test set once for B; the training set once for the baselines),
    # then one progress bar over all training epochs
    x_test, y_test = test_features(enc_b, test, test_map, config, device)
    real_sets = _baseline_sets(run, train, train_map, enc_a, enc_b, config, device, progress) if baselines else None
    c = run.num_classes
    per_fit = 1 if config.protocol == "converged" else config.epochs
    total = config.seeds * len(modes) * per_fit
    if baselines:
        total += config.seeds * (3 * per_fit + 1)

    def score(head: torch.nn.Module) -> tuple[float, float]:
        with torch.no_grad():
            return topk_accuracy(head(x_test), y_test)

    with Progress(total, "evaluate", enabled=None if progress else False) as bar:
        # ---- the synthetic set, every mode; per seed one view cache (if any) shared by the modes
        images, labels = run.images.to(device), run.labels
        encoders = [enc_b] + ([enc_a] if ("ci" in modes or "kd" in modes) else [])
        results: dict[str, list] = {m: [] for m in modes}
        fits: dict[str, list] = {m: [] for m in modes}
        for seed in range(config.seeds):
            cache = make_sampler(images, encoders, config, seed) if config.views() > 0 else None
            for mode in modes:
                # normal needs phi_B only; ci and kd need phi_B and phi_A of the same view
                k = 1 if mode == "normal" else 2
                sampler = CachedViews(cache.feats[:k]) if cache is not None else FreshViews(images, encoders[:k])
                gen = _generator("train", seed)  # the same views and order in every mode: a paired comparison
                tag = f"{mode}/{seed}"
                if mode == "ci":
                    fit = fit_projector(sampler, config, gen, device, bar, tag, labels)
                    results[mode].append(score(torch.nn.Sequential(fit.head, golden)))
                else:
                    fit = fit_probe(sampler, labels, c, config, gen, device, golden if mode == "kd" else None, bar, tag)
                    results[mode].append(score(fit.head))
                fits[mode].append(fit.report())

        out = {
            "method": run.summary.get("method", run.config.get("method")),
            "backbone": run.backbone["name"],
            "eval_backbone": enc_b.info.name,
            "ipc": run.ipc,
            "protocol": config.protocol,
            "flow_cosine": run.summary.get("flow_cosine"),
            "modes": {m: summarise(s, fits[m]) for m, s in results.items()},
            "config": to_dict(config),
            "test_images": int(len(y_test)),
            "golden": {k: v for k, v in run.stage1.get("golden", {}).items() if k != "candidates"},
        }
        if enc_a is not None and (run.directory / "stats.safetensors").is_file():
            out["landing"] = synthetic_landing(enc_a, images, enc_a.input_size, labels, _centres(run), run.golden_weight, run.golden_bias,
                                               seed=int(run.config.get("seed", 0)))
        if baselines:
            out["baselines"] = _run_baselines(real_sets, run, enc_b, config, device, score, bar)
    return out


def _centres(run: Run) -> torch.Tensor:
    return load_file(run.directory / "stats.safetensors")["centres"]


@dataclass
class BaselineSets:
    """What the baselines train on: the real canvases fixed by phi_A, and the means to draw more."""

    fixed: dict[str, tuple[torch.Tensor, torch.Tensor]]  # centroids, neighbors: canvases in [0, 1], labels
    draw_random: Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # seed -> canvases, labels
    full: TrainPass


def _baseline_sets(run: Run, train: LabelledImages, train_map: np.ndarray, enc_a: Encoder, enc_b: Encoder, cfg: EvalConfig,
                   device, progress: bool) -> BaselineSets:
    pp = run.preprocess
    tp = train_pass(enc_a, enc_b, train, train_map, pp.resize_size, pp.interpolation, cfg, run.stage1_config().golden_views, device, progress)
    centres = _centres(run)
    syn_a = enc_a(center_crop(run.images.to(device), enc_a.input_size)).cpu()

    def real(pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Canvases at the run's resolution (as the synthetic images) and labels of the images at ``pos``."""
        return load_canvases(train, tp.index[pos.numpy()], pp.resize_size, pp.interpolation, cfg, device), tp.labels[pos]

    return BaselineSets(
        fixed={"centroids": real(select_centroids(tp.feats_a, tp.labels, centres, run.ipc)),
               "neighbors": real(select_neighbors(tp.feats_a, tp.labels, syn_a, run.labels))},
        draw_random=lambda seed: real(select_random(tp.labels, run.num_classes, run.ipc, _generator("random-baseline", seed))),
        full=tp,
    )


def _run_baselines(sets: BaselineSets, run: Run, enc_b: Encoder, cfg: EvalConfig, device, score, bar: Progress) -> dict:
    c = run.num_classes

    def normal_probe(canvases: torch.Tensor, labels: torch.Tensor, seed: int, tag: str) -> tuple[tuple[float, float], dict]:
        """The ``normal`` protocol on real canvases, exactly as on the synthetic set."""
        fit = fit_probe(make_sampler(canvases, [enc_b], cfg, seed), labels, c, cfg, _generator("train", seed), device, bar=bar, tag=tag)
        return score(fit.head), fit.report()

    out: dict[str, list] = {b: [] for b in BASELINES}
    fits: dict[str, list] = {b: [] for b in BASELINES}
    s1 = run.stage1_config()
    for seed in range(cfg.seeds):
        x, y = sets.draw_random(seed)
        for name, (x, y) in [("random", (x, y)), *sets.fixed.items()]:
            sc, rep = normal_probe(x, y, seed, f"{name}/{seed}")
            out[name].append(sc)
            fits[name].append(rep)
        # full: the golden classifier's own recipe (Stage I) on phi_B of the whole training set
        w, b, rep = train_golden(sets.full.feats_b.numpy(), sets.full.labels.numpy(), c, replace(s1, seed=s1.seed + seed), device,
                                 progress=False)
        head = torch.nn.Linear(w.shape[1], c).to(device)
        with torch.no_grad():
            head.weight.copy_(w)
            head.bias.copy_(b)
        bar.update(1, run=f"full/{seed}")
        out["full"].append(score(head))
        fits["full"].append({"loss_start": rep["loss_start"], "loss_final": rep["loss_final"], "steps": rep["steps"], "stalled": rep["stalled"]})
    return {name: summarise(s, fits[name]) for name, s in out.items()}
