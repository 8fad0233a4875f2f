"""Fine-tuning the projector on the device, and the fitted projector it writes beside the bundle.

Inference (Classifier Inheritance, METHOD.md Stage III):

    logits = classifier( P( phi_B(x) ) ),   P(f) = W f + b  (D_B -> D_A)

phi_B is the edge backbone's ONNX graph; the classifier is the golden full-data classifier
inherited from the host. Fine-tuning P needs no host backbone: the artifact stores phi_A features
of K views of every synthetic image (view 0 its eval crop, then flip + crops: the *targets*) and
the view boxes, so the device renders the same views, runs phi_B on them and solves the ridge regression in closed form:

    [W; b] = argmin ||X W^T + 1 b^T - Y||^2 + lam ||W||^2
    W^T = (Xc^T Xc + lam I)^-1 Xc^T Yc,  b = mean(Y) - W mean(X),   Xc, Yc centred      (3)

with lam = ridge * trace(Xc^T Xc) / D_B (scale-free).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgedd.core.atomic import write_bytes
from edgedd.core.errors import EdgeddError

from .graphs import load_session
from .infer import backbone_features
from .render import normalize, render_views
from .ridge import fit_ridge as fit_projector_ridge
from .ridge import mse, objective, recorded_prior, recorded_ridge, select_ridge
from .sidecar import LEGACY_FILE, VARIANTS, binding, find_projector, refit_command, sidecar_path

if TYPE_CHECKING:
    from .bundle import Bundle


FINETUNED_FILE = LEGACY_FILE  # the one sidecar of older edgedd versions; now one per variant (edgedd.device.sidecar)


def synthetic_pixels(b: Bundle) -> np.ndarray:
    return b.artifact["synthetic.images"].astype(np.float32) / 255.0


def view_inputs(b: Bundle) -> tuple[np.ndarray, np.ndarray]:
    """Render the stored views at the edge input size: (N*K, 3, S, S) inputs, (N*K, D_A) targets."""
    pix = synthetic_pixels(b)
    boxes, flips, targets = b.artifact["targets.boxes"], b.artifact["targets.flips"], b.artifact["targets.features"]
    n, k = boxes.shape[:2]
    pp = b.edge_preprocess
    views = render_views(
        np.repeat(pix, k, axis=0), boxes.reshape(n * k, 4), flips.reshape(n * k).astype(bool), pp["input_size"]
    )
    return normalize(views, pp["mean"], pp["std"]), targets.reshape(n * k, -1)


# fit_on_features' "ridge_from": a strength pack recorded (format 1.6), or the views' cross-validation
RIDGE_FROM_REAL = "held-out real images (pack)"
RIDGE_FROM_VIEWS = "synthetic views (cross-validation)"


def fine_tune_projector(b: Bundle, ridge: float | None = None) -> dict:
    """Fit the projector on this device's phi_B of the stored views (edgedd.device.ridge): at the
    relative strength ``ridge``; with None, the one pack chose on held-out real images through this
    backbone (``reference.device_ridge``, format 1.6), else the one grouped cross-validation on the
    synthetic images picks (what generalises from this bundle's images to unseen ones through *this* B).

    With the int8 backbone, phi_B is the bundle's fp32 graph run on this device (:func:`fit_features`)."""
    x_in, y = view_inputs(b)
    return fit_on_features(b, fit_features(b, x_in), y, ridge)


def fit_on_features(b: Bundle, feats: np.ndarray, y: np.ndarray, ridge: float | None = None) -> dict:
    """:func:`fine_tune_projector`'s fit on given phi_B features ``feats`` of the stored views and
    their targets ``y`` (bench/int8_device_fit.py compares feature sources through it)."""
    n, k = b.artifact["targets.boxes"].shape[:2]
    prior = recorded_prior(b.meta)
    scores, ridge_from = {}, "given"
    if ridge is None:  # pack's choice on held-out real images through this very backbone, if it made one
        ridge, ridge_from = recorded_ridge(b.meta), RIDGE_FROM_REAL
    if ridge is None:
        ridge_from = RIDGE_FROM_VIEWS
        ridge, scores = select_ridge(
            feats,
            y,
            np.repeat(np.arange(n), k),
            b.artifact["synthetic.labels"],
            prior=prior,
            classifier=b.artifact["classifier.weight"],
        )
    w, bias = fit_projector_ridge(feats, y, ridge, prior)
    w0, b0 = b.artifact["projector.weight"], b.artifact["projector.bias"]
    return {
        "weight": w,
        "bias": bias,
        "views": len(y),
        "mse_before": mse(feats, y, w0, b0),
        "mse_after": mse(feats, y, w, bias),
        "objective_before": objective(feats, y, w0, ridge, prior),
        "objective_after": objective(feats, y, w, ridge, prior),
        "ridge": ridge,
        "ridge_from": ridge_from,
        "ridge_scores": scores,
    }


def fit_features(b: Bundle, x_in: np.ndarray) -> np.ndarray:
    """phi_B of the views that the projector is fitted on: the fp32 backbone graph's, also when the
    device runs the int8 one.

    Why not the int8 graph's own features: int8 is an approximation of phi_B, and the optimised
    synthetic views are where it is least faithful (mean feature cosine to fp32 0.93-0.97 on the
    views against 0.96-0.99 on real test digits, EfficientNet-Lite at 64/96 px). A fit on int8 view
    features learns those views' quantisation errors, which real images do not have: on 12 bundles
    (bench/int8_device_fit.py, bench/RESULTS.md) the fp32-view fit scored higher on real digits in
    8 (+0.7 to +7.6 points), equal in 2, lower in 2 (-0.3, -2.5). The fp32 graph is in every
    bundle; it runs once, here, on the N*K views.
    """
    if b.variant == "fp32":
        return backbone_features(b, x_in)
    from dataclasses import replace

    entry = (
        b.entries.get("backbone_fp32") or b.meta["onnx"]["backbone"]
    )  # the verified artifact's entry; its bytes are hashed on reading
    runtime = b.runtime if "backbone_fp32" in b.entries else "onnx"
    sessions = {
        k: v for k, v in b.sessions.items() if k != "backbone_static"
    }  # the int8 one: batches go to the fp32 graph
    session = load_session(b.directory, "backbone", entry, b.providers, b.threads, runtime)
    fp32 = replace(
        b,
        variant="fp32",
        sessions=dict(sessions, backbone=session),
        graph_files=dict(b.graph_files, backbone=b.directory / entry["file"]),
        static_batch=None,
    )
    return backbone_features(fp32, x_in)


def projector_problem(b: Bundle, w, bias) -> str | None:
    """Why (w, bias) cannot be this bundle's projector D_B -> D_A, or None if it can."""
    d_a, d_b = b.artifact["projector.weight"].shape
    for name, t, shape in (("weight", w, (d_a, d_b)), ("bias", bias, (d_a,))):
        if not isinstance(t, np.ndarray) or t.dtype != np.float32:
            return f"{name} is {getattr(t, 'dtype', type(t).__name__)}, not float32"
        if t.shape != shape:
            return f"{name} has shape {t.shape}, not {shape}"
        if not np.isfinite(t).all():
            return f"{name} holds NaN or infinite values"
    return None


def save_finetuned(b: Bundle, ft: dict, kind: str = "fit") -> Path:
    """Write the device-fitted projector for ``b``'s variant (:func:`sidecar_path`), bound to the
    artifact and to the backbone graph it was fitted on; other variants' sidecars are untouched."""
    from edgedd.core.stio import serialize as save

    meta = {
        **binding(b),
        "method": "ridge (closed form)",
        "fit_features": "fp32 backbone",
        "ridge": repr(ft["ridge"]),
        "views": str(ft["views"]),
        "mse_before": repr(ft["mse_before"]),
        "mse_after": repr(ft["mse_after"]),
    }
    path = sidecar_path(b.directory, b.variant, kind)
    write_bytes(path, save({"weight": ft["weight"], "bias": ft["bias"]}, metadata=meta))
    return path


def load_finetuned(b: Bundle) -> tuple[np.ndarray, np.ndarray] | None:
    """The device-fitted projector for *this* artifact and *this* backbone variant, or None.

    The file is chosen by :func:`edgedd.device.sidecar.find_projector` (an ``adapt`` sidecar
    before the ``fit`` one); it is recorded in ``b.projector_file`` and ``b.projector_kind``.
    """
    found = find_projector(b)
    if found is None:
        return None
    w, bias = load_projector_file(b, found.path)
    b.projector_file, b.projector_kind = found.path, found.kind
    return w, bias


def load_projector_file(b: Bundle, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One projector sidecar, validated, not trusted: anything on disk could have written it.
    Raises EdgeddError naming what is wrong (damaged, fitted for another artifact or backbone,
    wrong dtype or shape, not finite)."""
    from safetensors import safe_open

    def bad(what: str) -> EdgeddError:
        return EdgeddError(
            f"{path} is not a valid fitted projector for this bundle ({what})",
            f"delete it and run {refit_command(b.variant)} again",
        )

    if path.is_symlink() or not path.is_file():
        raise bad("not a regular file")
    d_a, d_b = b.artifact["projector.weight"].shape
    try:
        with safe_open(str(path), framework="numpy") as f:
            md = f.metadata() or {}
            if sorted(f.keys()) != ["bias", "weight"]:
                raise bad(f"tensors {sorted(f.keys())[:4]}, not bias and weight")
            for name, shape in (("weight", (d_a, d_b)), ("bias", (d_a,))):  # shape from the header, before reading data
                if tuple(f.get_slice(name).get_shape()) != shape:
                    raise bad(f"{name} has shape {tuple(f.get_slice(name).get_shape())}, not {shape}")
            w, bias = f.get_tensor("weight"), f.get_tensor("bias")
    except EdgeddError:
        raise
    except Exception:  # safetensors' own error types
        raise bad("damaged") from None
    if md.get("artifact_sha256") != b.artifact.file_sha256:
        raise bad("fitted for another artifact")
    fitted_on = md.get("backbone")
    if fitted_on in VARIANTS and fitted_on != b.variant:  # a file renamed or forged across variants
        raise EdgeddError(
            f"{path} is not a valid fitted projector for this bundle (fitted for the {fitted_on} backbone, this run "
            f"uses {b.variant})",
            f"delete it and run {refit_command(b.variant)} on this bundle to fit it for the {b.variant} backbone",
        )
    if fitted_on != b.variant:
        raise bad(f"fitted for the {fitted_on or 'unknown'} backbone, this run uses {b.variant}")
    if md.get("backbone_sha256") != b.graph_sha256["backbone"]:
        raise bad("fitted for another backbone graph")
    problem = projector_problem(b, w, bias)
    if problem:
        raise bad(problem)
    if (
        b.variant == "int8" and "fit_features" not in md
    ):  # an older edgedd's fit on int8 view features: valid, but worse
        import warnings

        warnings.warn(
            f"{path} was fitted on the int8 graph's view features by an older edgedd (up to 7.6 points lower on "
            "real images); run edgedd deploy-check --int8 again to refit it on the fp32 graph's",
            stacklevel=2,
        )
    return w, bias
