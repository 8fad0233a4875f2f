"""The training images as Stage II's extra terms see them: canvases, and phi_A of their centre crops.

Three parts of a run look at every training image's centre crop through phi_A after Stage I: the
sub-centre targets (``sfm_sub``, edgedd.distillation.subcentres), the copy floor in phi_A
(edgedd.distillation.copyfloor) and the copy ratio at the end (edgedd.distillation.copies). One
no-grad pass, :func:`training_features`, serves all three (:class:`TrainingFeatures`), where each
made its own before. A feature is computed exactly as the copy ratio takes it (canvases at the
backbone's resize size, the exact centre crop, ``edgedd.backbones.forward.encode``), in dataset
order, so a held row equals what a fresh pass would give.

Memory: n x D float32 (14 MiB for 3,600 images at D = 1,024; 3.7 GiB for ImageNet-1k at 768).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edgedd.backbones.forward import encode
from edgedd.backbones.loader import BackboneInfo
from edgedd.core.images import LabelledImages
from edgedd.core.progress import Progress
from edgedd.host.augment import center_crop
from edgedd.host.data import CanvasDataset


class _Indexed:
    """(canvas or None, dataset position): a pass must know which rows it read."""

    def __init__(self, data: CanvasDataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.data[i][0], i


def _collate(batch):
    ok = [b for b in batch if b[0] is not None]  # unreadable images were reported by Stage I
    if not ok:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8), np.empty(0, dtype=np.int64)
    return torch.from_numpy(np.stack([b[0] for b in ok])).permute(0, 3, 1, 2).contiguous(), np.asarray(
        [b[1] for b in ok]
    )


def training_canvases(
    info: BackboneInfo,
    source: LabelledImages,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = False,
    label: str = "training canvases",
):
    """The readable training canvases at the backbone's resize size (uint8 (B, 3, S, S)) with their
    dataset positions, a batch at a time, in dataset order; empty batches skipped."""
    from torch.utils.data import DataLoader

    pp = info.preprocess
    data = CanvasDataset(source, pp.resize_size, pp.interpolation)
    loader = DataLoader(
        _Indexed(data), batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate
    )
    with Progress(len(source), label, enabled=progress) as bar:
        for canvases, ids in loader:
            bar.update(len(ids))
            if len(ids):
                yield canvases, ids


@dataclass(frozen=True)
class TrainingFeatures:
    """phi_A of every readable training image's centre crop: ``feats`` (n, D) float32, in dataset order,
    with each row's dataset position ``pos`` (ascending) and class ``labels``."""

    pos: np.ndarray
    labels: np.ndarray
    feats: np.ndarray

    def at(self, ids: np.ndarray) -> np.ndarray:
        """The rows of dataset positions ``ids`` (each one held: a readable image)."""
        return self.feats[np.searchsorted(self.pos, ids)]


def centre_features(model, info: BackboneInfo, x: torch.Tensor, *, amp: bool = True) -> torch.Tensor:
    """(B, D) float32 phi_A of the centre crops of (B, 3, S, S) canvases in [0, 1], no graph: the one
    definition of a training image's (and a synthetic image's) feature in the copy ratio's sense."""
    with torch.no_grad():
        return encode(model, center_crop(x, info.preprocess.input_size), info.preprocess, amp=amp).float()


def training_features(
    model,
    info: BackboneInfo,
    source: LabelledImages,
    device,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    amp: bool = True,
    progress: bool = False,
) -> TrainingFeatures:
    """The one no-grad pass: :class:`TrainingFeatures` of ``source``."""
    feats, ids = [], []
    for canvases, pos in training_canvases(
        info, source, batch_size=batch_size, num_workers=num_workers, progress=progress, label="training features"
    ):
        feats.append(centre_features(model, info, canvases.to(device).float().div_(255), amp=amp).cpu().numpy())
        ids.append(pos)
    pos = np.concatenate(ids) if ids else np.empty(0, np.int64)
    d = feats[0].shape[1] if feats else 0
    return TrainingFeatures(
        pos, np.asarray(source.labels)[pos].astype(np.int64), np.concatenate(feats) if feats else np.empty((0, d))
    )
