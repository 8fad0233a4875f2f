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

from edgedd.backbones.forward import backbone_autocast, encode, output_width
from edgedd.backbones.loader import BackboneInfo
from edgedd.core.config import DistillConfig
from edgedd.core.copyratio import CANVAS, Nearest, sample_references
from edgedd.core.errors import EdgeddError
from edgedd.core.images import LabelledImages
from edgedd.host.augment import center_crop, normalize

from .copies import pixel_vectors, training_canvases

MAX_BYTES = 4 << 30  # the training set's vectors held, float16: about 700,000 images' pixels
ROWS = 65536  # training vectors per distance block (bounds the step's (N x block) working memory)


def pixel_vectors_torch(images: torch.Tensor) -> torch.Tensor:
    """copies.pixel_vectors, differentiable: (N, 3, R, R) in [0, 1] -> (N, 3 CANVAS^2)."""
    return torch.nn.functional.adaptive_avg_pool2d(images.float(), CANVAS).flatten(1) / (3 * CANVAS * CANVAS) ** 0.5


class _Space:
    """One space of the copy ratio for the floor: the training vectors (float16, on the device) and
    m, the references' median nearest-other distance (drawn as copies.measure draws them)."""

    def __init__(self, vectors: np.ndarray, pos: np.ndarray, n: int, seed: int, device):
        refs = np.intersect1d(sample_references(n, seed), pos)
        near = Nearest(vectors[np.searchsorted(pos, refs)].astype(np.float32), refs)
        for s in range(0, len(vectors), ROWS):
            near.update(vectors[s : s + ROWS].astype(np.float32), pos[s : s + ROWS])
        self.m = float(np.median(near.distances()))
        self.v = torch.from_numpy(vectors).to(device)

    def ratios(self, q: torch.Tensor) -> torch.Tensor:
        """(1) of query vectors q (N, d), differentiable."""
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


class CopyFloor:
    """Wraps a Stage II step: its own gradients, then (2)'s added into the pyramid, in pixels and, with
    ``cfg.copy_floor_features``, in phi_A of the centre crop too. ``ratios`` is (1) per space."""

    def __init__(self, step, model, info: BackboneInfo, cfg: DistillConfig, source: LabelledImages, device, workers):
        self.step, self.model, self.info, self.amp = step, model, info, cfg.amp
        self.tau, self.weight = cfg.min_copy_ratio, cfg.copy_weight
        width = 3 * CANVAS * CANVAS + (output_width(model) if cfg.copy_floor_features else 0)
        need = len(source) * width * 2
        if need > MAX_BYTES:
            held = "pixels and phi_A features" if cfg.copy_floor_features else "pixels"
            raise EdgeddError(
                f"--min-copy-ratio holds every training image's {held}: {need / 2**30:.1f} GiB for {len(source)} "
                f"images, over the {MAX_BYTES / 2**30:.0f} GiB it allows",
                "distill from a subset of the data, or drop --min-copy-ratio (every run still reports its copy ratio)",
            )
        parts, feats, ids = [], [], []
        for canvases, pos in training_canvases(info, source, num_workers=workers):
            x = canvases.float().div_(255)
            parts.append(pixel_vectors(x).astype(np.float16))
            if cfg.copy_floor_features:
                feats.append(self._features(x.to(device), grad=False).cpu().numpy().astype(np.float16))
            ids.append(pos)
        pos = np.concatenate(ids) if ids else np.empty(0, np.int64)
        if len(pos) < 2:
            raise EdgeddError(
                "--min-copy-ratio needs at least two readable training images", "check the data or drop the option"
            )
        self.spaces = {"pixels": _Space(np.concatenate(parts), pos, len(source), cfg.seed, device)}
        if feats:
            self.spaces["features"] = _Space(np.concatenate(feats), pos, len(source), cfg.seed, device)
        self.history: list[float] = []

    def _features(self, images: torch.Tensor, grad: bool = True) -> torch.Tensor:
        """phi_A of the centre crop, as copies.measure takes it (edgedd.backbones.forward.encode), with a graph."""
        if not grad:
            return encode(
                self.model, center_crop(images, self.info.preprocess.input_size), self.info.preprocess, amp=self.amp
            )
        pp = self.info.preprocess
        with backbone_autocast(images.device, self.amp):
            return self.model(normalize(center_crop(images, pp.input_size), pp.mean, pp.std)).float()

    @property
    def m(self) -> float:
        return self.spaces["pixels"].m

    def ratios(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(1) of each image (N, 3, R, R) in each floored space, differentiable."""
        out = {"pixels": self.spaces["pixels"].ratios(pixel_vectors_torch(images))}
        if "features" in self.spaces:
            out["features"] = self.spaces["features"].ratios(self._features(images))
        return out

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        """(2), summed over the floored spaces."""
        return sum(self.weight * torch.relu(self.tau - r).pow(2).sum() for r in self.ratios(images).values())

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
            "spaces": list(self.spaces),
            "median_real_nearest": {k: sp.m for k, sp in self.spaces.items()},
            "steps": len(h),
            "loss_first": h[0] if h else None,
            "loss_last": h[-1] if h else None,
        }
