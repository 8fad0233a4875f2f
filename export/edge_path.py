"""The edge path, run on the host: what pack measures the device against.

* :func:`edge_inputs`: synthetic canvases -> phi_B's input, the way the device renders them;
* :func:`features`: phi_B in torch (fp32, as the ONNX graph runs); :func:`onnx_features`: through an
  onnxruntime session (the int8 graph);
* :func:`expectations`: the top-1 the device should reach on real images -- phi_B -> packed
  projector -> golden classifier on the golden classifier's held-out slice of the training data
  (:func:`heldout_images`, :func:`edge_top1`) -- which deploy-check's ``expected`` compares with and
  pack's int8 gate judges the int8 graph on (docs/ARTIFACT.md, "Real-image expectations").
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from edgedd.backbones.forward import encode
from edgedd.backbones.loader import BackboneInfo
from edgedd.core.errors import EdgeddError
from edgedd.distillation.rundir import Run
from edgedd.distillation.stage1 import holdout_split
from edgedd.distillation.stage1_files import STAGE1_FORMAT
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


def heldout_images(run: Run) -> tuple[object, np.ndarray]:
    """The run's training data and the indices of the golden classifier's held-out slice in it.

    The slice is Stage I's (edgedd.distillation.stage1.holdout_split, same fraction and seed), taken over
    the images Stage I could read: its split indexes those, so the ones it skipped as unreadable
    are left out first. Raises EdgeddError when the data cannot be opened or no longer matches.
    """
    source = run.train_data()  # refuses data whose fingerprint changed since the run
    read = np.arange(len(source))
    skipped = run.stage1.get("skipped_images") or []
    if skipped and source.paths is not None:
        # messages are "<path>: <error>" (edgedd.host.data.CanvasDataset)
        unreadable = {m.split(": ", 1)[0] for m in skipped}
        read = np.asarray([i for i, p in enumerate(source.paths) if p not in unreadable], dtype=np.int64)
    used = run.stage1.get("images_used")
    if used is not None and used != len(read):
        raise EdgeddError(f"cannot tell which {used} of the {len(source)} training images Stage I read")
    if run.stage1.get("format") != STAGE1_FORMAT:  # older Stage I: another slice, or a golden classifier refitted on it
        raise EdgeddError(
            f"its Stage I (format {run.stage1.get('format')}, this edgedd writes {STAGE1_FORMAT}) drew or trained on "
            "the held-out slice differently"
        )
    cfg = run.stage1_config()
    if cfg.golden_recipe != "converged":  # the reference recipe trains on every image: nothing is held out
        raise EdgeddError(
            f"its golden classifier ({cfg.golden_recipe} recipe) trained on every image, none is held out"
        )
    _, held = holdout_split(source.labels[read], cfg.golden_holdout, cfg.seed)  # as train_golden draws it
    return source, read[held]


@torch.no_grad()
def edge_top1(
    source, idx: np.ndarray, model_b, info_b: BackboneInfo, w_p, b_p, w_c, b_c, session=None
) -> tuple[float, int]:
    """Top-1 of phi_B -> packed projector -> golden classifier on the images ``idx`` of ``source``,
    preprocessed as the device does (edgedd.device.accuracy.load_labelled_folder: canvas at the
    resize size, centre crop, normalise). Unreadable images are left out. Returns (top-1, images).
    phi_B is ``model_b`` in torch, or the onnxruntime ``session`` (the int8 graph) when given."""
    pp = info_b.preprocess
    dev = next(model_b.parameters()).device if session is None else torch.device("cpu")
    batches = [idx[s : s + 64].tolist() for s in range(0, len(idx), 64)]
    correct = seen = 0
    for canvases, labels, _ in canvas_loader(source, pp.resize_size, pp.interpolation, 64, 0, batches=batches):
        if not len(labels):
            continue
        x = edge_inputs(canvases.to(dev).float().div(255), info_b)
        f = (
            features(model_b, x, info_b).cpu()
            if session is None
            else onnx_features(session, normalize(x, pp.mean, pp.std))
        )
        correct += int((((f @ w_p.T + b_p) @ w_c.T + b_c).argmax(1) == labels).sum())
        seen += len(labels)
    return (correct / seen if seen else float("nan")), seen


def onnx_features(session, x: torch.Tensor) -> torch.Tensor:
    """phi_B of normalised edge inputs through an onnxruntime session (the int8 backbone), 64 at a time."""
    xn, name = x.cpu().numpy(), session.get_inputs()[0].name
    return torch.from_numpy(
        np.concatenate([session.run(None, {name: xn[i : i + 64]})[0] for i in range(0, len(xn), 64)])
    )


def expectations(
    run: Run, model_b, info_b: BackboneInfo, w_p, b_p, w_c, b_c, max_images: int
) -> tuple[dict, tuple | None]:
    """What the host expects on real images, for the artifact's ``reference`` (docs/ARTIFACT.md):
    the golden classifier's held-out top-1 (stage1.json) and the edge path's top-1 on at most
    ``max_images`` of that held-out slice, the figure deploy-check --data compares against.
    Returns that and the (source, indices) of the images it classified (None: none), which the
    int8 gate measures on too.

    Without the run's training data (moved, changed, an embedded set this host cannot open) the
    edge expectation is null with the reason, and pack warns once: a bundle is still useful.
    """
    golden = run.stage1.get("golden") or {}
    # a data set too small for a held-out slice records 0 images and a NaN top-1: both null here, as
    # the artifact schema allows (a count of 0 is refused on the device)
    out = {
        "golden_heldout_top1": _finite_or_none(golden.get("heldout_top1")),
        "golden_heldout_images": golden.get("heldout_images") or None,
        "expected_edge_top1": None,
        "expected_edge_images": None,
        "expected_edge_data": None,
        "expected_edge_missing": None,
    }
    if max_images <= 0:
        out["expected_edge_missing"] = "not measured (pack --expect-images 0)"
        return out, None
    try:
        source, held = heldout_images(run)
    except EdgeddError as e:
        out["expected_edge_missing"] = f"the run's training data could not be used: {e.problem}"
        warnings.warn(
            f"no expected edge accuracy recorded ({e.problem}); deploy-check will skip its expected check", stacklevel=2
        )
        return out, None
    if len(held) > max_images:  # evenly spread over the sorted slice, so every class keeps its share
        held = held[np.linspace(0, len(held) - 1, max_images).round().astype(np.int64)]
    top, seen = edge_top1(source, held, model_b, info_b, w_p, b_p, w_c, b_c)
    if not seen:
        out["expected_edge_missing"] = "no held-out image of the training data was readable"
        return out, None
    out.update(expected_edge_top1=top, expected_edge_images=seen, expected_edge_data=source.name)
    return out, (source, held)
