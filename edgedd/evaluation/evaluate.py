"""Evaluation of a distilled set (METHOD.md, "Stage III" and "Evaluation protocol").

A plain library: :func:`evaluate_run` takes a finished ``edgedd distill`` run directory and a
labelled test set and returns a JSON-ready dict. Notation: phi_A the distillation backbone (reloaded
exactly as distilled; its weights hash must match), phi_B the evaluation backbone (default: A),
N synthetic images, C classes, g(z) = W_g z + b_g the frozen golden classifier of Stage I.
This module holds the protocol below, the fits of the heads and the scoring; the encoders, view
samplers and feature passes are :mod:`edgedd.evaluation.encoders`, the real-image baselines
:mod:`edgedd.evaluation.baselines`.

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
    optimum of its L2-regularised objective over all of them (:mod:`edgedd.host.heads`): the probes by
    L-BFGS with relative L2 ``probe_l2`` = 1e-3, the projector by closed-form ridge at the strength
    pack chooses for the device (edgedd.evaluation.probes.choose_ridge: the views' cross-validation,
    moved on the golden classifier's held-out training images; ``ridge`` fixes it). No lr, no epochs: the same fit
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
synthetic features land (:mod:`edgedd.distillation.fidelity`).

Test images: shorter side resized to B's ``resize_size``, centre crop to its ``input_size``; phi_B
features are computed once and shared by every mode, seed and baseline.

Baselines (``baselines=True``), each trained with the ``normal`` protocol on phi_B:

``random``     IPC random real training images per class, a new draw per seed
``centroids``  per class the IPC real images whose phi_A centre-crop features lie nearest the
               class centre mu_c of stats.safetensors (Euclidean)
``neighbors``  for each synthetic image the nearest real image of its class in phi_A centre-crop
               feature space by cosine similarity, as the reference code (duplicates kept: one
               real image per synthetic image)
``kcentre``    per class a k-centre coreset in phi_A centre-crop features: greedy farthest point from a
               first image drawn per seed (Sener and Savarese)
``herding``    per class the IPC images picked greedily so that their mean phi_A feature tracks mu_c
               (Welling; iCaRL's exemplar selection)
``full``       the golden classifier's own recipe (``statistics.train_golden`` with the run's
               Stage I config) on phi_B of the whole training set: centre view + K views per image

Real images enter as canvases at the run's ``resize_size`` in [0, 1], exactly like the synthetic
images. Limitation: the baselines hold phi_A (and phi_B) features of the whole training set in
memory, n x (D_A + V D_B) floats; fine for the small data sets edgedd evaluates on, not for
ImageNet-scale folders.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from edgedd.backbones.forward import resolve_device
from edgedd.core.config import EVAL_MODES, HELDOUT_IMAGES, RECIPES, SELECTED, EvalConfig, to_dict
from edgedd.core.errors import EdgeddError
from edgedd.core.images import LabelledImages, open_dataset
from edgedd.core.paths import refuse_overlap
from edgedd.core.progress import Progress
from edgedd.device.ridge import too_few_images
from edgedd.distillation.fidelity import synthetic_landing
from edgedd.distillation.rundir import Run, load_initial, load_run
from edgedd.distillation.stage1 import heldout_images
from edgedd.host.rng import torch_generator

from .encoders import CachedViews, Encoder, FreshViews, load_encoders, make_sampler, subset, test_features
from .probes import fit_probe, fit_projector, summarise, topk_accuracy

MODES = EVAL_MODES


def validate_config(cfg: EvalConfig) -> None:
    if cfg.protocol not in RECIPES:
        raise EdgeddError(f"unknown protocol {cfg.protocol!r}", f"choose one of {', '.join(RECIPES)}")
    if cfg.protocol == "converged" and cfg.views() < 1:
        raise EdgeddError(
            "the converged protocol fits on cached views (got view_cache 0)",
            "pass --view-cache V with V >= 1, or --protocol reference",
        )
    for name in ("probe_l2", "ridge"):
        if getattr(cfg, name) is None:
            continue
        if not (getattr(cfg, name) > 0 and math.isfinite(getattr(cfg, name))):
            raise EdgeddError(
                f"{name} must be a finite positive value (got {getattr(cfg, name)})", "the defaults are 1e-3"
            )
    for name in ("epochs", "seeds", "eval_batch", "max_iter"):
        if getattr(cfg, name) < 1:
            raise EdgeddError(f"{name} must be at least 1 (got {getattr(cfg, name)})", "pass a positive value")
    if cfg.batch is not None and cfg.batch < 1:
        raise EdgeddError(
            f"batch must be at least 1 (got {cfg.batch})",
            "pass a positive batch size, or leave it unset for min(100, N)",
        )
    if cfg.lr is not None and not cfg.lr > 0:
        raise EdgeddError(f"lr must be positive (got {cfg.lr})", "pass a positive learning rate, or leave it unset")
    if cfg.view_cache is not None and cfg.view_cache < 0:
        raise EdgeddError(
            f"view_cache must be 0 or more (got {cfg.view_cache})",
            "0 is the exact protocol, V > 0 caches V views per image",
        )
    if not cfg.kd_temperature > 0:
        raise EdgeddError(f"kd_temperature must be positive (got {cfg.kd_temperature})", "the reference uses 4")
    if not 0 <= cfg.kd_alpha <= 1:
        raise EdgeddError(f"kd_alpha must lie in [0, 1] (got {cfg.kd_alpha})", "the reference uses 0.5")
    if cfg.num_workers < 0:
        raise EdgeddError(
            f"num_workers must be 0 or more (got {cfg.num_workers})", "pass 0 to decode in the main process"
        )


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


# ----------------------------------------------------------------------------- the entry point


def _check_modes(modes) -> tuple[str, ...]:
    modes = tuple(dict.fromkeys(modes))
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise EdgeddError(
            f"unknown evaluation mode(s) {', '.join(bad) or '(none given)'}", f"choose from {', '.join(MODES)}"
        )
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
    starting_set: bool = True,
) -> dict:
    """Evaluate a run's synthetic set in each mode (and the baselines; and, with ``starting_set``,
    the run's step-0 images, when it stored them); see the module docstring."""
    modes = _check_modes(modes)
    validate_config(config)
    for data, what in ((test_data, "the test data"), (train_data, "the training data")):
        if data is not None:  # a run inside a data directory would be scanned as one of its classes
            refuse_overlap(run_dir, "run directory", data, what)
    run = load_run(run_dir)
    initial = load_initial(run) if starting_set else None
    test = open_dataset(test_data)
    test_map = _label_map(test, run.class_names, "test data")
    if baselines:
        from .baselines import baseline_sets, run_baselines  # they train with this module's fit_probe

        train, train_map = _open_train(run, train_data)
    device = resolve_device(config.device)
    # A is needed for CI/KD targets, the baselines' selections, and as B when B is not given;
    # with only `normal` on another B it is not loaded (nor its weights hash checked).
    need_a = baselines or "ci" in modes or "kd" in modes
    enc_a, enc_b = load_encoders(run, eval_backbone, eval_weights, eval_crop_res, device, config.eval_batch, need_a)
    golden = _golden(run, enc_a, device)

    # every feature pass first (test set once for B; the training set once for the baselines),
    # then one progress bar over all training epochs
    x_test, y_test = test_features(enc_b, test, test_map, config, device)
    real, real_missing = _heldout_real(run, enc_b, config, device) if "ci" in modes else (None, None)
    real_sets = baseline_sets(run, train, train_map, enc_a, enc_b, config, device, progress) if baselines else None

    def score(head: torch.nn.Module) -> tuple[float, float]:
        with torch.no_grad():
            return topk_accuracy(head(x_test), y_test)

    total = _progress_total(config, modes, baselines) + (
        config.seeds * len(modes) * (1 if config.protocol == "converged" else config.epochs)
        if initial is not None
        else 0
    )
    with Progress(total, "evaluate", enabled=None if progress else False) as bar:
        images = run.images.to(device)
        summaries = _synthetic_modes(run, images, modes, enc_a, enc_b, golden, config, device, score, bar, real)
        out = _result(run, enc_b, config, summaries, len(y_test))
        if "ci" in modes:
            out["ci_heldout"] = {"images": 0 if real is None else len(real[1]), "missing": real_missing}
        if initial is not None:  # the same protocol, seeds and views on the images Stage II started from
            out["starting_set"] = _synthetic_modes(
                run, initial.to(device), modes, enc_a, enc_b, golden, config, device, score, bar, real
            )
            out["stage2_gain"] = {m: summaries[m]["top1_mean"] - out["starting_set"][m]["top1_mean"] for m in modes}
        if enc_a is not None and run.centres is not None:
            out["landing"] = synthetic_landing(
                enc_a,
                images,
                enc_a.input_size,
                run.labels,
                run.centres,
                run.golden_weight,
                run.golden_bias,
                seed=int(run.config.get("seed", 0)),
            )
        if baselines:
            out["baselines"] = run_baselines(real_sets, run, enc_b, config, device, score, bar)
    return out


def _open_train(run: Run, train_data: str | None) -> tuple[LabelledImages, np.ndarray]:
    """The baselines' training data (default: the run's) with its label map; refused without stats.safetensors."""
    train = open_dataset(train_data) if train_data else run.train_data()
    train_map = _label_map(train, run.class_names, "training data")
    if run.centres is None:
        raise EdgeddError(
            f"{run.directory} has no stats.safetensors (needed for the centroids baseline)", "re-run edgedd distill"
        )
    return train, train_map


def _heldout_real(
    run: Run, enc_b: Encoder, config: EvalConfig, device
) -> tuple[tuple[np.ndarray, np.ndarray] | None, str | None]:
    """phi_B (float64) and run labels of the golden classifier's held-out training images (at most
    HELDOUT_IMAGES, edgedd.distillation.stage1.heldout_images), the real images pack chooses the
    device's projector strength on, for the CI projector's, and why they will not choose it (too few)
    or None; or None and why there are none (a fixed ridge, the views' rule asked for, another
    protocol, a run whose data or slice cannot be had)."""
    if config.ridge is not None:
        return None, "a fixed ridge (EvalConfig.ridge)"
    if not config.ridge_on_heldout:
        return None, "the views' cross-validation asked for (--ridge-on-views)"
    if config.protocol != "converged":
        return None, f"the {config.protocol} protocol trains the projector with Adam"
    try:
        source, held = heldout_images(run, HELDOUT_IMAGES)
        if not len(held):
            return None, "the golden classifier held no image out"
        x, y = test_features(
            enc_b,
            subset(source, held),
            _label_map(source, run.class_names, "training data"),
            config,
            device,
            "held-out training",
        )
    except EdgeddError as e:
        return None, e.problem
    return (x.double().cpu().numpy(), y.cpu().numpy()), too_few_images(len(y))


def _golden(run: Run, enc_a: Encoder | None, device) -> torch.nn.Module:
    """The frozen golden classifier g of Stage I, checked against phi_A's width when A is loaded."""
    if enc_a is not None and run.golden_weight.shape[1] != enc_a.info.num_features:
        raise EdgeddError(
            f"the golden classifier has {run.golden_weight.shape[1]} inputs, {enc_a.info.name} gives "
            f"{enc_a.info.num_features} features",
            "the run directory is inconsistent; re-run edgedd distill",
        )
    golden = torch.nn.Linear(run.golden_weight.shape[1], run.num_classes).to(device).requires_grad_(False)
    with torch.no_grad():
        golden.weight.copy_(run.golden_weight)
        golden.bias.copy_(run.golden_bias)
    return golden


def _progress_total(config: EvalConfig, modes: tuple[str, ...], baselines: bool) -> int:
    """Progress steps: one per fit (converged) or per epoch (reference), per mode and seed, and the baselines'."""
    per_fit = 1 if config.protocol == "converged" else config.epochs
    total = config.seeds * len(modes) * per_fit
    if baselines:
        total += config.seeds * (SELECTED * per_fit + 1)
    return total


def _synthetic_modes(
    run: Run,
    images: torch.Tensor,
    modes: tuple[str, ...],
    enc_a: Encoder | None,
    enc_b: Encoder,
    golden: torch.nn.Module,
    config: EvalConfig,
    device,
    score,
    bar: Progress,
    real: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, dict]:
    """The synthetic set, every mode and seed; per seed one view cache (if any) shared by the modes.
    ``real``: the held-out images that choose the CI projector's strength (:func:`_heldout_real`)."""
    labels, c = run.labels, run.num_classes
    encoders = [enc_b] + ([enc_a] if ("ci" in modes or "kd" in modes) else [])
    results: dict[str, list] = {m: [] for m in modes}
    fits: dict[str, list] = {m: [] for m in modes}
    for seed in range(config.seeds):
        cache = make_sampler(images, encoders, config, seed) if config.views() > 0 else None
        for mode in modes:
            # normal needs phi_B only; ci and kd need phi_B and phi_A of the same view
            k = 1 if mode == "normal" else 2
            sampler = CachedViews(cache.feats[:k]) if cache is not None else FreshViews(images, encoders[:k])
            gen = torch_generator("train", seed)  # the same views and order in every mode: a paired comparison
            tag = f"{mode}/{seed}"
            if mode == "ci":
                fit, strength = fit_projector(sampler, config, gen, device, bar, tag, labels, golden, real)
                results[mode].append(score(torch.nn.Sequential(fit.head, golden)))
                fits[mode].append({**fit.report(), **strength})
            else:
                fit = fit_probe(sampler, labels, c, config, gen, device, golden if mode == "kd" else None, bar, tag)
                results[mode].append(score(fit.head))
                fits[mode].append(fit.report())
    return {m: summarise(s, fits[m]) for m, s in results.items()}


def _result(run: Run, enc_b: Encoder, config: EvalConfig, summaries: dict[str, dict], test_images: int) -> dict:
    """The ``edgedd.evaluate/1`` object without ``landing`` and ``baselines`` (docs/JSON.md)."""
    return {
        "method": run.summary.get("method", run.config.get("method")),
        "backbone": run.backbone["name"],
        "eval_backbone": enc_b.info.name,
        "ipc": run.ipc,
        "protocol": config.protocol,
        "flow_cosine": run.summary.get("flow_cosine"),
        "copy_ratio": run.summary.get("copy_ratio"),  # computed by distill (edgedd.core.copyratio); None for older runs
        "copy_ratio_start": run.summary.get("copy_ratio_start"),
        "modes": summaries,
        "config": to_dict(config),
        "test_images": int(test_images),
        "golden": {k: v for k, v in run.stage1.get("golden", {}).items() if k != "candidates"},
    }
