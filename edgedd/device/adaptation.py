"""``edgedd adapt``: a bundle's projector adapted to the device's own labelled images
(the math: edgedd.device.adapt), written as the bundle's adapt sidecar for this backbone variant."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import EdgeddError
from .adapt import MAX_LOCAL_IMAGES, adapt_fit
from .accuracy import load_labelled_folder
from .finetune import fit_features, fit_on_features, view_inputs
from .infer import backbone_features
from .ridge import recorded_prior

if TYPE_CHECKING:
    from .bundle import Bundle


def local_features(b: Bundle, directory: str | Path) -> tuple[np.ndarray, np.ndarray, int]:
    """phi_B of a local labelled folder (untrusted: at most MAX_LOCAL_IMAGES images, two classes or
    more; unreadable files skipped and counted), with its labels and the count skipped."""
    from ..images import scan_image_folder
    from ..paths import require_dir

    if not str(directory).startswith("embedded:"):  # the loader says why an embedded set cannot be read here
        src = scan_image_folder(require_dir(directory, "--data", "pass a local ImageFolder (one sub-folder per class)"), min_classes=1)
        if len(src.paths) > MAX_LOCAL_IMAGES:
            raise EdgeddError(f"--data {directory} holds {len(src.paths)} images, more than adapt reads ({MAX_LOCAL_IMAGES})",
                              "adapt needs a few labelled images per class (5 to 50); pass a smaller folder")
    x, y, skipped = load_labelled_folder(b, directory)
    present = np.unique(y)
    if len(present) < 2:
        raise EdgeddError(f"--data {directory} holds readable images of {len(present)} class",
                          "adapt needs labelled images of at least two of the bundle's classes, one sub-folder each")
    return backbone_features(b, x), y, skipped


def adapt_bundle(b: Bundle, data: str | Path) -> dict:
    """Fit the projector from the synthetic views and the labelled images in ``data``
    (:func:`edgedd.device.adapt.adapt_fit`). Returns {"weight", "bias", "report"}; writes nothing."""
    t0 = time.perf_counter()
    xl, yl, skipped = local_features(b, data)
    a = b.artifact
    x_in, yv = view_inputs(b)
    fv = fit_features(b, x_in)
    n, k = a["targets.boxes"].shape[:2]
    views = fit_on_features(b, fv, yv)  # deploy-check's fit: its strength, and the projector kept when adapting does not win
    fit = adapt_fit(fv, yv, np.repeat(a["synthetic.labels"], k), a["classifier.weight"], a["classifier.bias"], xl, yl,
                    recorded_prior(b.meta), views["ridge"])
    weight, bias = fit.pop("weight"), fit.pop("bias")
    names = b.class_names
    report = {"bundle": str(b.directory), "int8": b.variant == "int8", **fit, "skipped_images": skipped,
              "images_per_class": {names[c]: int((yl == c).sum()) for c in np.unique(yl)},
              "views": int(n * k),
              "seconds": time.perf_counter() - t0}
    return {"weight": weight, "bias": bias, "report": report, "views_fit": views}
