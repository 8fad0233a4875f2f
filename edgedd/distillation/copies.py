"""The copy ratio's one streaming pass over the training data (the figures: :mod:`edgedd.core.copyratio`).

Before the pass, the queries: every synthetic set asked about (the result, and the run's starting
set) and a seeded sample of at most ``copyratio.REFERENCES`` real reference images, each as a
``CANVAS`` x ``CANVAS`` pixel vector and as phi_A of its centre crop. Then every training canvas
once, at the run's canvas size: one no-grad forward of its centre crop, and each query's running
nearest distance updated (:class:`edgedd.core.copyratio.Nearest`). Memory: the queries and one batch.
Cost: one centre-crop forward per training image, against Stage I's 1 + K views per image, or none
when the run already holds those features (edgedd.distillation.trainingset).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from edgedd.backbones.loader import BackboneInfo
from edgedd.core.copyratio import CANVAS, SPACES, Nearest, sample_references, summarise
from edgedd.core.images import LabelledImages
from edgedd.host.data import CanvasDataset

from .trainingset import TrainingFeatures, centre_features, training_canvases


def pixel_tensor(images: torch.Tensor, canvas: int = CANVAS) -> torch.Tensor:
    """(N, 3, R, R) in [0, 1] -> (N, 3 canvas^2) float32 scaled so that the Euclidean distance is
    the RMS pixel distance: area-averaged to canvas x canvas, divided by sqrt(3 canvas^2).
    Differentiable (the copy floor's pixel space, edgedd.distillation.copyfloor)."""
    return F.adaptive_avg_pool2d(images.float(), canvas).flatten(1) / (3 * canvas * canvas) ** 0.5


def pixel_vectors(images: torch.Tensor, canvas: int = CANVAS) -> np.ndarray:
    """:func:`pixel_tensor` as a numpy array (no graph)."""
    return pixel_tensor(images.detach(), canvas).cpu().numpy()


@torch.no_grad()
def measure(
    model: torch.nn.Module,
    info: BackboneInfo,
    source: LabelledImages,
    sets: dict[str, torch.Tensor],
    *,
    seed: int,
    device,
    batch_size: int = 256,
    num_workers: int = 0,
    amp: bool = True,
    progress: bool = True,
    features: TrainingFeatures | None = None,
) -> dict[str, dict]:
    """The copy ratio (``copyratio.summarise``) of each named set of (N, 3, R, R) images in [0, 1].
    ``features``: the training images' phi_A already computed this run (edgedd.distillation.trainingset);
    the pass then reads only their pixels."""
    pp = info.preprocess
    data = CanvasDataset(source, pp.resize_size, pp.interpolation)

    def spaces(x: torch.Tensor, ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
        x = x.to(device).float()
        if ids is not None and features is not None:
            feats = features.at(ids)
        elif len(x):
            feats = torch.cat(
                [
                    centre_features(model, info, x[i : i + batch_size], amp=amp).cpu()
                    for i in range(0, len(x), batch_size)
                ]
            ).numpy()
        else:
            feats = np.empty(0)
        return {"pixels": pixel_vectors(x), "features": feats}

    refs = [(c, i) for i in sample_references(len(source), seed) for c in [data[int(i)][0]] if c is not None]
    ref_images = (
        torch.from_numpy(np.stack([c for c, _ in refs])).permute(0, 3, 1, 2).float().div(255)
        if refs
        else torch.empty(0, 3, 1, 1)
    )
    ref_ids = np.asarray([i for _, i in refs], dtype=np.int64)
    queries = {
        "__references__": (spaces(ref_images, ref_ids), ref_ids),
        **{name: (spaces(x), None) for name, x in sets.items()},
    }
    near = {(name, s): Nearest(q[s], ids) for name, (q, ids) in queries.items() for s in SPACES}
    for canvases, ids in training_canvases(
        info, source, batch_size=batch_size, num_workers=num_workers, progress=progress, label="copy ratio"
    ):
        real = spaces(canvases.float().div_(255), ids)
        for (_, s), tracker in near.items():
            tracker.update(real[s], ids)
    ref_d = {s: near["__references__", s].distances() for s in SPACES}
    return {name: summarise({s: near[name, s].distances() for s in SPACES}, ref_d) for name in sets}
