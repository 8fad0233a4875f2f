"""``--min-copy-ratio``: Stage II kept away from every training image in pixel space.

The copy ratio (edgedd.core.copyratio) says after a run how close its images lie to the training
set; this term makes a floor of it during the run. With v(.) the copy ratio's pixel vector (the image
area-averaged to CANVAS x CANVAS RGB, scaled so that distances are RMS pixel distances) and m the
training set's median nearest-other distance, for each synthetic image s

    r(s)    = min over training images x of ||v(s) - v(x)|| / m                      (1)
    L_floor = w * sum_s relu(tau - r(s))^2                                             (2)

(2) is zero once every image is at least tau from every training image (tau = 1: as far as a typical
real image is from its nearest other one); below, its gradient moves s straight away from its
nearest training image, while the matching loss decides where along the rest of the image space it
goes. r(s) is exactly the copy ratio's pixel figure (the same canvases, references and m), so the
run's summary measures what (2) held.

Why pixels and not phi_A: the floor is about what a bundle ships, the images themselves; phi_A of a
good set *should* lie near the real class statistics (that is what SFM matches).

Memory: every readable training image's pixel vector, float16 (6 KiB each at CANVAS 32), held for
the run; more than ``MAX_BYTES`` is refused. Cost per step: one (N x n_train) product.
"""

from __future__ import annotations

import numpy as np
import torch

from edgedd.backbones.loader import BackboneInfo
from edgedd.core.config import DistillConfig
from edgedd.core.copyratio import CANVAS, Nearest, sample_references
from edgedd.core.errors import EdgeddError
from edgedd.core.images import LabelledImages

from .copies import pixel_vectors, training_canvases

MAX_BYTES = 4 << 30  # the training set's pixel vectors, float16: about 700,000 images
ROWS = 65536  # training vectors per distance block (bounds the step's (N x block) working memory)


def pixel_vectors_torch(images: torch.Tensor) -> torch.Tensor:
    """copies.pixel_vectors, differentiable: (N, 3, R, R) in [0, 1] -> (N, 3 CANVAS^2)."""
    return torch.nn.functional.adaptive_avg_pool2d(images.float(), CANVAS).flatten(1) / (3 * CANVAS * CANVAS) ** 0.5


class CopyFloor:
    """Wraps a Stage II step: its own gradients, then (2)'s added into the pyramid. ``ratios`` is (1)."""

    def __init__(self, step, info: BackboneInfo, cfg: DistillConfig, source: LabelledImages, device, workers: int):
        need = len(source) * 3 * CANVAS * CANVAS * 2
        if need > MAX_BYTES:
            raise EdgeddError(
                f"--min-copy-ratio holds every training image's {CANVAS}x{CANVAS} pixels: {need / 2**30:.1f} GiB for "
                f"{len(source)} images, over the {MAX_BYTES / 2**30:.0f} GiB it allows",
                "distill from a subset of the data, or drop --min-copy-ratio (every run still reports its copy ratio)",
            )
        self.step, self.tau, self.weight = step, cfg.min_copy_ratio, cfg.copy_weight
        parts, ids = [], []
        for canvases, pos in training_canvases(info, source, num_workers=workers):
            parts.append(pixel_vectors(canvases.float().div_(255)).astype(np.float16))
            ids.append(pos)
        v = np.concatenate(parts) if parts else np.empty((0, 3 * CANVAS * CANVAS), np.float16)
        pos = np.concatenate(ids) if ids else np.empty(0, np.int64)
        if len(pos) < 2:
            raise EdgeddError(
                "--min-copy-ratio needs at least two readable training images", "check the data or drop the option"
            )
        refs = np.intersect1d(sample_references(len(source), cfg.seed), pos)  # as copies.measure draws them
        near = Nearest(v[np.searchsorted(pos, refs)].astype(np.float32), refs)
        for s in range(0, len(v), ROWS):
            near.update(v[s : s + ROWS].astype(np.float32), pos[s : s + ROWS])
        self.m = float(np.median(near.distances()))
        self.v = torch.from_numpy(v).to(device)
        self.history: list[float] = []

    def ratios(self, images: torch.Tensor) -> torch.Tensor:
        """(1) of each image (N, 3, R, R), differentiable."""
        q = pixel_vectors_torch(images)
        qq = (q * q).sum(1, keepdim=True)
        d2 = (
            torch.cat(
                [
                    (qq + (b * b).sum(1)[None] - 2 * q @ b.T).min(1, keepdim=True).values
                    for b in (self.v[s : s + ROWS].float() for s in range(0, len(self.v), ROWS))
                ],
                1,
            )
            .min(1)
            .values
        )
        return d2.clamp_min(1e-12).sqrt() / self.m

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        """(2)."""
        return self.weight * torch.relu(self.tau - self.ratios(images)).pow(2).sum()

    def __call__(self, loop) -> torch.Tensor:
        loss = self.step(loop)
        floor = self.loss(loop.pyr.decode())
        floor.backward()
        self.history.append(float(floor.detach()))
        return loss.detach() + floor.detach()

    def summary(self) -> dict:
        h = self.history
        return {
            "min_copy_ratio": self.tau,
            "weight": self.weight,
            "median_real_nearest": self.m,
            "steps": len(h),
            "loss_first": h[0] if h else None,
            "loss_last": h[-1] if h else None,
        }
