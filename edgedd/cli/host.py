"""The ``edgedd`` command line: thin Typer commands that parse options and call library functions.

This module holds the host commands (distill, evaluate, pack, report: each imports its host module
inside the command, after :func:`_need_host`) and the entry point :func:`main`; the app and its
conventions (streams, exit codes, errors) are :mod:`edgedd.cli.app`'s, the device commands
(deploy-check, predict, inspect, export-data) :mod:`edgedd.cli.device`'s.

Every choice and default of an option that sets a config field is read from :mod:`edgedd.core.config`
(its choice tuples and its dataclasses' defaults), never typed a second time here.
"""

from __future__ import annotations

import enum
from pathlib import Path

import typer

from edgedd.core.config import (
    CONVERGED_VIEW_CACHE,
    CROP_SAMPLERS,
    EVAL_MODES,
    FLOW_DENOMINATORS,
    INITS,
    LGM_AUGS_PER_BATCH,
    LR_SCHEDULES,
    MAX_RESOLUTION,
    METHODS,
    RECIPES,
    AugmentConfig,
    DistillConfig,
    EvalConfig,
    PackConfig,
    RunOptions,
    StageIConfig,
    method_views,
)
from edgedd.core.copyratio import headline
from edgedd.core.terminal import say as _say

from . import device as cli_device
from .app import HOST_MODULES, _need_host, _print_json, _result, app, handle_errors

__all__ = ["app", "main"]


def _choices(name: str, values: tuple[str, ...]) -> type[enum.Enum]:
    """A str Enum of ``values`` (Typer shows them as ``<a|b|...>`` and rejects others with exit 2)."""
    return enum.Enum(name, {v: v for v in values}, type=str)


Method = _choices("Method", METHODS)
Recipe = _choices("Recipe", RECIPES)  # how a linear head is fitted: --golden-recipe, --protocol and --projector-recipe
FlowDenominator = _choices("FlowDenominator", FLOW_DENOMINATORS)
LrSchedule = _choices("LrSchedule", LR_SCHEDULES)
CropSampler = _choices("CropSampler", CROP_SAMPLERS)
Init = _choices("Init", INITS)
EvalMode = _choices("EvalMode", EVAL_MODES)

# The defaults every option below shows and passes on.
DISTILL, STAGE1, RUN, EVAL, PACK = DistillConfig(), StageIConfig(), RunOptions(), EvalConfig(), PackConfig()


@app.command(
    epilog="""Examples:

\b
  edgedd distill embedded:mnist -b edgedd/host-vit -o runs/mnist --iterations 1000
  edgedd distill path/to/train -b vit_small_patch14_dinov2.lvd142m --ipc 10 -o runs/dino --json > summary.json
"""
)
@handle_errors
def distill(
    data: str = typer.Argument(..., help="ImageFolder directory (one sub-folder per class) or embedded:mnist."),
    backbone: str = typer.Option(
        ...,
        "--backbone",
        "-b",
        help="timm model name (e.g. vit_small_patch14_dinov2.lvd142m) or a shipped edgedd/host-vit, edgedd/edge-cnn.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to write."),
    weights: str = typer.Option(
        "hub",
        help="'hub' (pretrained: online, or packaged for edgedd/* backbones), a local .safetensors file, or 'random'.",
    ),
    method: Method = typer.Option(
        Method(DISTILL.method),
        help="Matching loss, in the order listed: SFM (the paper's), SFM with a centre anchor, anchored SFM with "
        "per-image sub-centre targets, anchored SFM with a ridge-probe term, the sub-centre loss plus the ridge-probe "
        "term, the decoupled ablation, or the LGM baseline (docs/METHOD.md).",
    ),
    ipc: int = typer.Option(DISTILL.ipc, min=1, help="Synthetic images per class."),
    init: Init = typer.Option(
        Init(DISTILL.init),
        help="Start from the real images nearest each class's IPC k-means sub-centres in phi_A (edgedd's default: "
        "a coreset), from random real images of each class, from means of --mix random ones (images that are no "
        "training image: pair with --min-copy-ratio), or from noise (the reference). Real starts keep the result "
        "readable to other backbones.",
    ),
    mix: int = typer.Option(DISTILL.mix, min=1, help="--init mix: real images of a class averaged into each start."),
    min_copy_ratio: float = typer.Option(
        DISTILL.min_copy_ratio,
        min=0.0,
        help="Keep every image at least this copy ratio from the training images, in pixels and phi_A (0: off; 1: "
        "as far as a typical real image is from its nearest other).",
    ),
    copy_floor_features: bool = typer.Option(
        DISTILL.copy_floor_features,
        "--copy-floor-features/--copy-floor-pixels-only",
        help="--min-copy-ratio in phi_A of the centre crop as well as in pixels (both spaces the copy ratio reports).",
    ),
    iterations: int = typer.Option(DISTILL.iterations, min=1, help="Distillation steps."),
    lr: float = typer.Option(DISTILL.lr, help="Adam learning rate on the pyramid levels."),
    lr_schedule: LrSchedule = typer.Option(
        LrSchedule(DISTILL.lr_schedule),
        help="The learning rate over the steps: 'constant' (the reference) or 'cosine' (annealed from --lr to 0).",
    ),
    syn_res: int | None = typer.Option(
        None, min=1, max=MAX_RESOLUTION, help="Synthetic image resolution [default: backbone crop / crop_pct]."
    ),
    crop_res: int | None = typer.Option(
        None, min=1, max=MAX_RESOLUTION, help="Backbone input (crop) resolution [default: the backbone's]."
    ),
    augs_per_batch: int | None = typer.Option(
        None,
        min=1,
        help=f"Augmented views per image per step [default: {DISTILL.augs_per_batch}; lgm: {LGM_AUGS_PER_BATCH}].",
    ),
    alpha: float = typer.Option(
        DISTILL.alpha, min=0.0, max=1.0, help="sfm_decouple: weight of target-centre matching."
    ),
    beta: float = typer.Option(
        DISTILL.beta,
        min=0.0,
        help="sfm_anchor, sfm_sub, sfm_probe, sfm_sub_probe: weight of the centre anchor (0 = plain SFM).",
    ),
    gamma: float = typer.Option(
        DISTILL.gamma, min=0.0, help="sfm_sub, sfm_sub_probe: weight of the per-image sub-centre term."
    ),
    kappa: float = typer.Option(
        DISTILL.kappa, min=0.0, help="sfm_probe, sfm_sub_probe: weight of the ridge-probe term."
    ),
    flow_denominator: FlowDenominator = typer.Option(
        FlowDenominator(DISTILL.flow_denominator), help="'reference' reproduces the reference code's N-1."
    ),
    surrogate: list[str] | None = typer.Option(
        None,
        help="Projector-aware term: a surrogate edge backbone B' (name or name@input_size, not A), repeatable; the set "
        "is also trained so that the projector fitted on it through B' classifies real training images.",
    ),
    surrogate_weight: float = typer.Option(
        DISTILL.surrogate_weight, min=0.0, help="Weight of the projector-aware term."
    ),
    surrogate_views: int = typer.Option(
        DISTILL.surrogate_views, min=1, help="Views per synthetic image in the projector-aware term."
    ),
    surrogate_real: int = typer.Option(
        DISTILL.surrogate_real, min=1, help="Real training images per step the projector-aware term is scored on."
    ),
    crop_sampler: CropSampler = typer.Option(
        CropSampler(AugmentConfig.crop_sampler),
        help="Crop boxes of the synthetic views: torchvision's (inside the image) or the reference code's (up to "
        "1.155x wide, zero padding past the edge).",
    ),
    crop_min: float | None = typer.Option(
        None,
        min=0.0,
        max=1.0,
        help=f"Smallest area share of the loss's random crops [default: {method_views('sfm_sub').crop_scale[0]} "
        f"for sfm_sub, sfm_probe and sfm_sub_probe, the reference's {AugmentConfig.crop_scale[0]} otherwise; "
        "up to 1 = whole image].",
    ),
    noise_p: float | None = typer.Option(
        None,
        min=0.0,
        max=1.0,
        help=f"Probability of the loss's additive noise per view [default: {method_views('sfm_sub').noise_p:g} for "
        f"sfm_sub, sfm_probe and sfm_sub_probe, the reference's {AugmentConfig.noise_p} otherwise].",
    ),
    centre_view: float | None = typer.Option(
        None,
        min=0.0,
        max=1.0,
        help=f"Share of the loss's views that are the eval view: the exact centre crop, not flipped [default: "
        f"{method_views('sfm_sub').centre_p:g} for sfm_sub, sfm_probe and sfm_sub_probe, "
        f"{AugmentConfig.centre_p:g} otherwise].",
    ),
    extend_every: int = typer.Option(
        DISTILL.extend_every, min=1, help="Pyramid extension interval (shortened for short runs)."
    ),
    seed: int = typer.Option(DISTILL.seed, help="Seed of every random draw in the run."),
    device: str = typer.Option(RUN.device, help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."),
    num_workers: int | None = typer.Option(RUN.num_workers, min=0, help="DataLoader workers for the statistics pass."),
    batch_size: int = typer.Option(
        STAGE1.batch_size,
        min=1,
        help="Images per forward in the statistics pass (with several ranks, batch b goes to rank b mod ranks).",
    ),
    golden_views: int = typer.Option(
        STAGE1.golden_views, min=1, help="Augmented views per image cached for the golden classifier."
    ),
    golden_recipe: Recipe = typer.Option(
        Recipe(STAGE1.golden_recipe),
        help="Golden classifier: 'converged' (L-BFGS, L2 and inputs chosen on a held-out slice) or METHOD.md's "
        "'reference' Adam recipe.",
    ),
    golden_epochs: int = typer.Option(STAGE1.golden_epochs, min=1, help="Golden classifier epochs (reference recipe)."),
    checkpoint_every: int = typer.Option(RUN.checkpoint_every, min=0, help="Steps between checkpoints (0: none)."),
    preview_every: int = typer.Option(
        RUN.preview_every, min=0, help="Steps between preview PNGs (0: only the final one)."
    ),
    chunk_size: int | None = typer.Option(
        RUN.chunk_size, min=0, help="SFM images per forward chunk; 0 = one pass [default: auto, one pass if it fits]."
    ),
    strict_images: bool = typer.Option(
        RUN.strict_images, "--strict-images", help="Stop at an unreadable image instead of skipping it."
    ),
    no_cache: bool = typer.Option(not RUN.use_cache, "--no-cache", help="Neither read nor fill the Stage I cache."),
    resume: bool = typer.Option(False, "--resume", help="Continue the unfinished run in --out."),
    stop_after: int | None = typer.Option(
        RUN.stop_after,
        min=1,
        help="Run at most this many steps now, checkpoint and stop (continue with --resume): for time-limited job "
        "slots.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run already in --out."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    quiet: bool = typer.Option(not RUN.progress, "--quiet", "-q", help="No progress bars."),
) -> None:
    """[host] Distill DATA into a few synthetic images per class with Statistical Flow Matching.

    Several GPUs or nodes: launch with torchrun, e.g. torchrun --nproc-per-node 8 -m edgedd distill ...
    """
    _need_host("distill")
    from edgedd.distillation.pipeline import distill as run

    default_augs = LGM_AUGS_PER_BATCH if method.value == "lgm" else DISTILL.augs_per_batch
    summary = run(
        data=data,
        backbone=backbone,
        out=out,
        weights=weights,
        config=DistillConfig(
            method=method.value,
            ipc=ipc,
            init=init.value,
            mix=mix,
            min_copy_ratio=min_copy_ratio,
            copy_floor_features=copy_floor_features,
            iterations=iterations,
            lr=lr,
            lr_schedule=lr_schedule.value,
            augs_per_batch=augs_per_batch or default_augs,
            alpha=alpha,
            beta=beta,
            gamma=gamma,
            kappa=kappa,
            flow_denominator=flow_denominator.value,
            extend_every=extend_every,
            seed=seed,
            augment=method_views(
                method.value, crop_sampler=crop_sampler.value, crop_min=crop_min, noise_p=noise_p, centre_p=centre_view
            ),
            surrogates=tuple(surrogate or ()),
            surrogate_weight=surrogate_weight,
            surrogate_views=surrogate_views,
            surrogate_real=surrogate_real,
        ),
        stage1_config=StageIConfig(
            batch_size=batch_size,
            golden_views=golden_views,
            golden_recipe=golden_recipe.value,
            golden_epochs=golden_epochs,
            seed=seed,
        ),
        options=RunOptions(
            device=device,
            num_workers=num_workers,
            checkpoint_every=checkpoint_every,
            preview_every=preview_every,
            chunk_size=chunk_size,
            progress=not quiet,
            strict_images=strict_images,
            use_cache=not no_cache,
            stop_after=stop_after,
        ),
        crop_res=crop_res,
        syn_res=syn_res,
        resume=resume,
        overwrite=overwrite,
    )
    if summary is not None:  # None: a torchrun rank other than 0: rank 0 reports
        _distill_result(summary, json_out)


def _distill_result(summary: dict, json_out: bool) -> None:
    if not summary["finished"]:
        if json_out:
            _print_json("distill", summary)
        else:
            _result(
                f"stopped after step {summary['step']} of {summary['iterations']} (checkpointed); "
                f"continue with the same command plus --resume"
            )
        return
    skipped = summary["dataset"]["skipped_files"]
    if skipped:
        _say(
            f"warning: skipped {summary['dataset']['skipped_images']} unreadable image(s) "
            f"(pass --strict-images to stop instead), first: {skipped[0]}"
        )
    if json_out:
        _print_json("distill", summary)
    else:
        _result(human_summary(summary))


@app.command(
    epilog="""Examples:

\b
  edgedd evaluate runs/mnist --test-data embedded:mnist/test --mode normal --mode ci --baselines
  edgedd evaluate runs/dino --test-data val/ --eval-backbone resnet50.a1_in1k --mode ci --json
"""
)
@handle_errors
def evaluate(
    run_dir: Path = typer.Argument(..., help="A finished edgedd distill run directory."),
    test_data: str = typer.Option(..., help="Labelled test set: ImageFolder or embedded:mnist/test."),
    mode: list[EvalMode] = typer.Option(
        [EvalMode.normal],
        "--mode",
        help="normal (fresh probe), ci (classifier inheritance), kd (soft labels); repeatable.",
    ),
    eval_backbone: str | None = typer.Option(None, help="Evaluation backbone B [default: the distillation backbone]."),
    eval_weights: str | None = typer.Option(None, help="B's weights: 'hub', a .safetensors file or 'random'."),
    eval_crop_res: int | None = typer.Option(None, min=1, max=MAX_RESOLUTION, help="B's input resolution."),
    protocol: Recipe = typer.Option(
        Recipe(EVAL.protocol),
        help="'converged': every head fitted to its optimum on cached views; 'reference': METHOD.md's Adam protocol.",
    ),
    seeds: int = typer.Option(EVAL.seeds, min=1, help="Training seeds; mean and std are reported."),
    epochs: int = typer.Option(
        EVAL.epochs, min=1, help="Epochs over the distilled set (reference protocol; METHOD.md: 1000)."
    ),
    view_cache: int | None = typer.Option(
        EVAL.view_cache,
        min=0,
        help=f"Views per image cached [default: {CONVERGED_VIEW_CACHE} converged, 0 reference]; 0: fresh views every "
        "batch (exact reference protocol).",
    ),
    baselines: bool = typer.Option(
        False, "--baselines", help="Also evaluate random real, centroids, neighbours and the full-data probe."
    ),
    train_data: str | None = typer.Option(None, help="Training set for the baselines [default: the run's]."),
    starting_set: bool = typer.Option(
        True,
        "--starting-set/--no-starting-set",
        help="Also score the run's step-0 images (its starting set) and report the stage-II gain.",
    ),
    ridge_on_heldout: bool = typer.Option(
        EVAL.ridge_on_heldout,
        "--ridge-on-heldout/--ridge-on-views",
        help="ci: choose the projector's strength as pack does for the device, on the golden classifier's "
        "held-out training images, or on the synthetic views alone.",
    ),
    device: str = typer.Option(EVAL.device, help="auto, cpu, cuda, cuda:N or mps."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """[host] Evaluate a distilled set: linear probe, classifier inheritance or KD, with baselines."""
    _need_host("evaluate")
    from edgedd.evaluation.evaluate import evaluate_run

    r = evaluate_run(
        run_dir,
        test_data,
        modes=tuple(m.value for m in mode),
        eval_backbone=eval_backbone,
        eval_weights=eval_weights,
        eval_crop_res=eval_crop_res,
        config=EvalConfig(
            protocol=protocol.value,
            epochs=epochs,
            seeds=seeds,
            view_cache=view_cache,
            ridge_on_heldout=ridge_on_heldout,
            device=device,
        ),
        baselines=baselines,
        train_data=train_data,
        progress=not quiet,
        starting_set=starting_set,
    )
    if json_out:
        _print_json("evaluate", r)
    else:
        _result(evaluation_table(r))


def evaluation_table(r: dict) -> str:
    rows = [(f"{r['method']} ({m})", v) for m, v in r["modes"].items()]
    rows += [(f"starting set, step 0 ({m})", v) for m, v in r.get("starting_set", {}).items()]
    rows += [(f"baseline: {b}", v) for b, v in r.get("baselines", {}).items()]
    head = (
        f"{r['method']} on {r['backbone']}, evaluated with {r['eval_backbone']}; IPC {r['ipc']}; "
        f"{r['test_images']} test images; {r.get('protocol', 'reference')} protocol; flow cosine {r['flow_cosine']:.3f}"
    )
    lines = [head, f"  {'':<30} {'top-1':>15} {'top-5':>7}  seeds  train loss (start -> end)"]
    for name, v in rows:
        loss = ""
        if "train_loss_final" in v:
            loss = (
                f"{sum(v['train_loss_start']) / len(v['seeds']):.4g} -> "
                f"{sum(v['train_loss_final']) / len(v['seeds']):.4g}"
            )
            loss += "  STALLED: did not train" if v["stalled"] else ""
        lines.append(
            f"  {name:<30} {100 * v['top1_mean']:>7.2f} ± {100 * v['top1_std']:<5.2f} {100 * v['top5_mean']:>7.2f}  "
            f"{len(v['seeds']):>5}  {loss}"
        )
    ci = r["modes"].get("ci", {})
    if ci.get("ridge"):
        held = r.get("ci_heldout") or {}
        source = {
            "heldout": f"chosen on {held.get('images')} held-out training images by pack's rule",
            "views": "cross-validated on the synthetic views" + (f"; {held['missing']}" if held.get("missing") else ""),
            "fixed": "fixed",
        }
        lines.append(
            "  ci projector strength "
            + ", ".join(f"{x:g}" for x in ci["ridge"])
            + f" ({source.get(ci['ridge_from'][0], ci['ridge_from'][0])})"
        )
    if "stage2_gain" in r:
        lines.append(
            "  stage-II gain (final - starting set, top-1): "
            + ", ".join(f"{m} {100 * g:+.2f}" for m, g in r["stage2_gain"].items())
        )
    lines.append(f"  synthetic set: {headline(r.get('copy_ratio'))}")
    if "landing" in r:
        ld = r["landing"]
        lines.append(
            f"  synthetic features (phi_A): centre offset {ld['centre_offset_mean']:.2f} inter-centre distances, "
            f"norm ratio {ld['norm_ratio']:.2f}, golden top-1 {100 * ld['golden_top1_centre_view']:.0f}% centre / "
            f"{100 * ld['golden_top1_augmented_views']:.0f}% augmented views"
        )
    return "\n".join(lines)


@app.command(
    epilog="""Examples:

\b
  edgedd pack runs/mnist -o bundles/mnist
  edgedd pack runs/dino -o bundles/effnet --edge-backbone efficientnet_b0.ra_in1k --edge-weights b0.safetensors --int8
"""
)
@handle_errors
def pack(
    run_dir: Path = typer.Argument(..., help="A finished edgedd distill run directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle directory to write."),
    edge_backbone: str | None = typer.Option(
        None, help="timm name of the edge backbone [default: the distillation backbone]."
    ),
    edge_weights: str | None = typer.Option(None, help="Edge weights: 'hub', a .safetensors file or 'random'."),
    edge_crop_res: int | None = typer.Option(
        None, min=1, max=MAX_RESOLUTION, help="Edge backbone input resolution [default: the backbone's]."
    ),
    views: int = typer.Option(
        PACK.views,
        min=1,
        help="Views per synthetic image stored as projector targets: its centre crop, then flip + random crops.",
    ),
    view_crop_min: float = typer.Option(
        PACK.view_crop_min,
        min=0.01,
        max=1.0,
        help="Smallest crop area of those views, as a fraction of the image (0.08: METHOD.md's random-resized crops).",
    ),
    projector_recipe: Recipe = typer.Option(
        Recipe(PACK.projector_recipe),
        help="Host projector: 'converged' (closed-form ridge, the device's fit) or METHOD.md's 'reference' Adam "
        "recipe.",
    ),
    projector_epochs: int = typer.Option(
        PACK.projector_epochs, min=1, help="Epochs of the host projector's reference recipe."
    ),
    int8: bool = typer.Option(
        PACK.int8,
        "--int8",
        help="Also ship an int8 backbone (static quantisation: per-channel int8 weights, activation ranges calibrated "
        "on the synthetic views).",
    ),
    int8_max_drop: float = typer.Option(
        PACK.int8_max_drop,
        min=0.0,
        max=1.0,
        help="Refuse the int8 backbone above this top-1 drop on the real held-out images (on the synthetic set without "
        "them).",
    ),
    seed: int = typer.Option(PACK.seed, help="Seed of the views and the projector training."),
    expect_images: int = typer.Option(
        PACK.expect_images,
        min=0,
        help="Classify at most this many of the golden classifier's held-out training images on the edge path and "
        "record the top-1 deploy-check --data expects; 0 records none (deploy-check then skips that check).",
    ),
    ridge_on_heldout: bool = typer.Option(
        PACK.ridge_on_heldout,
        "--ridge-on-heldout/--ridge-on-views",
        help="Choose the device's projector strength on those held-out images through the edge backbone (recorded in "
        "the bundle), or leave it to the device's cross-validation over the synthetic views.",
    ),
    static_batch: int = typer.Option(
        PACK.static_batch,
        "--static-batch",
        min=1,
        max=4096,
        help="Batch size of the fixed-shape backbone graph written beside the dynamic one (what NNAPI / CoreML take "
        "whole; the device runs batches of this size through it).",
    ),
    ort: bool = typer.Option(
        PACK.ort,
        "--ort",
        help="Also write every graph in ORT format (.ort) and the required-operators config of an ORT Mobile minimal "
        "build.",
    ),
    litert: bool = typer.Option(
        PACK.litert,
        "--litert",
        help="Also write LiteRT (.tflite) graphs, converted with litert-torch (pip install edgedd[litert]).",
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing bundle."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """[host] Package a run for the edge: artifact + ONNX backbone, projector and classifier."""
    _need_host("pack", HOST_MODULES + ("onnx",))
    from edgedd.export.pack import pack as run

    r = run(
        run_dir,
        out,
        edge_backbone,
        edge_weights,
        edge_crop_res,
        PackConfig(
            views=views,
            view_crop_min=view_crop_min,
            projector_recipe=projector_recipe.value,
            projector_epochs=projector_epochs,
            int8=int8,
            int8_max_drop=int8_max_drop,
            seed=seed,
            expect_images=expect_images,
            ridge_on_heldout=ridge_on_heldout,
            static_batch=static_batch,
            ort=ort,
            litert=litert,
        ),
        device=device,
        overwrite=overwrite,
    )
    if json_out:
        _print_json("pack", r)
        return
    ref = r["reference"]
    _result(
        f"packed {r['synthetic_images']} images ({r['classes']} classes) for {r['edge_backbone']} "
        f"(distilled on {r['distill_backbone']}) into {r['bundle']}\n"
        f"  graphs checked and within {max(v['max_rel_error'] for v in r['validation'].values()):.1e} of torch at "
        "batch 1 and 3"
        f" (the fixed-shape backbone at batch {static_batch})\n"
        + _mobile_line(r.get("mobile_readiness") or {})
        + f"  synthetic-set top-1: torch projector {ref['synthetic_top1']:.1%}, closed-form projector "
        f"{ref['synthetic_top1_ridge']:.1%}"
        + (
            f", int8 backbone {ref['int8_synthetic_top1_packed_projector']:.1%}"
            if "int8_synthetic_top1_packed_projector" in ref
            else ""
        )
        + "\n"
        + _expectation_line(ref)
    )


def _mobile_line(m: dict) -> str:
    """onnxruntime's mobile checker on the fixed-shape backbone, as pack recorded it."""
    if not m.get("available"):
        return ""
    return (
        "  mobile readiness (onnxruntime's checker): "
        + "; ".join(
            f"{name} {v['supported_nodes']}/{v['nodes']} nodes in {v['partitions']} "
            f"partition{'s' if v['partitions'] != 1 else ''}"
            for name, v in m["targets"].items()
        )
        + "\n"
    )


def _expectation_line(ref: dict) -> str:
    """pack's real-image figures: what deploy-check --data will compare against."""
    golden = "golden classifier held-out top-1 " + (
        f"{ref['golden_heldout_top1']:.1%} on {ref['golden_heldout_images']} images"
        if ref.get("golden_heldout_top1") is not None
        else "not recorded by the run"
    )
    edge = (
        f"expected edge top-1 {ref['expected_edge_top1']:.1%} on {ref['expected_edge_images']} held-out images"
        if ref.get("expected_edge_top1") is not None
        else f"no expected edge top-1 ({ref.get('expected_edge_missing')})"
    )
    if ref.get("int8_expected_edge_top1") is not None:
        edge += f", int8 backbone {ref['int8_expected_edge_top1']:.1%}"
    strength = (
        f"\n  device projector strength {ref['device_ridge']:g}, chosen on {ref['device_ridge_images']} held-out "
        f"images (the synthetic views' cross-validation: {ref['projector_ridge_views']:g})"
        if ref.get("device_ridge") is not None
        else ""
    )
    return f"  real images: {golden}; {edge}{strength}"


# The device commands (edgedd.cli.device), added here so that --help lists them after pack and before report.
cli_device.register(app)


@app.command(
    epilog="""Examples:

\b
  edgedd report runs/mnist
  edgedd evaluate runs/mnist --test-data embedded:mnist/test --baselines --json > eval.json
  edgedd report runs/mnist --eval eval.json --deploy-check check.json --bundle bundles/mnist --out mnist.html

One HTML file, images and plots embedded: open it anywhere, no server. check.json is the output of
edgedd deploy-check --json (on the device: copy it back).
"""
)
@handle_errors
def report(
    run: Path = typer.Argument(..., help="A finished edgedd distill run directory."),
    eval_json: Path | None = typer.Option(None, "--eval", help="An edgedd evaluate --json output: the accuracy table."),
    deploy_check_json: Path | None = typer.Option(
        None, "--deploy-check", help="An edgedd deploy-check --json output: the checks."
    ),
    bundle: Path | None = typer.Option(
        None, "--bundle", help="A bundle directory (edgedd pack): its artifact and the host's figures."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="HTML file to write [default: RUN/report.html]."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """[host] Write one self-contained HTML page: synthetic images, loss and flow-cosine curves, accuracy,
    deploy-check.
    """
    _need_host("report", ("matplotlib",))
    from edgedd.evaluation.report import write_report

    r = write_report(run, eval=eval_json, deploy_check=deploy_check_json, bundle=bundle, out=out)
    if json_out:
        _print_json("report", r)
    else:
        _result(f"wrote {r['report']}")


def human_summary(s: dict) -> str:
    d = s["dataset"]
    lines = [
        f"distilled {d['name']} ({d['classes']} classes, {d['images_used']} images"
        + (f", {d['skipped_images']} skipped" if d["skipped_images"] else "")
        + f") into {s['synthetic_images']} images ({s['ipc']} per class) with {s['method']} on {s['backbone']['name']}",
        f"  stage I  {'cached' if s['stage1_cached'] else 'computed'} in {s['stage1_seconds']:.1f}s; "
        f"golden classifier ({s.get('golden', {}).get('recipe', '?')} recipe) train top-1 "
        f"{100 * (s['golden_train_top1'] or 0):.1f}%"
        + (
            f", held-out {100 * s['golden']['heldout_top1']:.1f}%"
            if s.get("golden", {}).get("heldout_top1") is not None
            else ""
        )
        + (f", train loss {s['golden']['loss_final']:.4f}" if "loss_final" in s.get("golden", {}) else ""),
        f"  stage II {s['iterations']} steps in {s['stage2_seconds']:.1f}s; final loss {s['final_loss']:.4f}; "
        f"flow cosine {s['flow_cosine']:.3f}",
        f"  synthetic features: centre offset {s['landing']['centre_offset_mean']:.2f} inter-centre distances, norm "
        "ratio "
        f"{s['landing']['norm_ratio']:.2f}, golden top-1 {100 * s['landing']['golden_top1_centre_view']:.0f}% (centre "
        "view)",
        f"  synthetic set: {headline(s.get('copy_ratio'))}",
        f"  wrote {s['out']}/synthetic.safetensors and {s['out']}/preview.png",
    ]
    return "\n".join(lines)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
