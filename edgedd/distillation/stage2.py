"""Stage II: the synthetic pyramid, trained by SFM (``sfm``, ``sfm_anchor``, ``sfm_decouple``) or
the LGM baseline.

:func:`start` makes the loop's state (fresh, or from a checkpoint), :func:`step_function` picks
the method's step once, :func:`steps` runs the steps and yields after each one; checkpoints,
previews, metrics and progress are the caller's (``edgedd.distill``). All randomness is drawn from
the state's one generator, in the same order on every rank and on resume.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgedd.backbones.forward import backbone_autocast as _autocast
from edgedd.backbones.loader import BackboneInfo
from edgedd.core.config import PROBE_METHODS, REAL_INITS, SUBCENTRE_METHODS, DistillConfig
from edgedd.core.errors import EdgeddError
from edgedd.core.images import LabelledImages
from edgedd.host.augment import StepDraws, apply_augment, augment, normalize
from edgedd.host.data import CanvasDataset
from edgedd.host.distributed import Dist, on_all_ranks
from edgedd.host.memory import PhaseMemory
from edgedd.host.rng import numpy_generator, torch_generator

from .checkpoint import adam, load_checkpoint
from .chunked import auto_chunk_size, chunked_step
from .lgm import StepBatches, lgm_loss, random_head
from .losses import (
    ProbeTargets,
    anchor_loss,
    decouple_loss,
    probe_targets,
    ridge_probe_loss,
    sfm_loss,
    subcentre_loss,
    synthetic_flow,
)
from .pyramid import Pyramid, extension_steps
from .trainingset import TrainingFeatures, centre_features, training_features

# ----------------------------------------------------------------------------- losses


def real_init_images(
    source: LabelledImages,
    ipc: int,
    size: int,
    interpolation: str,
    seed: int,
    what: str = "--init real",
    picks: list[np.ndarray] | None = None,
) -> torch.Tensor:
    """``--init real``: per class ``ipc`` readable images drawn at random (seeded), as (C * ipc, 3,
    size, size) canvases in [0, 1], class-major like the synthetic labels (``picks``: class c's
    dataset positions in that order instead of a random draw). Unreadable images are passed over; a
    class with fewer readable images than ``ipc`` repeats them (with a warning: the copies start
    equal and part only through their augmentations); a class with none is refused."""
    rng = numpy_generator("real-init", seed)  # its own stream: the run's generator draws stay as with noise init
    data = CanvasDataset(source, size, interpolation)
    out, short = [], []
    for c in range(source.num_classes):
        found = []
        order = picks[c] if picks is not None else rng.permutation(np.flatnonzero(source.labels == c))
        for i in order:
            canvas, _, _ = data[int(i)]
            if canvas is not None:
                found.append(canvas)
            if len(found) == ipc:
                break
        if not found:
            raise EdgeddError(
                f"class {source.class_names[c]!r} has no readable image to start {what} from", "use --init noise"
            )
        if len(found) < ipc:
            short.append(source.class_names[c])
        out.extend(found[j % len(found)] for j in range(ipc))
    if short:
        warnings.warn(
            f"{what}: {len(short)} class(es) have fewer than {ipc} readable images (e.g. {short[0]!r}); their "
            "images repeat",
            stacklevel=2,
        )
    return (
        torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div(255)
    )  # np.stack copies: canvases may be read-only


def initial_images(
    source: LabelledImages, cfg: DistillConfig, interpolation: str, features: TrainingFeatures | None = None
) -> torch.Tensor:
    """The step-0 canvases of --init real (drawn images), --init coreset (the images nearest the
    class's sub-centres in ``features``, edgedd.distillation.subcentres.coreset_positions) or --init
    mix (means of cfg.mix drawn images)."""
    if cfg.init == "real":
        return real_init_images(source, cfg.ipc, cfg.syn_res, interpolation, cfg.seed)
    if cfg.init == "coreset":
        from .subcentres import coreset_positions

        if features is None:
            raise EdgeddError(
                "--init coreset needs the training images' features", "pass the run's trainingset.training_features"
            )
        picks = coreset_positions(features, source.num_classes, cfg.ipc, cfg.seed)
        return real_init_images(source, cfg.ipc, cfg.syn_res, interpolation, cfg.seed, "--init coreset", picks)
    x = real_init_images(source, cfg.ipc * cfg.mix, cfg.syn_res, interpolation, cfg.seed, f"--init mix (x{cfg.mix})")
    return x.view(source.num_classes * cfg.ipc, cfg.mix, *x.shape[1:]).mean(1)


def view_features(
    model, images: torch.Tensor, cfg: DistillConfig, info: BackboneInfo, gen: torch.Generator
) -> torch.Tensor:
    """A = augs_per_batch independent augmented views of every image: (A, N, D) features."""
    n, a = images.shape[0], cfg.augs_per_batch
    draws = StepDraws.draw(gen, n * a, cfg.augment, cfg.crop_res, images.dtype, canvas=images.shape[-1])
    # pass by pass over the same images (views pass-major: v = pass * n + row), so autograd keeps
    # one copy of the images for all A resamplings instead of an A-times tiled one
    passes = [apply_augment(images, draws.params(p * n, (p + 1) * n), cfg.crop_res) for p in range(a)]
    views = passes[0] if a == 1 else torch.cat(passes)
    with _autocast(images.device, cfg.amp):
        z = model(normalize(views, info.preprocess.mean, info.preprocess.std))
    return z.float().view(a, n, -1)


@dataclass(frozen=True)
class RealTargets:
    """What sfm_sub, sfm_probe and sfm_sub_probe match besides Stage I's centres: the (N, D) per-image
    sub-centres (sfm_sub's term; edgedd.distillation.subcentres) and the real centre-crop features'
    constants of the ridge probe (sfm_probe's term; losses.ProbeTargets)."""

    sub: torch.Tensor | None = None
    probe: ProbeTargets | None = None


def feature_loss(
    z: torch.Tensor,
    cfg: DistillConfig,
    flow_real: torch.Tensor,
    centres_real: torch.Tensor,
    targets: RealTargets | None = None,
) -> torch.Tensor:
    """SFM / sfm_anchor / sfm_sub / sfm_probe / sfm_sub_probe / sfm_decouple loss of the (N, D) per-image
    features. sfm_sub_probe is sfm_sub's loss plus sfm_probe's term: L_sub + kappa L_probe."""
    if cfg.method == "sfm":
        return sfm_loss(z, flow_real, cfg.flow_denominator)
    if cfg.method == "sfm_anchor":
        return anchor_loss(z, flow_real, centres_real, cfg.beta, cfg.flow_denominator)
    if cfg.method in SUBCENTRE_METHODS + PROBE_METHODS:
        if targets is None:
            raise EdgeddError(
                f"--method {cfg.method} needs its real targets",
                "build them with stage2.real_targets (stage2.step_function does)",
            )
        if cfg.method in SUBCENTRE_METHODS:
            loss = subcentre_loss(
                z, flow_real, centres_real, targets.sub.to(z.device), cfg.beta, cfg.gamma, cfg.flow_denominator
            )
        else:
            loss = anchor_loss(z, flow_real, centres_real, cfg.beta, cfg.flow_denominator)
        if cfg.method in PROBE_METHODS:
            loss = loss + cfg.kappa * ridge_probe_loss(z, targets.probe, cfg.probe_ridge)
        return loss
    return decouple_loss(z, centres_real, cfg.alpha)


def sfm_step_loss(model, images, cfg, info, gen, flow_real, centres_real, targets=None) -> torch.Tensor:
    """One pass: features of the A views averaged per image, then the loss (graph kept). The plain
    reference the tests and benchmarks hold the chunked / sharded step (``edgedd.distillation.chunked``) to."""
    return feature_loss(view_features(model, images, cfg, info, gen).mean(0), cfg, flow_real, centres_real, targets)


def real_targets(
    model, info: BackboneInfo, cfg: DistillConfig, source: LabelledImages, device, features: TrainingFeatures
) -> RealTargets:
    """sfm_sub's and sfm_probe's fixed targets from ``features``, the training images' centre-crop phi_A
    (edgedd.distillation.trainingset; targets: edgedd.distillation.subcentres). sfm_sub: IPC k-means
    sub-centres per class matched to the step-0 images (``--init real`` / ``mix``: the real images
    drawn, recomputed here so a resumed run gets the same targets; ``coreset``: image i of a class was
    picked as the image nearest centre i (the same k-means), so it takes centre i, what matching its
    features would give; ``noise``: their features say nothing yet, so image i of a class takes centre
    i). sfm_probe: at most ``PROBE_MAX_REAL`` of the features, drawn by the seed. sfm_sub_probe: both."""
    from .subcentres import PROBE_MAX_REAL, subcentre_targets

    feats, labels = features.feats, features.labels
    probe = {}
    if cfg.method in PROBE_METHODS:
        keep = np.sort(numpy_generator("probe-real", cfg.seed).permutation(len(feats))[:PROBE_MAX_REAL])
        real, real_labels = torch.from_numpy(feats[keep]).float(), torch.from_numpy(labels[keep])
        probe = dict(probe=probe_targets(real.to(device), real_labels.to(device), source.num_classes))
    if cfg.method not in SUBCENTRE_METHODS:
        return RealTargets(**probe)
    z0 = None
    if cfg.init in ("real", "mix"):
        x0 = initial_images(source, cfg, info.preprocess.interpolation)
        z0 = torch.cat(
            [
                centre_features(model, info, x0[s : s + 64].to(device), amp=cfg.amp).double().cpu()
                for s in range(0, len(x0), 64)
            ]
        ).numpy()
    sub = subcentre_targets(feats, labels, z0, source.num_classes, cfg.ipc, cfg.seed).to(device)
    return RealTargets(sub=sub, **probe)


def lgm_step_loss(model, images, labels, num_classes, real_batch, cfg, info, gen) -> torch.Tensor:
    """LGM: a fresh random head; the real batch (one augmentation pass each, no graph) against
    the synthetic set tiled A times with independent augmentations (with a graph)."""
    x_real, y_real = real_batch
    pp = info.preprocess
    with torch.no_grad(), _autocast(images.device, cfg.amp):
        z_real = model(normalize(augment(x_real, cfg.augment, cfg.crop_res, gen), pp.mean, pp.std)).float()
    z_syn = view_features(model, images, cfg, info, gen).flatten(0, 1)
    w, b = random_head(num_classes, z_syn.shape[1], gen)
    return lgm_loss(z_syn, labels.repeat(cfg.augs_per_batch), z_real, y_real, w, b)


def real_batches(source: LabelledImages, cfg: DistillConfig, interpolation: str, start: int, device, num_workers: int):
    """LGM's real images: IPC * A * C canvases per step, resumable (see StepBatches)."""
    from torch.utils.data import DataLoader

    from edgedd.host.data import collate_canvases

    batch = cfg.ipc * cfg.augs_per_batch * source.num_classes
    loader = DataLoader(
        CanvasDataset(source, cfg.syn_res, interpolation),  # the same canvases as Stage I
        batch_sampler=StepBatches(len(source), batch, cfg.seed, start, cfg.iterations),
        num_workers=num_workers,
        collate_fn=collate_canvases,
        pin_memory=device.type == "cuda",
    )
    for images, labels, _errors in loader:  # unreadable images were counted in Stage I; skip them
        yield images.to(device, non_blocking=True).float().div_(255), labels.to(device)


@torch.no_grad()
def flow_cosine(
    model, images: torch.Tensor, info: BackboneInfo, flow_real: torch.Tensor, num_classes: int, amp: bool = True
) -> float:
    """The paper's fidelity metric: cos(F_syn, F_real) on centre-cropped synthetic images."""
    z = centre_features(model, info, images, amp=amp)
    f_syn = synthetic_flow(z.double(), num_classes)
    return float(
        torch.nn.functional.cosine_similarity(f_syn.flatten(), flow_real.double().flatten().to(f_syn.device), dim=0)
    )


# ----------------------------------------------------------------------------- the loop


@dataclass
class Loop:
    """What the steps change, all of it saved in a checkpoint (except ``step_memory``)."""

    pyr: Pyramid
    opt: torch.optim.Optimizer
    gen: torch.Generator  # the same on every rank: all draw the same sequence
    step: int  # steps done
    loss: float  # the last step's loss (nan before the first)
    step_memory: dict | None = None  # one step's own working memory, measured once (see steps)

    @property
    def resolution(self) -> int:
        return self.pyr.levels[-1].shape[-1]


def start(
    *,
    cfg: DistillConfig,
    source: LabelledImages,
    interpolation: str,
    device,
    group: Dist,
    rows: tuple[int, int],
    total: int,
    checkpoint: Path | None,
    run_fp: str,
    features: TrainingFeatures | None = None,
) -> Loop:
    """This rank's ``rows`` of the pyramid: from ``checkpoint`` (resume), else from noise or, with
    ``--init real`` / ``coreset`` / ``mix``, from training images (``coreset`` picks them by ``features``)."""
    gen = torch_generator(cfg.seed, device=device)  # the run's main stream
    if checkpoint is not None:
        step, pyr, opt, loss = load_checkpoint(
            checkpoint,
            run_fp=run_fp,
            syn_res=cfg.syn_res,
            lr=cfg.lr,
            gen=gen,
            device=device,
            group=group,
            rows=rows,
            total=total,
        )
        return Loop(pyr, opt, gen, step, loss)
    if cfg.init in REAL_INITS:
        real = initial_images(source, cfg, interpolation, features)[rows[0] : rows[1]]
        pyr = Pyramid.from_images(real.to(device), rows, total)
    else:
        pyr = Pyramid.init(total, cfg.syn_res, gen, device, rows)
    return Loop(pyr, adam(pyr.levels, cfg.lr), gen, 0, float("nan"))


def step_function(
    *,
    loop: Loop,
    model,
    info: BackboneInfo,
    cfg: DistillConfig,
    source: LabelledImages,
    device,
    group: Dist,
    flow_real: torch.Tensor,
    centres_real: torch.Tensor,
    chunk_size: int | None,
    num_workers: int,
    features: TrainingFeatures | None = None,
) -> tuple[Callable[[Loop], torch.Tensor], int]:
    """The method's step (gradients into the pyramid, the loss returned) and the chunk size it
    uses: SFM in one pass or chunks, on one rank or several (edgedd.distillation.chunked; ``chunk_size`` None
    is sized to the free memory now); LGM in one pass (its loss is not a function of per-image
    features alone). sfm_sub, sfm_probe and sfm_sub_probe take their targets from ``features`` (the run's
    edgedd.distillation.trainingset pass; None: made here)."""
    if cfg.method == "lgm":
        c = source.num_classes
        labels = torch.arange(c, device=device).repeat_interleave(cfg.ipc)
        reals = real_batches(source, cfg, info.preprocess.interpolation, loop.step, device, num_workers)

        def lgm_step(loop: Loop) -> torch.Tensor:
            loss = lgm_step_loss(model, loop.pyr.decode(), labels, c, next(reals), cfg, info, loop.gen)
            loss.backward()
            return loss

        return lgm_step, 0
    chunk = (
        auto_chunk_size(model, loop.pyr, cfg, info, device, _autocast(device, cfg.amp))
        if chunk_size is None
        else chunk_size
    )
    targets = None
    if cfg.method in SUBCENTRE_METHODS + PROBE_METHODS:
        if features is None:
            features = training_features(model, info, source, device, num_workers=num_workers, amp=cfg.amp)
        targets = real_targets(model, info, cfg, source, device, features)

    def sfm_step(loop: Loop) -> torch.Tensor:
        return chunked_step(
            model,
            loop.pyr,
            cfg,
            info,
            loop.gen,
            lambda z: feature_loss(z, cfg, flow_real, centres_real, targets),
            chunk,
            _autocast(device, cfg.amp),
            group,
        )

    return sfm_step, chunk


def step_lr(cfg: DistillConfig, i: int) -> float:
    """The learning rate of step ``i`` (0-based) of ``cfg.iterations``: ``cfg.lr`` throughout
    (``constant``), or cosine-annealed from it towards 0 (``cosine``):

        lr_i = lr * (1 + cos(pi * i / T)) / 2,    T = iterations                        (SGDR, no restart)

    Stage II's gradient is one random view per image per step, so a constant rate ends on one noisy
    step; the annealed rate's last steps are small, meant to average that noise out (measured:
    docs/RESULTS.md, "Where Stage II starts")."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * (1 + math.cos(math.pi * i / cfg.iterations)) / 2


def steps(
    loop: Loop, step: Callable[[Loop], torch.Tensor], *, cfg: DistillConfig, stop: int, memory: PhaseMemory
) -> Iterator[Loop]:
    """Steps ``loop.step`` .. ``stop`` - 1, yielding ``loop`` after each (``loop.step`` = steps
    done). A non-finite loss stops the run before it reaches a checkpoint or the result."""
    ext = extension_steps(cfg.iterations, cfg.syn_res, cfg.extend_every)
    first = loop.step
    for i in range(first, stop):
        if loop.pyr.grow(i, ext, loop.gen):
            loop.opt = adam(loop.pyr.levels, cfg.lr)  # reset at each extension (reference)
        # The phase's peak includes the synthetic set's own state (levels, Adam moments: the
        # same for every method), created inside it as the pyramid grows, and the framework's
        # lazy first-step allocations. The step's working memory is measured once, on the first
        # full-resolution step of this process whose state already exists.
        measure = (
            loop.step_memory is None and i > first and loop.pyr.full and len(loop.opt.state) == len(loop.pyr.levels)
        )
        in_step = memory.nested() if measure else None
        loop.opt.zero_grad(set_to_none=True)
        loss = step(loop)
        for group in loop.opt.param_groups:  # a function of the step alone: a resumed run takes the same
            group["lr"] = step_lr(cfg, i)
        loop.opt.step()
        loop.loss = loss.item()
        if not math.isfinite(loop.loss):
            raise on_all_ranks(
                EdgeddError(
                    f"the loss became {loop.loss} at step {i + 1} of {cfg.iterations}",
                    "the learning rate is likely too high (lower --lr) or the Stage I statistics are damaged "
                    "(rerun into a new --out with --no-cache)",
                )
            )
        if in_step is not None:
            loop.step_memory = {**in_step.peak_mb(), "step": i}
        loop.step = i + 1
        yield loop
