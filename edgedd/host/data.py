"""The host's streamed canvases: a torch DataLoader over :mod:`edgedd.core.images`' labelled images.

Images are decoded in DataLoader workers, resized (shorter side to ``Preprocess.resize_size``)
and centre-cropped to a square *canvas*; crops to the backbone's input size happen on the compute
device (see ``edgedd.host.augment``), so one decode serves the centre view and every augmented view.

Unreadable images (truncated, corrupt, not an image): by default each is **skipped** and counted,
and a warning names them; ``strict=True`` (CLI ``--strict-images``) stops at the first one instead.

Reading, decoding and scanning datasets live in :mod:`edgedd.core.images` (torch-free, used by the
device); their names are re-exported here so ``from edgedd.host.data import open_dataset`` keeps working.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from edgedd.core.errors import EdgeddError
from edgedd.core.images import (
    EMBEDDED_DATASETS,
    EMBEDDED_PREFIX,
    EXPORT_MARKER,
    IMAGE_EXTENSIONS,
    INTERPOLATIONS,
    MAX_ASPECT,
    UNREADABLE_IMAGE,
    LabelledImages,
    export_image_folder,
    load_canvas,
    open_dataset,
    resize_center_crop,
    scan_image_folder,
    to_rgb,
    write_image_folder,
)

# Its own names, and those it re-exports from edgedd.core.images (the names this module had before that one).
__all__ = [
    "EMBEDDED_DATASETS",
    "EMBEDDED_PREFIX",
    "EXPORT_MARKER",
    "IMAGE_EXTENSIONS",
    "INTERPOLATIONS",
    "MAX_ASPECT",
    "UNREADABLE_IMAGE",
    "CanvasDataset",
    "LabelledImages",
    "canvas_loader",
    "collate_canvases",
    "default_num_workers",
    "export_image_folder",
    "load_canvas",
    "open_dataset",
    "resize_center_crop",
    "scan_image_folder",
    "to_rgb",
    "write_image_folder",
]


class CanvasDataset:
    """Map-style dataset of (canvas uint8 HxWx3 or None, label, error message or "").

    A torch ``Dataset`` by duck typing, so this module needs no torch import.
    """

    def __init__(self, source: LabelledImages, size: int, interpolation: str):
        if interpolation not in INTERPOLATIONS:
            raise EdgeddError(f"unknown interpolation {interpolation!r}", f"choose one of {', '.join(INTERPOLATIONS)}")
        self.source, self.size, self.interpolation = source, size, interpolation

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        label = int(self.source.labels[i])
        if self.source.pixels is not None:
            img = Image.fromarray(self.source.pixels[i])
            return np.asarray(resize_center_crop(img, self.size, self.interpolation)), label, ""
        path = self.source.paths[i]
        try:
            return load_canvas(path, self.size, self.interpolation), label, ""
        except UNREADABLE_IMAGE as e:
            return None, label, f"{path}: {type(e).__name__}: {e}"


def collate_canvases(batch):
    """Stack the readable items; hand the unreadable ones back by message."""
    import torch

    ok = [b for b in batch if b[0] is not None]
    errors = [b[2] for b in batch if b[0] is None]
    if ok:
        images = torch.from_numpy(np.stack([b[0] for b in ok])).permute(0, 3, 1, 2).contiguous()
        labels = torch.tensor([b[1] for b in ok], dtype=torch.long)
    else:
        images = torch.empty(0, 3, 0, 0, dtype=torch.uint8)
        labels = torch.empty(0, dtype=torch.long)
    return images, labels, errors


def canvas_loader(
    source: LabelledImages,
    size: int,
    interpolation: str,
    batch_size: int,
    num_workers: int,
    pin_memory: bool = False,
    batches: list[list[int]] | None = None,
):
    """A DataLoader over canvases in dataset order (statistics need no shuffling), or over the
    given index ``batches`` (one rank's share)."""
    from torch.utils.data import DataLoader

    return DataLoader(
        CanvasDataset(source, size, interpolation),
        **({"batch_size": batch_size, "shuffle": False} if batches is None else {"batch_sampler": batches}),
        num_workers=num_workers,
        collate_fn=collate_canvases,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )


def default_num_workers() -> int:
    return max(0, min(8, (os.cpu_count() or 1) - 1))
