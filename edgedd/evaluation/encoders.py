"""Features for evaluation (METHOD.md, "Evaluation protocol"): the frozen encoders, the view samplers
the heads train on, and the passes over real images.

* :class:`Encoder`, :func:`load_encoders`: phi_A exactly as distilled (weights hash checked) and
  phi_B, the evaluation backbone (one object when B is A).
* :class:`FreshViews`, :class:`CachedViews`, :func:`make_sampler`: flip + random-resized-crop views
  (no noise) rendered from the same box at each encoder's input size; fresh every batch, or V per
  image rendered once per seed. Both are :class:`edgedd.host.heads.Sampler`.
* :func:`test_features`, :func:`train_pass`, :func:`load_canvases`: the test set's phi_B (centre
  crop), one pass over the real training set for the baselines, and real images as canvases.

All randomness comes from :func:`edgedd.host.rng.torch_generator`, explicit CPU generators named by a
purpose and a seed index.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from edgedd.backbones.forward import encode
from edgedd.backbones.loader import BackboneInfo, load_backbone
from edgedd.core.config import AugmentConfig, EvalConfig, Preprocess
from edgedd.core.errors import EdgeddError
from edgedd.core.images import LabelledImages
from edgedd.core.progress import Progress
from edgedd.distillation.rundir import Run
from edgedd.host.augment import Views, center_crop, eval_view, render_views, sample_views
from edgedd.host.data import CanvasDataset, canvas_loader, collate_canvases
from edgedd.host.heads import Sampler
from edgedd.host.rng import torch_generator

# ----------------------------------------------------------------------------- backbones


@dataclass(eq=False)
class Encoder:
    """A frozen backbone with its preprocessing: pixels in [0, 1] at ``input_size`` -> features."""

    model: torch.nn.Module
    info: BackboneInfo
    batch: int = 256

    @property
    def pp(self) -> Preprocess:
        return self.info.preprocess

    @property
    def input_size(self) -> int:
        return self.pp.input_size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return encode(self.model, x, self.pp, self.batch)

    def centre_view(self, canvases: torch.Tensor) -> torch.Tensor:
        """The eval view of square canvases made at another backbone's size: as the device makes it
        (augment.eval_view: resize the canvas to ``resize_size``, centre crop ``input_size``)."""
        return eval_view(canvases, self.pp.resize_size, self.input_size)


def load_encoders(
    run: Run, eval_backbone, eval_weights, eval_crop_res, device, batch: int, need_a: bool
) -> tuple[Encoder | None, Encoder]:
    """A exactly as distilled (weights hash checked) and B; B *is* A (one object) when unchanged."""
    a_meta, a_pp = run.backbone, run.preprocess
    name_b = eval_backbone or a_meta["name"]
    same = (
        name_b == a_meta["name"]
        and eval_weights in (None, a_meta["weights"])
        and eval_crop_res in (None, a_pp.input_size)
    )
    seed = int(run.config.get("seed", 0))  # random weights are reproducible from the run's seed
    enc_a = Encoder(*run.load_backbone(device), batch) if same or need_a else None
    if same:
        return enc_a, enc_a
    weights_b = eval_weights or (a_meta["weights"] if name_b == a_meta["name"] else "hub")
    model, info = load_backbone(name_b, weights_b, input_size=eval_crop_res, device=device, seed=seed)
    return enc_a, Encoder(model, info, batch)


# ----------------------------------------------------------------------------- feature samplers


class FreshViews:
    """The exact protocol: every batch a new flip + RRC box per image, rendered at each encoder's
    input size from the same box, through the backbone. Encoders that are one object run once."""

    def __init__(self, canvases: torch.Tensor, encoders: list[Encoder], aug: AugmentConfig = AugmentConfig()):
        self.canvases, self.encoders, self.aug = canvases, encoders, aug
        self.n = canvases.shape[0]

    def epoch(self, gen: torch.Generator) -> torch.Tensor:
        return torch.randperm(self.n, generator=gen)

    def batch(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        views = sample_views(len(idx), self.aug, gen)
        x = self.canvases[idx.to(self.canvases.device)]
        done: dict[int, torch.Tensor] = {}
        for enc in self.encoders:
            if id(enc) not in done:
                done[id(enc)] = enc(render_views(x, views, enc.input_size))
        return tuple(done[id(enc)] for enc in self.encoders)


class CachedViews:
    """Features of V fixed views per image, (n, V, D) per encoder; each epoch one view per image."""

    def __init__(self, feats: tuple[torch.Tensor, ...]):
        self.feats = feats
        self.n, self.v = feats[0].shape[:2]
        self.pick = torch.zeros(self.n, dtype=torch.long)

    @classmethod
    def render(
        cls,
        canvases: torch.Tensor,
        encoders: list[Encoder],
        v: int,
        gen: torch.Generator,
        aug: AugmentConfig = AugmentConfig(),
        chunk: int = 64,
    ) -> CachedViews:
        n = canvases.shape[0]
        views = sample_views(n * v, aug, gen)  # image i owns views i*V .. i*V + V - 1
        uniq = list({id(e): e for e in encoders}.values())
        parts: dict[int, list[torch.Tensor]] = {id(e): [] for e in uniq}
        for s in range(0, n, chunk):
            x = canvases[s : s + chunk].repeat_interleave(v, dim=0)
            vs = Views(views.boxes[s * v : (s + chunk) * v], views.flips[s * v : (s + chunk) * v])
            for e in uniq:
                parts[id(e)].append(e(render_views(x, vs, e.input_size)))
        full = {k: torch.cat(p).view(n, v, -1) for k, p in parts.items()}
        return cls(tuple(full[id(e)] for e in encoders))

    def epoch(self, gen: torch.Generator) -> torch.Tensor:
        self.pick = torch.randint(self.v, (self.n,), generator=gen)  # one view per image, then the order
        return torch.randperm(self.n, generator=gen)

    def batch(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        return tuple(f[idx.to(f.device), self.pick[idx].to(f.device)] for f in self.feats)


def make_sampler(canvases: torch.Tensor, encoders: list[Encoder], cfg: EvalConfig, seed: int) -> Sampler:
    if cfg.views() > 0:
        return CachedViews.render(canvases, encoders, cfg.views(), torch_generator("view-cache", seed))
    return FreshViews(canvases, encoders)


def sampler_dim(sampler: Sampler, k: int) -> int:
    if isinstance(sampler, CachedViews):
        return int(sampler.feats[k].shape[-1])
    return int(sampler.encoders[k].info.num_features)


# ----------------------------------------------------------------------------- real images


class _IndexedCanvases(CanvasDataset):
    """Canvases with their dataset index, so a skipped (unreadable) image shifts nothing."""

    def __getitem__(self, i: int):
        return (*super().__getitem__(i), i)


def _collate_indexed(batch):
    images, labels, errors = collate_canvases([b[:3] for b in batch])
    return images, labels, errors, torch.tensor([b[3] for b in batch if b[0] is not None], dtype=torch.long)


def subset(source: LabelledImages, idx: np.ndarray) -> LabelledImages:
    """The images ``idx`` of ``source`` as a LabelledImages of their own (same classes)."""
    return LabelledImages(
        name=source.name,
        class_names=source.class_names,
        labels=source.labels[idx],
        paths=[source.paths[i] for i in idx] if source.paths is not None else None,
        pixels=source.pixels[idx] if source.pixels is not None else None,
    )


def load_canvases(
    source: LabelledImages, idx: np.ndarray, size: int, interpolation: str, cfg: EvalConfig, device
) -> torch.Tensor:
    """The chosen real images as (n, 3, size, size) canvases in [0, 1], in ``idx`` order."""
    loader = canvas_loader(
        subset(source, np.asarray(idx, dtype=np.int64)), size, interpolation, cfg.eval_batch, cfg.num_workers
    )
    parts = []
    for images, _, errors in loader:
        if errors:  # they were readable in the feature pass
            raise EdgeddError(f"cannot read image {errors[0]}", "keep the training data unchanged while evaluating")
        parts.append(images.to(device).float().div_(255))
    return torch.cat(parts)


@torch.no_grad()
def test_features(
    enc: Encoder, source: LabelledImages, label_map: np.ndarray, cfg: EvalConfig, device, what: str = "test"
) -> tuple[torch.Tensor, torch.Tensor]:
    """phi_B of every readable image of ``source`` (the test data, or ``what`` else): shorter side to
    resize_size, centre crop input_size."""
    feats, labels, skipped = [], [], []
    loader = canvas_loader(source, enc.pp.resize_size, enc.pp.interpolation, cfg.eval_batch, cfg.num_workers)
    for images, y, errors in loader:
        skipped.extend(errors)
        if images.shape[0]:
            feats.append(enc(center_crop(images.to(device).float().div_(255), enc.input_size)))
            labels.append(torch.from_numpy(label_map[y.numpy()]))
    if skipped:
        warnings.warn(f"{len(skipped)} unreadable {what} image(s) skipped, e.g. {skipped[0]}", stacklevel=2)
    if not feats:
        raise EdgeddError(f"no readable images in the {what} data {source.name}", "pass a folder of images")
    return torch.cat(feats), torch.cat(labels)


@dataclass
class TrainPass:
    """One streaming pass over the real training set (readable images only)."""

    index: np.ndarray  # (n,) dataset indices of the readable images
    labels: torch.Tensor  # (n,) run labels
    feats_a: torch.Tensor  # (n, D_A) phi_A of the centre crop (centroids, neighbors)
    feats_b: torch.Tensor  # (n, 1 + K, D_B) phi_B of the centre view and K views: Stage I's layout (full)


@torch.no_grad()
def train_pass(
    enc_a: Encoder,
    enc_b: Encoder,
    source: LabelledImages,
    label_map: np.ndarray,
    canvas: int,
    interpolation: str,
    cfg: EvalConfig,
    views: int,
    device,
    progress: bool,
) -> TrainPass:
    from torch.utils.data import DataLoader

    loader = DataLoader(
        _IndexedCanvases(source, canvas, interpolation),
        batch_size=cfg.eval_batch,
        shuffle=False,
        num_workers=cfg.num_workers,
        collate_fn=_collate_indexed,
    )
    gen = torch_generator("full-views")
    aug = AugmentConfig()
    idx_all, fa, fb, skipped = [], [], [], []
    with Progress(len(source), "evaluate: training-set features", enabled=None if progress else False) as bar:
        for images, _, errors, idx in loader:
            skipped.extend(errors)
            if images.shape[0]:
                x = images.to(device).float().div_(255)
                za = enc_a(center_crop(x, enc_a.input_size))
                # the centre view, then K views rendered one view at a time to bound memory
                zb = [za if enc_b is enc_a else enc_b(enc_b.centre_view(x))]
                zb += [
                    enc_b(render_views(x, sample_views(x.shape[0], aug, gen), enc_b.input_size)) for _ in range(views)
                ]
                zb = torch.stack(zb, dim=1)
                idx_all.append(idx.numpy())
                fa.append(za.cpu())
                fb.append(zb.cpu())
            bar.update(images.shape[0] + len(errors))
    if skipped:
        warnings.warn(f"{len(skipped)} unreadable training image(s) skipped, e.g. {skipped[0]}", stacklevel=2)
    if not idx_all:
        raise EdgeddError(
            f"no readable images in the training data {source.name}", "pass the data the run was distilled on"
        )
    index = np.concatenate(idx_all)
    return TrainPass(index, torch.from_numpy(label_map[source.labels[index]]), torch.cat(fa), torch.cat(fb))
