"""Typed configuration. Every output file carries the config that made it (``to_dict``).

Defaults are the reference defaults of ``shared/spec/METHOD.md``; fields marked *(choice)* are
where the sources leave a detail open. A config's :func:`fingerprint` covers only the fields that
change the result, so a run can be resumed on another device or with other worker counts.

The choices (``METHODS``, ``RECIPES``, ...) and the dataclasses' defaults are also the CLI's
(``edgedd.cli.host``): its options are built from them, so ``--help`` shows what the library does.
Standard library only: a device install imports this module (``edgedd.device.is_device_module``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

METHODS = ("sfm", "sfm_anchor", "sfm_sub", "sfm_probe", "sfm_sub_probe", "sfm_decouple", "lgm")
# the methods with sfm_sub's per-image sub-centre term, and those with sfm_probe's ridge-probe term
SUBCENTRE_METHODS = ("sfm_sub", "sfm_sub_probe")
PROBE_METHODS = ("sfm_probe", "sfm_sub_probe")
# How a linear head is fitted (edgedd.host.heads): the golden classifier, the evaluation protocol and
# pack's projector each choose one of these.
RECIPES = ("converged", "reference")
FLOW_DENOMINATORS = ("classes", "reference")
LR_SCHEDULES = ("constant", "cosine")  # Stage II's learning rate over the steps (edgedd.distillation.stage2.step_lr)
CROP_SAMPLERS = ("torchvision", "reference")
# how the synthetic pyramid starts (edgedd.distillation.stage2.initial_images)
INITS = ("noise", "real", "coreset", "mix")
REAL_INITS = ("real", "coreset", "mix")  # the inits that start from training images
EVAL_MODES = ("normal", "ci", "kd")  # edgedd.evaluate: fresh probe, classifier inheritance, KD
BASELINES = (
    "random",
    "centroids",
    "neighbors",
    "kcentre",
    "herding",
    "full",
)  # edgedd.evaluation.baselines: real-image sets
SELECTED = len(BASELINES) - 1  # the baselines trained with the normal protocol (all but full)
# --augs-per-batch when not given: DistillConfig.augs_per_batch, except for --method lgm (LGM's reference value)
LGM_AUGS_PER_BATCH = 10
# EvalConfig.view_cache when not given, under the converged protocol (the reference protocol: 0)
CONVERGED_VIEW_CACHE = 64


@dataclass(frozen=True)
class Preprocess:
    """How pixels reach the backbone; it travels with every synthetic set.

    Real images: shorter side resized to ``resize_size`` (``interpolation``), centre-cropped to a
    ``resize_size`` square (the *canvas*, also the synthetic resolution), then centre-cropped (or,
    for augmented views, randomly resized-cropped) to ``input_size`` and normalised with
    ``(x - mean) / std``. Synthetic pixels are stored in [0, 1] *before* normalisation.
    """

    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(
            input_size=int(d["input_size"]),
            resize_size=int(d["resize_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            interpolation=str(d["interpolation"]),
            crop_pct=float(d["crop_pct"]),
        )


@dataclass(frozen=True)
class AugmentConfig:
    """Differentiable augmentation of METHOD.md (reference values)."""

    flip_p: float = 0.5
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    noise_p: float = 0.5
    noise_mean: float = 0.5  # the reference code's value; kept for fidelity, configurable
    noise_std: float = 0.2
    # "torchvision": RandomResizedCrop's rule, boxes inside the image (10 tries, then the whole
    # image; mean area 0.478). "reference": the reference code's boxes, never rejected, so up to
    # sqrt(4/3) = 1.155x wide and past the edge, zero padding there (mean area 0.540, ~14% over).
    crop_sampler: str = "torchvision"
    # Probability that a view is the eval view instead: the canvas's exact centre crop, not flipped
    # (what the probes' test images and the device see; edgedd.host.augment.eval_box). 0: never.
    centre_p: float = 0.0


# The views the device fits its projector on (pack's targets; the projector-aware term's inner fit):
# view 0 of every image is its eval view (the centre crop), the rest flip + random-resized crops of at
# least half the image. Why not METHOD.md's 8-100% crops: the projector is applied to real images'
# centre crops, and a fit on heavy crops spends its few views far from them (docs/METHOD.md,
# "The device's views"; figures in docs/RESULTS.md).
DEVICE_VIEW_CROP_MIN = 0.5


def device_view_augment(crop_min: float = DEVICE_VIEW_CROP_MIN) -> AugmentConfig:
    """The random part of the device's views: flips and crops of area >= ``crop_min``, no noise."""
    return AugmentConfig(crop_scale=(crop_min, 1.0), noise_p=0.0)


@dataclass(frozen=True)
class StageIConfig:
    """Stage I: class centres and the golden full-data linear classifier.

    ``golden_recipe``: "converged" (edgedd's default, :mod:`edgedd.host.heads`): L2-regularised logistic
    regression solved to its optimum by L-BFGS, with the L2 strength and the inputs (centre crops
    only, or centre crops + the cached views) chosen on a held-out slice of the training set, then
    refitted on all the rest (the slice stays unseen, so its top-1 is the shipped classifier's). "reference":
    METHOD.md's Adam recipe (``golden_epochs`` epochs at
    ``golden_lr``), which under-trains on small data sets.
    """

    batch_size: int = 64
    # (choice) the golden probe trains on cached features of `golden_views` flip+RRC views per
    # image, drawn once in the statistics pass, instead of re-running the backbone every epoch.
    golden_views: int = 4
    golden_recipe: str = "converged"
    golden_epochs: int = 10  # reference recipe
    golden_batch: int = 128  # reference recipe
    golden_lr: float | None = None  # reference recipe; None: 1e-3 * golden_batch / 256 (METHOD.md)
    golden_holdout: float = 0.1  # converged: the held-out slice that picks L2 and the inputs
    golden_l2_grid: tuple[float, ...] = (1e-2, 1e-3, 1e-4, 1e-5)  # converged: relative L2 (heads.py eq. 1)
    golden_select_max: int = 20_000  # converged: at most this many images fit each candidate
    golden_max_iter: int = 500  # converged: L-BFGS iterations per fit
    seed: int = 0

    def resolved_golden_lr(self) -> float:
        return self.golden_lr if self.golden_lr is not None else 1e-3 * self.golden_batch / 256


# At most this many of the golden classifier's held-out training images are used where a real image
# checks the edge path (pack's expectation, pack's and evaluate's projector strength): they bound the
# time, spread evenly over the slice (edgedd.distillation.stage1.heldout_images).
HELDOUT_IMAGES = 1000


# The largest synthetic or crop resolution accepted (--syn-res, --crop-res, --eval-crop-res,
# --edge-crop-res): above any backbone's native size (the zoo's largest is 518), and small enough
# that one float32 image (3 x 2048^2 x 4 B = 48 MB) and a batch of them fit; 100,000 would ask
# for 120 GB per image and end in an allocation traceback.
MAX_RESOLUTION = 2048


# Stage II's loss views per method: METHOD.md's reference (flip + random-resized crops of 8-100% +
# additive noise with p 0.5) for the paper's SFM and the other methods; edgedd's sfm_sub, sfm_probe
# and sfm_sub_probe take their loss on the milder views the probes and the device see (crops of >= 25%,
# no noise), half of them the eval view itself (the centre crop their targets and Stage I's centres
# are taken on). Measured in docs/RESULTS.md, "The default" (also why every method keeps the
# reference lr: at a larger one the probe gains but the set teaches another network's projector
# less); sfm_probe and sfm_sub_probe were measured only with these views.
_EVAL_LIKE_VIEWS = AugmentConfig(crop_scale=(0.25, 1.0), noise_p=0.0, centre_p=0.5)
METHOD_VIEWS: dict[str, AugmentConfig] = {m: _EVAL_LIKE_VIEWS for m in ("sfm_sub", "sfm_probe", "sfm_sub_probe")}


def method_views(
    method: str,
    *,
    crop_sampler: str | None = None,
    crop_min: float | None = None,
    crop_max: float | None = None,
    noise_p: float | None = None,
    centre_p: float | None = None,
) -> AugmentConfig:
    """The loss views ``method`` runs with: its METHOD_VIEWS entry, else the reference, with each field
    given (not None) on top: the CLI's --crop-sampler / --crop-min / --noise-p, bench overrides."""
    base = METHOD_VIEWS.get(method, AugmentConfig())
    lo, hi = base.crop_scale
    return dataclasses.replace(
        base,
        crop_sampler=base.crop_sampler if crop_sampler is None else crop_sampler,
        crop_scale=(lo if crop_min is None else crop_min, hi if crop_max is None else crop_max),
        noise_p=base.noise_p if noise_p is None else noise_p,
        centre_p=base.centre_p if centre_p is None else centre_p,
    )


@dataclass(frozen=True)
class DistillConfig:
    """Stage II: Statistical Flow Matching."""

    # edgedd's default (docs/RESULTS.md, "The default: sfm_sub_probe"); "sfm" is the paper's
    method: str = "sfm_sub_probe"
    ipc: int = 1
    # edgedd's default: per class the real images nearest its k-means sub-centres in phi_A (docs/METHOD.md,
    # "Initialisation"); "real": random real images; "noise": the reference's 1x1 noise pyramid
    init: str = "coreset"
    mix: int = 4  # --init mix: each image the mean of this many random real images of its class
    # > 0: every image kept at least this copy ratio from the training images (edgedd.distillation.copyfloor), in
    # pixels and (copy_floor_features) phi_A, by a hinge of this weight
    min_copy_ratio: float = 0.0
    copy_weight: float = 100.0
    copy_floor_features: bool = True  # the floor in phi_A of the centre crop too (one more forward per step)
    iterations: int = 5000
    lr: float = 2e-3
    # "constant": every step at lr (the reference); "cosine": lr * (1 + cos(pi * i / iterations)) / 2 at
    # step i, so the last steps average out the views' noise instead of ending on one noisy step
    lr_schedule: str = "constant"
    syn_res: int = 256
    crop_res: int = 224
    augs_per_batch: int = 1  # LGM's reference value is LGM_AUGS_PER_BATCH (the CLI picks it for --method lgm)
    extend_every: int = 200
    alpha: float = 0.5  # sfm_decouple: alpha * MSE(target) + (1 - alpha) * MSE(non-target)
    beta: float = (
        10.0  # sfm_anchor: weight of the centre anchor (losses.anchor_loss); docs/RESULTS.md: how 10 was chosen
    )
    gamma: float = 10.0  # sfm_sub, sfm_sub_probe: weight of the per-image sub-centre term (losses.subcentre_loss)
    kappa: float = 10.0  # sfm_probe, sfm_sub_probe: weight of the ridge-probe term (losses.ridge_probe_loss)
    probe_ridge: float = 0.1  # the ridge-probe term's relative ridge lam / mean diag(X X^T) (losses eq. 5)
    flow_denominator: str = "classes"  # "reference" reproduces the reference code's (N - 1)
    seed: int = 0
    amp: bool = True  # bf16 autocast, CUDA only; CPU always runs fp32
    augment: AugmentConfig | None = None  # None: the method's loss views (method_views), filled in on construction
    # Projector-aware distillation (edgedd.distillation.projector_aware): surrogate edge backbones B' ("name" or
    # "name@input_size"); none: off. Their term's weight, views per image, the relative ridge
    # strengths it averages over, and the real images per step it is scored on.
    surrogates: tuple[str, ...] = ()
    surrogate_weight: float = 1.0
    surrogate_views: int = 1
    surrogate_ridge: tuple[float, ...] = (0.1, 1.0)
    surrogate_real: int = 1000
    surrogate_crop_min: float = DEVICE_VIEW_CROP_MIN  # its views' smallest crop area: pack's --view-crop-min

    def __post_init__(self):
        # augment left None takes the method's loss views (method_views), so every config, and every
        # run.json, holds the views used. dataclasses.replace(cfg, method=m) keeps cfg's views; pass
        # augment=None as well to take m's.
        if self.augment is None:
            object.__setattr__(self, "augment", method_views(self.method))


@dataclass(frozen=True)
class RunOptions:
    """edgedd.distill: how to run, not what to compute: never part of a run's identity."""

    device: str = "auto"
    num_workers: int | None = None
    checkpoint_every: int = 50
    preview_every: int = 500
    chunk_size: int | None = None  # SFM only: None = auto (one pass if it fits), 0 = one pass, N = chunk
    progress: bool = True
    strict_images: bool = False
    use_cache: bool = True
    stop_after: int | None = None  # run at most this many steps now, checkpoint, return (continue with resume)


@dataclass(frozen=True)
class EvalConfig:
    """edgedd.evaluate: how a distilled set is scored (validated by ``edgedd.evaluation.evaluate.validate_config``)."""

    # "converged" (default): every head is fitted to the optimum of its L2-regularised objective on
    # V cached views per image (edgedd.host.heads): L-BFGS for the probes, closed-form ridge for the CI
    # projector; no lr, no epochs, whatever N is. "reference": METHOD.md's Adam protocol below.
    protocol: str = "converged"
    probe_l2: float = 1e-3  # converged: relative L2 of the normal / KD probes (heads.py eq. 1), fixed before any sweep
    # converged: relative ridge of the CI projector (heads.py eq. 2); None: the strength pack chooses
    # for the device, by the same rule: the synthetic views' cross-validation (edgedd.device.ridge.
    # select_ridge), then, with ridge_on_heldout, the golden classifier's held-out real images
    # (select_ridge_on_images, at most HELDOUT_IMAGES of them, at least MIN_RIDGE_IMAGES to move it)
    ridge: float | None = None
    ridge_on_heldout: bool = True
    max_iter: int = 500  # converged: L-BFGS iterations per probe
    epochs: int = 1000  # reference: METHOD.md protocol
    seeds: int = 3
    batch: int | None = None  # reference; None: min(100, N)
    # reference; None: 1e-3 * batch / 256 for probes (normal, kd) and 10x that, 1e-2 * batch / 256, for
    # the CI projector. An explicit lr sets the probes' lr; the projector keeps the 10x ratio.
    # batch and lr also apply to the random/centroids/neighbors baselines.
    lr: float | None = None
    # None: 64 under "converged" (the reference draws 1000 fresh views per image; at IPC 1 and D = 128,
    # 16 views give the projector 160 rows for 129 unknowns per output: barely determined), 0 under "reference".
    # 0 = exact reference protocol: fresh flip+RRC views every batch through the backbone(s).
    # V > 0 = V augmented views per training image rendered once per seed (reference: one drawn per
    # image per epoch; converged: all of them in every fit).
    view_cache: int | None = None
    kd_temperature: float = 4.0
    kd_alpha: float = 0.5
    eval_batch: int = 256
    num_workers: int = 0
    device: str = "auto"

    def resolved_batch(self, n: int) -> int:
        return min(self.batch or 100, n)

    def probe_lr(self, batch: int) -> float:
        return self.lr if self.lr is not None else 1e-3 * batch / 256

    def projector_lr(self, batch: int) -> float:
        return 10 * self.probe_lr(batch)

    def views(self) -> int:
        if self.view_cache is not None:
            return self.view_cache
        return CONVERGED_VIEW_CACHE if self.protocol == "converged" else 0


@dataclass(frozen=True)
class PackConfig:
    """edgedd.pack: what a bundle holds besides the run (the projector's targets, the int8 backbone, the expected
    top-1).
    """

    views: int = 8  # K views per synthetic image for the projector targets: the centre crop, then K - 1 crops
    view_crop_min: float = DEVICE_VIEW_CROP_MIN  # the smallest crop area of those views (0.08: METHOD.md's RRC)
    projector_recipe: str = "converged"  # edgedd.host.heads: closed-form ridge, or METHOD.md's Adam ("reference")
    projector_epochs: int = 1000  # reference recipe
    selftest_images: int = 8
    int8: bool = False
    int8_max_drop: float = 0.05
    seed: int = 0
    # real held-out images behind the expected edge top-1 (bounds pack's time); 0: none
    expect_images: int = HELDOUT_IMAGES
    # choose the device's projector strength on those held-out real images (edgedd.device.ridge
    # .select_ridge_on_images), recorded as reference.device_ridge; False: the views' cross-validation, as before 1.6
    ridge_on_heldout: bool = True
    static_batch: int = (
        1  # the batch size of the fixed-shape backbone graphs (export.mobile) written beside the dynamic ones
    )
    ort: bool = (
        False  # also write ORT-format (.ort) graphs and the required-operators config of an ORT Mobile minimal build
    )
    litert: bool = False  # also write LiteRT (.tflite) graphs, converted with litert-torch (the [litert] extra)


def to_dict(obj: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def fingerprint(obj: Any) -> str:
    """sha256 of canonical JSON: equal inputs, equal key."""
    blob = json.dumps(obj if isinstance(obj, dict) else to_dict(obj), sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
