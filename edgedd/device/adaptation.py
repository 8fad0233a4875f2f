"""``edgedd adapt``: a bundle's projector adapted to the device's own labelled images
(the math: edgedd.device.adapt), written as the bundle's adapt sidecar for this backbone variant."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgedd.core.errors import EdgeddError

from .accuracy import LabelledFolder
from .adapt import MAX_LOCAL_IMAGES, STRENGTH_SPAN, adapt_fit
from .finetune import RIDGE_FROM_REAL, fit_features, fit_on_features, view_inputs
from .infer import backbone_features
from .ridge import recorded_prior

if TYPE_CHECKING:
    from .bundle import Bundle


def local_features(b: Bundle, directory: str | Path) -> tuple[np.ndarray, np.ndarray, int]:
    """phi_B of a local labelled folder (untrusted: at most MAX_LOCAL_IMAGES images, two classes or
    more; read a batch at a time, unreadable files skipped and counted), its labels, the count skipped."""
    folder = LabelledFolder(b, directory)
    if len(folder.paths) > MAX_LOCAL_IMAGES:
        raise EdgeddError(
            f"--data {directory} holds {len(folder.paths)} images, more than adapt reads ({MAX_LOCAL_IMAGES})",
            "adapt needs a few labelled images per class (5 to 50); pass a smaller folder",
        )
    parts = [(backbone_features(b, x), y) for x, y in folder.batches()]
    if not parts:
        raise folder.no_images()
    feats, labels = np.concatenate([f for f, _ in parts]), np.concatenate([y for _, y in parts])
    present = np.unique(labels)
    if len(present) < 2:
        raise EdgeddError(
            f"--data {directory} holds readable images of {len(present)} class",
            "adapt needs labelled images of at least two of the bundle's classes, one sub-folder each",
        )
    return feats, labels, folder.skipped


def local_span(ridge_from: str) -> float:
    """How far (decades) the local images may move deploy-check's strength: STRENGTH_SPAN when the views'
    cross-validation chose it, 0 when pack chose it on held-out real images through this backbone
    (format 1.6): a few local images per class are less evidence than those hundreds, and moving off
    that choice cost 0.8 points on average at k = 10 on the demo's bundle, 2.0 on one draw
    (bench/RESULTS.md, "When pack has already chosen the strength")."""
    return 0.0 if ridge_from == RIDGE_FROM_REAL else STRENGTH_SPAN


def adapt_bundle(b: Bundle, data: str | Path) -> dict:
    """Fit the projector from the synthetic views and the labelled images in ``data``
    (:func:`edgedd.device.adapt.adapt_fit`). Returns {"weight", "bias", "report"}; writes nothing."""
    t0 = time.perf_counter()
    xl, yl, skipped = local_features(b, data)
    a = b.artifact
    x_in, yv = view_inputs(b)
    fv = fit_features(b, x_in)
    n, k = a["targets.boxes"].shape[:2]
    views = fit_on_features(b, fv, yv)  # deploy-check's fit: the strength adapt_fit starts from
    fit = adapt_fit(
        fv,
        yv,
        np.repeat(a["synthetic.labels"], k),
        a["classifier.weight"],
        a["classifier.bias"],
        xl,
        yl,
        recorded_prior(b.meta),
        views["ridge"],
        strength_span=local_span(views["ridge_from"]),
    )
    weight, bias = fit.pop("weight"), fit.pop("bias")
    names = b.class_names
    report = {
        "bundle": str(b.directory),
        "int8": b.variant == "int8",
        **fit,
        "view_ridge_from": views["ridge_from"],
        "skipped_images": skipped,
        "images_per_class": {names[c]: int((yl == c).sum()) for c in np.unique(yl)},
        "views": int(n * k),
        "seconds": time.perf_counter() - t0,
    }
    return {"weight": weight, "bias": bias, "report": report, "views_fit": views}


def save_adapted(b: Bundle, result: dict) -> Path:
    """Write the adapted projector as ``b``'s adapt sidecar for its variant (edgedd.device.sidecar:
    bound to the artifact and the backbone graph, validated on load like every fitted projector,
    preferred over deploy-check's fit by predict and Bundle.open)."""
    from edgedd.core.atomic import write_bytes
    from edgedd.core.stio import serialize as save

    from .sidecar import binding, sidecar_path

    r = result["report"]
    meta = {
        **binding(b),
        "method": "adapt (views + local images, closed form)"
        if r["used"] != "local probe"
        else "adapt (views-only fit + a probe on the local images, closed form)",
        "fit_features": "fp32 backbone",
        "used": r["used"],
        "ridge": repr(r["ridge"]),
        "strength_from": r["strength_from"],
        "local_weight": repr(r["local_weight"]),
        "probe_mix": repr(r["probe_mix"]),
        "probe_ridge": repr(r["probe_ridge"]),
        "views": str(r["views"]),
        "local_images": str(r["images"]),
    }
    path = sidecar_path(b.directory, b.variant, "adapt")
    write_bytes(path, save({"weight": result["weight"], "bias": result["bias"]}, metadata=meta))
    return path


def adapt_and_save(b: Bundle, data: str | Path) -> dict:
    """``edgedd adapt`` and ``Bundle.adapt``: :func:`adapt_bundle`, then :func:`save_adapted`; the
    result with the report's ``sidecar`` (the file's name) and ``path``."""
    result = adapt_bundle(b, data)
    result["path"] = save_adapted(b, result)
    result["report"]["sidecar"] = result["path"].name
    return result
