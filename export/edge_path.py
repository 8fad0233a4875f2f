"""The edge path, run on the host: what pack measures the device against.

* :func:`edge_inputs`: synthetic canvases -> phi_B's input, the way the device renders them;
* :func:`features`: phi_B in torch (fp32, as the ONNX graph runs); :func:`onnx_features`: through an
  onnxruntime session (the int8 graph);
* :func:`heldout_real`: phi_B of the golden classifier's held-out slice of the training data
  (edgedd.distillation.stage1.heldout_images), on which pack chooses the device's projector strength
  (edgedd.device.ridge.select_ridge_on_images) and measures the expectation:
* :func:`expectations`: the top-1 the device should reach on real images -- phi_B -> packed
  projector -> golden classifier on that slice -- which deploy-check's ``expected`` compares with and
  pack's int8 gate judges the int8 graph on (:func:`edge_top1`; docs/ARTIFACT.md, "Real-image expectations").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from edgedd.backbones.forward import encode
from edgedd.backbones.loader import BackboneInfo
from edgedd.core.errors import EdgeddError
from edgedd.distillation.rundir import Run
from edgedd.distillation.stage1 import heldout_images
from edgedd.host.augment import eval_view, normalize
from edgedd.host.data import canvas_loader


@torch.no_grad()
def features(model, x: torch.Tensor, info: BackboneInfo) -> torch.Tensor:
    return encode(model, x, info.preprocess, batch=128, amp=False)  # fp32, as the device's ONNX graphs run


def edge_inputs(canvases: torch.Tensor, info: BackboneInfo) -> torch.Tensor:
    """Canvases -> the edge backbone's eval input, the path the device takes (augment.eval_view)."""
    return eval_view(canvases, info.preprocess.resize_size, info.preprocess.input_size)


def _finite_or_none(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and x == x else None  # NaN: an empty held-out slice


@torch.no_grad()
def heldout_features(source, idx: np.ndarray, model_b, info_b: BackboneInfo, session=None) -> tuple:
    """phi_B (n, D_B) and labels (n,) of the images ``idx`` of ``source``, preprocessed as the device
    does (edgedd.device.accuracy.load_labelled_folder: canvas at the resize size, centre crop,
    normalise), 64 at a time; unreadable images are left out (n may be 0). phi_B is ``model_b`` in
    torch, or the onnxruntime ``session`` (the int8 graph) when given. Memory: len(idx) x D_B."""
    pp = info_b.preprocess
    dev = next(model_b.parameters()).device if session is None else torch.device("cpu")
    batches = [idx[s : s + 64].tolist() for s in range(0, len(idx), 64)]
    feats, labels = [], []
    for canvases, y, _ in canvas_loader(source, pp.resize_size, pp.interpolation, 64, 0, batches=batches):
        if not len(y):
            continue
        x = edge_inputs(canvases.to(dev).float().div(255), info_b)
        f = (
            features(model_b, x, info_b).cpu()
            if session is None
            else onnx_features(session, normalize(x, pp.mean, pp.std))
        )
        feats.append(f.float())
        labels.append(torch.as_tensor(y, dtype=torch.int64))
    if not feats:  # nothing readable
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.int64)
    return torch.cat(feats), torch.cat(labels)


def top1_of(f: torch.Tensor, y: torch.Tensor, w_p, b_p, w_c, b_c) -> float:
    """Top-1 of phi_B ``f`` -> projector -> golden classifier against labels ``y`` (NaN for none)."""
    return int((((f @ w_p.T + b_p) @ w_c.T + b_c).argmax(1) == y).sum()) / len(y) if len(y) else float("nan")


def edge_top1(
    source, idx: np.ndarray, model_b, info_b: BackboneInfo, w_p, b_p, w_c, b_c, session=None
) -> tuple[float, int]:
    """Top-1 of phi_B -> packed projector -> golden classifier on the images ``idx`` of ``source``
    (:func:`heldout_features`). Returns (top-1, images)."""
    f, y = heldout_features(source, idx, model_b, info_b, session)
    return top1_of(f, y, w_p, b_p, w_c, b_c), len(y)


def onnx_features(session, x: torch.Tensor) -> torch.Tensor:
    """phi_B of normalised edge inputs through an onnxruntime session (the int8 backbone), 64 at a time."""
    xn, name = x.cpu().numpy(), session.get_inputs()[0].name
    return torch.from_numpy(
        np.concatenate([session.run(None, {name: xn[i : i + 64]})[0] for i in range(0, len(xn), 64)])
    )


@dataclass
class HeldOut:
    """Up to ``pack --expect-images`` images of the golden classifier's held-out slice, with phi_B."""

    source: object
    idx: np.ndarray
    feats: torch.Tensor  # (n, D_B), the fp32 backbone's, as the device fits on
    labels: torch.Tensor  # (n,)


def heldout_real(run: Run, model_b, info_b: BackboneInfo, max_images: int) -> tuple[HeldOut | None, str | None]:
    """The held-out images pack measures on and chooses the device's projector strength with, or None and why
    not. Without the run's training data (moved, changed, an embedded set this host cannot open) pack warns
    once and records no expectation: a bundle is still useful."""
    if max_images <= 0:
        return None, "not measured (pack --expect-images 0)"
    try:
        source, held = heldout_images(run, max_images)
    except EdgeddError as e:
        warnings.warn(
            f"no expected edge accuracy recorded ({e.problem}); deploy-check will skip its expected check", stacklevel=2
        )
        return None, f"the run's training data could not be used: {e.problem}"
    f, y = heldout_features(source, held, model_b, info_b)
    if not len(y):
        return None, "no held-out image of the training data was readable"
    return HeldOut(source, held, f, y), None


def expectations(run: Run, real: HeldOut | None, missing: str | None, w_p, b_p, w_c, b_c) -> dict:
    """What the host expects on real images, for the artifact's ``reference`` (docs/ARTIFACT.md):
    the golden classifier's held-out top-1 (stage1.json) and the edge path's top-1 on ``real``
    (:func:`heldout_real`), the figure deploy-check --data compares against; ``missing`` says why
    there is none."""
    golden = run.stage1.get("golden") or {}
    # a data set too small for a held-out slice records 0 images and a NaN top-1: both null here, as
    # the artifact schema allows (a count of 0 is refused on the device)
    out = {
        "golden_heldout_top1": _finite_or_none(golden.get("heldout_top1")),
        "golden_heldout_images": golden.get("heldout_images") or None,
        "expected_edge_top1": None,
        "expected_edge_images": None,
        "expected_edge_data": None,
        "expected_edge_missing": missing,
    }
    if real is not None:
        out.update(
            expected_edge_top1=top1_of(real.feats, real.labels, w_p, b_p, w_c, b_c),
            expected_edge_images=len(real.labels),
            expected_edge_data=real.source.name,
        )
    return out
