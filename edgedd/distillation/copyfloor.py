"""``--min-copy-ratio``: Stage II kept away from every training image, in pixels and in phi_A.

The copy ratio (edgedd.core.copyratio) says after a run how close its images lie to the training
set; this term makes a floor of it during the run. In a space S (pixels: the image area-averaged to
CANVAS x CANVAS RGB, scaled so that distances are RMS pixel distances; features: phi_A of the centre
crop) with m_S the training set's median nearest-other distance, for each synthetic image s

    r_S(s)  = min over training images x of ||S(s) - S(x)|| / m_S                     (1)
    L_floor = w * sum_S sum_s relu(tau - r_S(s))^2                                     (2)

(2) is zero once every image is at least tau from every training image (tau = 1: as far as a typical
real image is from its nearest other one); below, its gradient moves s straight away from its
nearest training image, while the matching loss decides where along the rest of the image space it
goes. A hinge settles a hair under tau (measured: 1.047 for tau 1.05). r_S is the copy ratio's own
figure (the same canvases, references and m, to the float16 the training vectors are held in), so
the run's summary measures what (2) held.

Features are floored by default (``copy_floor_features``): a set whose phi_A sits on one real
image's phi_A is read by A as that image, and every output reports that space too. The price: a
good set's features *should* lie near the real class statistics, which is what SFM matches.

Memory: every readable training image's pixel vector (6 KiB each at CANVAS 32) and, floored in phi_A
too, its centre-crop features, float16 on the run's device, held for the run; more than ``MAX_BYTES``
is refused. Cost per step: a no-grad (N x n_train) product per space to find each image's nearest
training vector, then the distance to that one vector with a graph; in phi_A a forward and backward
of the N centre crops, in the step's own chunks (``chunk``: edgedd.distillation.chunked). With
several ranks each rank floors its own rows (every rank holds the training vectors) and the floor's
value in the loss is summed over the ranks. A resumed run streams the training vectors again.
"""

from __future__ import annotations

import numpy as np
import torch

from edgedd.backbones.forward import backbone_autocast, output_width
from edgedd.backbones.loader import BackboneInfo
from edgedd.core.config import DistillConfig
from edgedd.core.copyratio import CANVAS, Nearest, sample_references
from edgedd.core.errors import EdgeddError
from edgedd.core.images import LabelledImages
from edgedd.host.augment import center_crop, normalize

from .copies import pixel_tensor, pixel_vectors
from .trainingset import TrainingFeatures, training_canvases, training_features

MAX_BYTES = 4 << 30  # the training set's vectors held, float16: about 700,000 images' pixels
ROWS = 65536  # training vectors per distance block (bounds the step's (N x block) working memory)


def check_memory(cfg: DistillConfig, n: int, model) -> None:
    """Refuse, in one line, a floor whose training vectors (``n`` images, float16) would exceed MAX_BYTES
    (the pipeline asks before Stage I, so a refusal costs no pass over the data)."""
    width = 3 * CANVAS * CANVAS + (output_width(model) if cfg.copy_floor_features else 0)
    need = n * width * 2
    if need > MAX_BYTES:
        held = "pixels and phi_A features" if cfg.copy_floor_features else "pixels"
        raise EdgeddError(
            f"--min-copy-ratio holds every training image's {held}: {need / 2**30:.1f} GiB for {n} images, over the "
            f"{MAX_BYTES / 2**30:.0f} GiB it allows",
            "distill from a subset of the data, or drop --min-copy-ratio (every run still reports its copy ratio)",
        )


class _Space:
    """One space of the copy ratio for the floor: the training vectors (float16, on the device) and
    m, the references' median nearest-other distance (drawn as copies.measure draws them)."""

    def __init__(self, space: str, vectors: np.ndarray, pos: np.ndarray, n: int, seed: int, device):
        refs = np.intersect1d(sample_references(n, seed), pos)
        near = Nearest(vectors[np.searchsorted(pos, refs)].astype(np.float32), refs)
        for s in range(0, len(vectors), ROWS):
            near.update(vectors[s : s + ROWS].astype(np.float32), pos[s : s + ROWS])
        self.m = float(np.median(near.distances())) if len(refs) else float("nan")
        # a median at the float32 rounding of ||q||^2 + ||x||^2 - 2 q.x (about 1e-3 of a norm) is a duplicate's 0
        norm = float(np.median(np.linalg.norm(vectors[:1000].astype(np.float32), axis=1)))
        if not (self.m > 1e-3 * norm and np.isfinite(self.m)):
            raise EdgeddError(
                f"--min-copy-ratio has no scale in {space}: the training images' median distance to their nearest "
                f"other is {self.m} (duplicate images?)",
                "remove duplicate training images, or drop --min-copy-ratio (every run still reports its copy ratio)",
            )
        self.v = torch.from_numpy(vectors).to(device)

    @torch.no_grad()
    def nearest(self, q: torch.Tensor) -> torch.Tensor:
        """Index of each query's nearest training vector, a block of ROWS at a time (no graph)."""
        qq = (q * q).sum(1, keepdim=True)
        best = torch.full((len(q),), float("inf"), device=q.device)
        arg = torch.zeros(len(q), dtype=torch.long, device=q.device)
        for s in range(0, len(self.v), ROWS):
            b = self.v[s : s + ROWS].float()
            d2, j = (qq + (b * b).sum(1)[None] - 2 * q @ b.T).min(1)
            better = d2 < best
            best, arg = torch.where(better, d2, best), torch.where(better, j + s, arg)
        return arg

    def ratios(self, q: torch.Tensor) -> torch.Tensor:
        """(1) of query vectors q (N, d), differentiable: the distance to each one's nearest vector."""
        x = self.v[self.nearest(q.detach().float())].float()
        return ((q - x) ** 2).sum(1).clamp_min(1e-12).sqrt() / self.m


class CopyFloor:
    """Wraps a Stage II step: its own gradients, then (2)'s added into the pyramid, in pixels and, with
    ``cfg.copy_floor_features``, in phi_A of the centre crop too. ``ratios`` is (1) per space."""

    def __init__(
        self,
        step,
        model,
        info: BackboneInfo,
        cfg: DistillConfig,
        source: LabelledImages,
        device,
        workers: int,
        chunk: int = 0,
        group=None,
        features: TrainingFeatures | None = None,
    ):
        self.step, self.model, self.info, self.amp, self.chunk = step, model, info, cfg.amp, chunk
        self.group = group if group is not None and group.enabled else None  # several ranks: sum the floor
        self.tau, self.weight = cfg.min_copy_ratio, cfg.copy_weight
        check_memory(cfg, len(source), model)
        parts, ids = [], []
        for canvases, pos in training_canvases(info, source, num_workers=workers):
            parts.append(pixel_vectors(canvases.float().div_(255)).astype(np.float16))
            ids.append(pos)
        pos = np.concatenate(ids) if ids else np.empty(0, np.int64)
        if len(pos) < 2:
            raise EdgeddError(
                "--min-copy-ratio needs at least two readable training images", "check the data or drop the option"
            )
        self.spaces = {"pixels": _Space("pixels", np.concatenate(parts), pos, len(source), cfg.seed, device)}
        if cfg.copy_floor_features:
            if features is None:
                features = training_features(model, info, source, device, num_workers=workers, amp=cfg.amp)
            feats = features.at(pos).astype(np.float16)
            self.spaces["features"] = _Space("features", feats, pos, len(source), cfg.seed, device)
        self.history: list[float] = []

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """phi_A of the centre crop, as copies.measure takes it (trainingset.centre_features), with a graph."""
        pp = self.info.preprocess
        with backbone_autocast(images.device, self.amp):
            return self.model(normalize(center_crop(images, pp.input_size), pp.mean, pp.std)).float()

    def ratios(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(1) of each image (N, 3, R, R) in each floored space, differentiable."""
        out = {"pixels": self.spaces["pixels"].ratios(pixel_tensor(images))}
        if "features" in self.spaces:
            out["features"] = self.spaces["features"].ratios(self._features(images))
        return out

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        """(2), summed over the floored spaces."""
        return sum(self.weight * torch.relu(self.tau - r).pow(2).sum() for r in self.ratios(images).values())

    def __call__(self, loop) -> torch.Tensor:
        loss = self.step(loop)
        images = loop.pyr.decode()
        n = len(images)
        rows = self.chunk if 0 < self.chunk < n else n
        floor = torch.zeros((), device=images.device)
        for s in range(0, n, rows):  # (2) is a sum over images: chunk by chunk, as the step's own forward
            part = self.loss(images[s : s + rows])
            part.backward(retain_graph=s + rows < n)  # the decode's graph serves every chunk
            floor += part.detach()
            del part  # its graph goes before the next chunk's is built
        floor = float(self.group.all_reduce_sum_(floor)) if self.group is not None else float(floor)
        self.history.append(floor)
        return loss.detach() + floor

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
