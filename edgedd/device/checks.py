"""``edgedd deploy-check``: every check the issue lists, one named step each, run in order.

Each step records its verdict with :func:`_check` (ok True passed, False failed, None skipped)
and adds its figures to the report; integrity and file problems raise (nothing else can run).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np

from edgedd.core.errors import EdgeddError

from .accuracy import EXPECTED_MARGIN, LabelledFolder, allowed_drop, chance_bound, top1
from .bundle import ROLES, Bundle, open_bundle
from .finetune import (
    RIDGE_FROM_REAL,
    RIDGE_FROM_VIEWS,
    fine_tune_projector,
    load_finetuned,
    load_projector_file,
    projector_problem,
    save_finetuned,
    synthetic_pixels,
)
from .infer import backbone_features, head
from .inputs import prepare_canvases
from .latency import thread_trial
from .sidecar import sidecar_path, write_settings

try:  # Unix only; peak RSS is then not reported
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None

SYNTHETIC_SLACK = 0.05  # device vs host top-1 on the synthetic set, same projector (at least one image)


def deploy_check(
    directory: str | Path,
    data: str | Path | None = None,
    fine_tune: bool = True,
    max_latency_ms: float | None = None,
    int8: bool = False,
    ridge: float | None = None,
    tolerance: float = 1e-3,
    min_accuracy: float | None = None,
    min_data_top1: float | None = None,
    margin: float = EXPECTED_MARGIN,
    runtime: str = "onnx",
    providers: list[str] | None = None,
) -> dict:
    """Every check the issue lists; integrity and file problems raise (nothing else can run).

    With ``data``: "data accuracy" fails below ``min_accuracy`` (``min_data_top1`` is its old name)
    and "above chance" fails when top-1 is not above what guessing gets (:func:`chance_bound`);
    "expected" fails when top-1 falls more than :func:`allowed_drop` below the top-1 pack measured
    on real held-out images, and is skipped (ok None) for a bundle that records none.
    The report's ``ok`` is False when any check failed.
    """
    if min_accuracy is None:
        min_accuracy = min_data_top1
    if min_accuracy is not None and data is None:
        raise EdgeddError(
            "a minimum accuracy needs labelled data to measure it on", "pass --data DIR with --min-accuracy"
        )
    b = open_bundle(directory, int8=int8, providers=providers, runtime=runtime)
    checks: list[dict] = []
    _check(checks, "integrity", True, f"format {b.meta['format']}, sha256 verified, {len(b.artifact.tensors)} tensors")
    engine = _engine(b)
    _check(
        checks,
        "graphs",
        True,
        f"{', '.join(ROLES)}"
        + (" and the fixed-shape backbone" if b.static_batch else "")
        + f" ({b.runtime}) loaded on {', '.join(engine['used'])}"
        + (" (int8 backbone)" if int8 else "")
        + (f"; present: {', '.join(engine['available'])}" if engine["available"] != engine["used"] else ""),
    )
    mobile = mobile_check(checks, b)
    _self_test_check(checks, b, int8, tolerance)
    labels = b.artifact["synthetic.labels"]
    syn_x = prepare_canvases(b, synthetic_pixels(b))
    syn_f = backbone_features(b, syn_x)  # once: the packed and the device projector are scored on it
    before = top1(head(b, syn_f), labels)
    projector = _fine_tune_check(checks, b, ridge) if fine_tune else _fitted_projector_check(checks, b)
    syn = top1(head(b, syn_f, projector), labels)
    _synthetic_check(checks, b, before, syn, len(labels), fine_tune, int8)
    kind = b.projector_kind if projector is not None and not fine_tune else "fit" if projector is not None else "packed"
    views_fit = None
    if fine_tune:  # the projector edgedd adapt wrote for this variant is the one predict uses: score that one
        projector, views_fit = _adapted_check(checks, b, projector)
        kind = "adapt" if views_fit is not None else kind
    report = {
        "ok": True,
        "checks": checks,
        "synthetic_top1": syn,
        "synthetic_top1_packed_projector": before,
        "projector": kind,
        "int8": int8,
        "providers": b.providers,
        "runtime": b.runtime,
        "providers_available": engine["available"],
        "providers_used": engine["used"],
        "static_batch": b.static_batch,
        "mobile_readiness": mobile,
        "bundle": str(b.directory),
        "copy_ratio": b.meta.get("copy_ratio"),
    }  # what the shipped images are (format 1.5; None before)
    if data is not None:
        y = _data_accuracy_check(checks, report, b, LabelledFolder(b, data), projector, min_accuracy, views_fit)
        _chance_check(checks, report, len(b.class_names), y)
        _expected_check(checks, report, b.meta.get("reference") or {}, len(y), margin, int8)
    _latency_check(checks, report, b, syn_x[:1], projector, max_latency_ms)
    report["peak_rss_mb"] = peak_rss_mb()
    report["ok"] = all(c["ok"] is not False for c in checks)  # a skipped check (None) fails nothing
    return report


def _engine(b: Bundle) -> dict:
    """The execution providers present and the ones onnxruntime assigned to the backbone session (LiteRT: its
    interpreter).
    """
    if b.runtime == "litert":
        return {"available": ["LiteRT interpreter"], "used": ["LiteRT interpreter"]}
    from .mobile import available_providers

    return {"available": available_providers(), "used": list(b.sessions["backbone"].get_providers())}


def mobile_check(checks: list, b: Bundle) -> dict:
    """mobile readiness: how much of the fixed-shape backbone NNAPI and CoreML would take, as onnxruntime's
    mobile checker computes it: here where it is importable (the host install), else as pack recorded it."""
    from .graphs import read_graph
    from .mobile import readiness

    entry = b.meta["onnx"].get("backbone_int8_static" if b.variant == "int8" else "backbone_static")
    if not entry:
        _check(
            checks,
            "mobile readiness",
            None,
            "skipped: the bundle has no fixed-shape backbone (packed by an edgedd before format 1.4); re-pack it",
        )
        return {"source": None}
    here = readiness(read_graph(b.directory, "fixed-shape backbone", entry))  # the hashed bytes, as every graph
    figures, source = (
        (here, "here")
        if here.get("available")
        else (b.meta["onnx"].get("backbone_static", {}).get("mobile") or {}, "pack (fp32)")
    )
    out = {"source": source if figures.get("available") else None, "targets": figures.get("targets"), "here": here}
    if not figures.get("available"):
        _check(checks, "mobile readiness", None, f"skipped: {here.get('reason')}, and the bundle records no figures")
        return out
    t = figures["targets"]
    _check(
        checks,
        "mobile readiness",
        True,
        "; ".join(
            f"{name} {v['supported_nodes']}/{v['nodes']} nodes in {v['partitions']} partition"
            + ("s" if v["partitions"] != 1 else "")
            for name, v in t.items()
        )
        + " (onnxruntime's checker, "
        f"{'on this device' if source == 'here' else 'as pack recorded it: ' + here.get('reason', '')})",
    )
    return out


def _check(checks: list, name: str, ok: bool | None, detail: str) -> bool | None:
    """Record a check: ok True passed, False failed, None skipped (could not be judged; says why)."""
    checks.append({"name": name, "ok": None if ok is None else bool(ok), "detail": detail})
    return ok


def _self_test_check(checks: list, b: Bundle, int8: bool, tolerance: float) -> None:
    """self-test: the packed torch outputs, reproduced by onnxruntime"""
    xs, want_f, want_l = b.artifact["selftest.inputs"], b.artifact["selftest.features"], b.artifact["selftest.logits"]
    got_f = backbone_features(b, xs)
    got_l = head(b, got_f)
    rel_f = float(np.abs(got_f - want_f).max() / (np.abs(want_f).max() + 1e-12))
    agree = float((got_l.argmax(1) == want_l.argmax(1)).mean())
    if int8:
        _check(
            checks,
            "self-test",
            agree >= 0.5,
            f"int8 backbone: top-1 agreement with fp32 torch {agree:.0%}, feature rel. error {rel_f:.3g}",
        )
    else:
        _check(
            checks,
            "self-test",
            rel_f <= tolerance and agree == 1.0,
            f"feature rel. error {rel_f:.2e} (tol {tolerance:g}), top-1 agreement {agree:.0%}",
        )


RIDGE_FROM = {  # how deploy-check's line names the strength's source (edgedd.device.finetune.fit_on_features)
    RIDGE_FROM_REAL: " (pack's choice on held-out real images)",
    RIDGE_FROM_VIEWS: " (cross-validated on the synthetic images)",
}


def _fine_tune_check(checks: list, b: Bundle, ridge: float | None) -> tuple[np.ndarray, np.ndarray]:
    """fine-tune: fit the projector on this device (edgedd.device.finetune) and write it if it passes."""
    with np.errstate(
        all="ignore"
    ):  # an absurd --ridge (inf) gives a non-finite fit: projector_problem says so, numpy need not
        ft = fine_tune_projector(b, ridge)
    projector = (ft["weight"], ft["bias"])
    problem = projector_problem(b, *projector)
    # the closed-form fit minimises (3) (edgedd.device.finetune) at its strength: the packed projector cannot do better
    # there
    fit_ok = problem is None and ft["objective_after"] <= ft["objective_before"] * 1.0001 + 1e-12
    # Only a fit that passes is written: predict trusts what this check let through.
    written = (
        f"wrote {save_finetuned(b, ft).name}"
        if fit_ok
        else f"not written ({problem or 'the fit does not lower the error'})"
    )
    _check(
        checks,
        "fine-tune",
        fit_ok,
        f"ridge {ft['ridge']:g}{RIDGE_FROM.get(ft['ridge_from'], '')} on {ft['views']} views"
        + (" (the fp32 backbone's features)" if b.variant == "int8" else "")
        + ": "
        f"target MSE {ft['mse_before']:.4g} -> {ft['mse_after']:.4g}; {written}"
        + ("; the packed projector is used" if problem else ""),
    )
    return None if problem else projector  # a projector that is not finite cannot score anything


def _fitted_projector_check(checks: list, b: Bundle) -> tuple[np.ndarray, np.ndarray] | None:
    """Without fine-tuning: the projector an earlier deploy-check wrote, if any (None: the packed one)."""
    try:
        projector = load_finetuned(b)
    except EdgeddError as e:  # a bad sidecar must not stop the check: report it and use the packed projector
        warnings.warn(f"{e.problem}; ignored, the packed projector is used", stacklevel=2)
        _check(checks, "fine-tune", False, f"ignored: {e.problem}; using the packed projector")
        return None
    if projector is not None:
        _check(
            checks,
            "fine-tune",
            True,
            f"using {b.projector_file.name} ({b.projector_kind}, on this artifact's {b.variant} backbone)",
        )
    return projector


def _adapted_check(checks: list, b: Bundle, fitted) -> tuple:
    """adapted: when ``edgedd adapt`` wrote a projector for this variant, it is the one in use (predict
    prefers it) and ``fitted`` (the views-only fit) is scored beside it. Returns (in use, views-only or None)."""
    path = sidecar_path(b.directory, b.variant, "adapt")
    if not os.path.lexists(path):
        return fitted, None
    try:
        adapted = load_projector_file(b, path)
    except EdgeddError as e:  # predict refuses it too: a failed check, and the views-only fit is scored
        _check(
            checks,
            "adapted",
            False,
            f"ignored: {e.problem}; delete it or run edgedd adapt{' --int8' if b.variant == 'int8' else ''} again",
        )
        return fitted, None
    _check(
        checks,
        "adapted",
        True,
        f"using {path.name} (edgedd adapt, {b.variant} backbone); the views-only fit is scored beside it",
    )
    return adapted, fitted


def _synthetic_check(checks: list, b: Bundle, before: float, syn: float, n: int, fine_tune: bool, int8: bool) -> None:
    """synthetic accuracy: ``before`` with the packed projector, ``syn`` with the one in use, on ``n`` images."""
    # Parity with the host: the device must reproduce the host's synthetic-set figure for the same
    # projector (packed: torch-trained; fine-tuned: the same closed-form fit on the same views).
    ref = b.meta.get("reference", {})
    slack = max(SYNTHETIC_SLACK, 1.01 / n)  # one image of a tiny set is not a regression
    pairs = [
        ("packed projector", before, ref.get("int8_synthetic_top1_packed_projector" if int8 else "synthetic_top1"))
    ]
    if fine_tune and not int8:
        pairs.append(("device fit", syn, ref.get("synthetic_top1_ridge")))
    ok = all(r is None or abs(got - r) <= slack for _, got, r in pairs)
    detail = "; ".join(f"{name} {got:.1%}" + (f" (host {r:.1%})" if r is not None else "") for name, got, r in pairs)
    if fine_tune and int8:
        detail += f"; device fit with the int8 backbone {syn:.1%}"
    _check(checks, "synthetic accuracy", ok, detail + f"; parity within {slack:.0%}")


def _data_accuracy_check(
    checks: list, report: dict, b: Bundle, folder: LabelledFolder, projector, min_accuracy: float | None, views_fit=None
) -> np.ndarray:
    """data accuracy: --data top-1 with the projector in use (and the packed one, and with an adapted
    projector in use the views-only fit, for comparison), streamed a batch at a time: only the
    predicted labels are kept. Returns the labels."""
    ys, pred, pred_packed, pred_views = [], [], [], []
    for x, y in folder.batches():
        f = backbone_features(b, x)  # once for every projector
        pred.append(head(b, f, projector).argmax(1))
        pred_packed.append(head(b, f).argmax(1))
        if views_fit is not None:
            pred_views.append(head(b, f, views_fit).argmax(1))
        ys.append(y)
    if not ys:
        raise folder.no_images()
    y, skipped = np.concatenate(ys), folder.skipped
    report["data_top1"] = float((np.concatenate(pred) == y).mean())
    report["data_top1_packed_projector"] = float((np.concatenate(pred_packed) == y).mean())
    if views_fit is not None:
        report["data_top1_before_adapt"] = float((np.concatenate(pred_views) == y).mean())
    need = min_accuracy if min_accuracy is not None else 0.0
    _check(
        checks,
        "data accuracy",
        report["data_top1"] >= need,
        f"top-1 {report['data_top1']:.1%} on {len(y)} images"
        + (f" ({skipped} unreadable skipped)" if skipped else "")
        + (
            f" with the adapted projector, {report['data_top1_before_adapt']:.1%} before adapt"
            if views_fit is not None
            else ""
        )
        + f"; packed projector {report['data_top1_packed_projector']:.1%}"
        + (f"; need {need:.1%}" if min_accuracy is not None else ""),
    )
    return y


def _chance_check(checks: list, report: dict, classes: int, y: np.ndarray) -> None:
    """above chance: --data top-1 against guessing among ``classes`` classes."""
    # Chance: the better of guessing uniformly over the bundle's classes and always answering
    # the commonest class of --data. Top-1 must beat it at 3 sigma (exact binomial tail).
    chance = max(1.0 / classes, float(np.bincount(y).max()) / len(y))
    k = chance_bound(len(y), chance)
    correct = int(round(report["data_top1"] * len(y)))
    report["chance_top1"] = chance
    report["chance_bound_top1"] = None if k is None else k / len(y)
    if len(np.unique(y)) < 2:  # always answering that class is right every time: no number of images helps
        _check(
            checks,
            "above chance",
            False,
            "--data holds one class, so top-1 cannot be told from chance (100.0%) however many "
            "images it has; pass a --data folder with at least two of the bundle's classes",
        )
    elif k is None:
        _check(
            checks,
            "above chance",
            False,
            f"{len(y)} images cannot tell top-1 from chance ({chance:.1%}) at 3 sigma; pass more --data images",
        )
    else:
        _check(
            checks,
            "above chance",
            correct >= k,
            f"top-1 {report['data_top1']:.1%} ({correct}/{len(y)}); chance {chance:.1%}, need {k}/{len(y)} "
            f"({k / len(y):.1%}) to beat it at 3 sigma",
        )


def _expected_check(checks: list, report: dict, ref: dict, n: int, margin: float, int8: bool) -> None:
    """--data top-1 against the top-1 pack measured on the same edge path on real held-out images
    (with --int8, the int8 backbone's, where the bundle records it: format 1.3)."""
    own = int8 and ref.get("int8_expected_edge_top1") is not None
    host, host_n = (
        (ref.get("int8_expected_edge_top1"), ref.get("int8_expected_edge_images"))
        if own
        else (ref.get("expected_edge_top1"), ref.get("expected_edge_images"))
    )
    report["expected_top1"], report["expected_images"], report["expected_allowed_drop"] = host, host_n, None
    if not isinstance(host, (int, float)) or not isinstance(host_n, int) or host_n < 1:
        why = ref.get("expected_edge_missing") or "packed by an edgedd that did not measure one"
        _check(
            checks,
            "expected",
            None,
            f"skipped: the bundle records no expected edge top-1 ({why}); re-pack on the host with the run's training "
            "data",
        )
        return
    got = report["data_top1"]
    drop = report["expected_allowed_drop"] = allowed_drop(got, n, host, host_n, margin)
    _check(
        checks,
        "expected",
        got >= host - drop,
        f"device {got:.1%} on {n} images, host expected {host:.1%} on {host_n} held-out images"
        + ((" (int8 backbone)" if own else " (fp32 backbone)") if int8 else "")
        + f"; allowed drop {100 * drop:.1f} points (max of --margin {100 * margin:g} and 3 standard errors)",
    )


def _latency_check(
    checks: list, report: dict, b: Bundle, x1: np.ndarray, projector, max_latency_ms: float | None
) -> None:
    """latency: batch 1 through the projector in use at each intra-op thread count (edgedd.device.latency);
    the chosen count is stored for predict and Bundle, its p95 is held against ``max_latency_ms``."""
    threads, table = thread_trial(b, x1, projector)
    row = next(r for r in table if r["threads"] == threads)
    report["latency_ms_p50"], report["latency_ms_p95"], report["latency_ms_p99"] = row["p50"], row["p95"], row["p99"]
    report["threads"], report["latency_threads"] = threads, table
    try:
        report["settings_file"] = str(write_settings(b, threads, table))
    except (
        EdgeddError
    ) as e:  # a read-only bundle still gets checked; predict then runs with onnxruntime's default threads
        warnings.warn(f"{e.problem}; the measured thread count is not stored", stacklevel=2)
        report["settings_file"] = None
    tried = ", ".join(f"{r['threads']}: p95 {r['p95']:.2f}" for r in table)
    _check(
        checks,
        "latency",
        max_latency_ms is None or row["p95"] <= max_latency_ms,
        f"batch 1 with {threads} intra-op thread(s): p50 {row['p50']:.2f} ms, p95 {row['p95']:.2f} ms, p99 "
        f"{row['p99']:.2f} ms"
        + (f" (limit {max_latency_ms:g} ms)" if max_latency_ms is not None else "")
        + f"; tried threads {tried} ms",
    )


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MB; None where the platform has no getrusage."""
    if resource is None:
        return None
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / (1024.0 * 1024.0)
