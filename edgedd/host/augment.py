"""Differentiable augmentation: flip, random-resized-crop, additive noise.

All randomness comes from an explicit ``torch.Generator`` passed in by the caller, so a run's
augmentations are a function of its seed and step (that is what makes ``--resume`` bit-identical)
and view parameters can be saved and re-rendered elsewhere.

A view is described by :class:`Views`: a crop box ``(x0, y0, x1, y1)`` in [0, 1] image
coordinates and a horizontal flip flag. Rendering resamples the box to ``out`` x ``out`` pixels
with bilinear ``grid_sample`` (``align_corners=False``), so gradients reach every source pixel.

Two crop samplers (``AugmentConfig.crop_sampler``): ``torchvision`` (the default) keeps every box
inside the image, border padding; ``reference`` reproduces the reference code's boxes, which may
reach past the edge (zero padding there): see :func:`sample_views`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edgedd.core.config import AugmentConfig, device_view_augment

from .rng import block_rows, draw_seed


@dataclass
class Views:
    boxes: torch.Tensor  # (n, 4) float32: x0, y0, x1, y1 in [0, 1] (past it with zero padding)
    flips: torch.Tensor  # (n,) bool
    padding: str = "border"  # grid_sample's padding_mode: "zeros" for the reference sampler

    def to(self, device) -> Views:
        return Views(self.boxes.to(device), self.flips.to(device), self.padding)


def sample_views(n: int, cfg: AugmentConfig, gen: torch.Generator, device=None, tries: int = 10) -> Views:
    """Random-resized-crop boxes and flips for ``n`` square images, by ``cfg.crop_sampler``.

    ``torchvision`` (torchvision's rule, vectorised): for each image, ``tries`` candidates: area
    fraction ~ U(scale), log aspect ~ U(log ratio); the first candidate that fits inside the image
    wins, else the whole image. Position uniform. Mean area 0.478 at the reference scale/ratio.

    ``reference`` (the reference code's boxes): one candidate, never rejected: w = sqrt(a r),
    h = sqrt(a / r) may exceed 1 (up to sqrt(4/3) = 1.155); the offset is drawn the same way
    (x0 = (1 - w) u, so a box wider than the image overhangs both edges) and the part past the
    edge renders as zeros. Mean area = the mean of U(scale) = 0.540; ~14% of boxes reach past an
    edge at scale (0.08, 1), ratio 3/4-4/3.
    """
    device = device or gen.device
    lo, hi = cfg.crop_scale
    log_r = (math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
    if cfg.crop_sampler == "reference":
        u = torch.rand(n, 4, generator=gen, device=device)
        area = lo + (hi - lo) * u[:, 0]
        ratio = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * u[:, 1])
        w, h = torch.sqrt(area * ratio), torch.sqrt(area / ratio)
        x0, y0 = (1 - w) * u[:, 2], (1 - h) * u[:, 3]
        boxes = torch.stack([x0, y0, x0 + w, y0 + h], dim=1).float()
        flips = torch.rand(n, generator=gen, device=device) < cfg.flip_p
        return Views(boxes, flips, "zeros")
    if cfg.crop_sampler != "torchvision":
        raise ValueError(f"unknown crop sampler {cfg.crop_sampler!r}")
    u = torch.rand(n, tries, 4, generator=gen, device=device)
    area = lo + (hi - lo) * u[..., 0]
    ratio = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * u[..., 1])
    w = torch.sqrt(area * ratio)
    h = torch.sqrt(area / ratio)
    fits = (w <= 1) & (h <= 1)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1, device=device))
    pick = first.clamp(min=0)
    rows = torch.arange(n, device=device)
    w_sel = torch.where(first >= 0, w[rows, pick], torch.ones(n, device=device))
    h_sel = torch.where(first >= 0, h[rows, pick], torch.ones(n, device=device))
    x0 = (1 - w_sel) * u[rows, pick, 2]
    y0 = (1 - h_sel) * u[rows, pick, 3]
    boxes = torch.stack([x0, y0, x0 + w_sel, y0 + h_sel], dim=1).float()
    flips = torch.rand(n, generator=gen, device=device) < cfg.flip_p
    return Views(boxes, flips)


def eval_box(resize_size: int, input_size: int) -> tuple[float, float]:
    """(lo, hi) of the eval view as a box of the canvas: the canvas resized to ``resize_size``, then
    the exact centre ``input_size`` crop, whose first pixel is timm's rounding (:func:`center_crop`).
    On a canvas of ``resize_size`` pixels, :func:`render_views` of this box *is* that crop (box edges
    on pixel edges, scale 1, ``align_corners=False``); (1 - c) / 2 would fall half a pixel off
    whenever resize - input is odd (73 -> 64) and blend every pixel with its neighbour."""
    lo = crop_start(resize_size, input_size) / resize_size
    return lo, lo + input_size / resize_size


def device_views(n: int, k: int, box: tuple[float, float], crop_min: float, gen: torch.Generator) -> Views:
    """K views of each of ``n`` images, image-major, as the device fits its projector on them
    (edgedd.core.config.device_view_augment): view 0 the eval view, the square ``box`` = (lo, hi)
    of :func:`eval_box` (not flipped), views 1..K-1 flip + random-resized crops of area >= ``crop_min``."""
    return set_eval_view(sample_views(n * k, device_view_augment(crop_min), gen), n, k, box)


def set_eval_view(views: Views, n: int, k: int, box: tuple[float, float]) -> Views:
    """View 0 of each image of image-major ``views`` (n images, k views each) becomes the square
    ``box`` = (lo, hi), not flipped; in place, returned for chaining."""
    lo, hi = box
    views.boxes.view(n, k, 4)[:, 0] = torch.tensor([lo, lo, hi, hi], device=views.boxes.device)
    views.flips.view(n, k)[:, 0] = False
    return views


def render_views(images: torch.Tensor, views: Views, out: int) -> torch.Tensor:
    """Resample each image's box to ``out`` x ``out``, flipped where asked. Differentiable."""
    n = images.shape[0]
    b = views.boxes.to(images.device, images.dtype)
    # affine_grid maps output coords in [-1, 1] to input coords: x_in = sx * x_out + tx.
    sx = b[:, 2] - b[:, 0]
    sy = b[:, 3] - b[:, 1]
    tx = b[:, 0] + b[:, 2] - 1
    ty = b[:, 1] + b[:, 3] - 1
    sx = torch.where(views.flips.to(images.device), -sx, sx)
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0], theta[:, 0, 2] = sx, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta, [n, images.shape[1], out, out], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=views.padding, align_corners=False)


@dataclass
class AugmentParams:
    """Every random draw of one augmentation pass over n images, so the pass can be applied to
    slices of the batch (the chunked step) with exactly the draws of the whole-batch pass."""

    views: Views
    noise: torch.Tensor | None  # (n, 3, out, out): the additive term m * (mean + std * eps), or None

    def __getitem__(self, idx) -> AugmentParams:
        return AugmentParams(
            Views(self.views.boxes[idx], self.views.flips[idx], self.views.padding),
            None if self.noise is None else self.noise[idx],
        )


def sample_augment(
    n: int,
    cfg: AugmentConfig,
    out: int,
    gen: torch.Generator,
    noise: bool = True,
    dtype=torch.float32,
    canvas: int | None = None,
) -> AugmentParams:
    """Draw in the order views, (``cfg.centre_p`` > 0 only) eval-view mask, noise mask, noise values
    (the order ``augment`` has always used, so runs without eval views draw what they always drew).
    An eval view is the exact centre ``out`` crop of a ``canvas``-pixel image (:func:`eval_box`)."""
    views = sample_views(n, cfg, gen)
    if cfg.centre_p > 0:
        if canvas is None:
            raise ValueError("eval views (centre_p > 0) need the canvas size")
        centre = torch.rand(n, generator=gen, device=gen.device) < cfg.centre_p
        lo, hi = eval_box(canvas, out)
        box = torch.tensor([lo, lo, hi, hi], device=views.boxes.device, dtype=views.boxes.dtype)
        views.boxes[centre] = box
        views.flips[centre] = False
    term = None
    if noise and cfg.noise_p > 0:
        apply = (torch.rand(n, generator=gen, device=gen.device) < cfg.noise_p).to(dtype)
        eps = torch.randn((n, 3, out, out), generator=gen, device=gen.device, dtype=dtype)
        term = apply.view(n, 1, 1, 1) * (cfg.noise_mean + cfg.noise_std * eps)
    return AugmentParams(views, term)


def _cat_params(parts) -> AugmentParams:
    sliced = [p[lo:hi] for p, lo, hi in parts]
    views = Views(
        torch.cat([p.views.boxes for p in sliced]), torch.cat([p.views.flips for p in sliced]), sliced[0].views.padding
    )
    noise = None if sliced[0].noise is None else torch.cat([p.noise for p in sliced])
    return AugmentParams(views, noise)


@dataclass(frozen=True)
class StepDraws:
    """The augmentation draws of one step over ``total`` views, addressable by view index.

    One base seed comes from the run's generator; view block b is drawn from its own generator
    (:mod:`edgedd.host.rng`). The one-pass step, each chunk of the chunked step and each rank's shard
    therefore apply exactly the same flip, crop and noise to view j.
    """

    seed: int
    total: int
    cfg: AugmentConfig
    out: int
    device: torch.device
    dtype: torch.dtype = torch.float32
    canvas: int | None = None  # the images' side, for eval views (AugmentConfig.centre_p)

    @classmethod
    def draw(
        cls,
        gen: torch.Generator,
        total: int,
        cfg: AugmentConfig,
        out: int,
        dtype=torch.float32,
        canvas: int | None = None,
    ) -> StepDraws:
        return cls(draw_seed(gen), total, cfg, out, gen.device, dtype, canvas)

    def params(self, start: int, stop: int) -> AugmentParams:
        """Views [start, stop)."""
        return block_rows(
            self.seed,
            self.total,
            start,
            stop,
            self.device,
            lambda k, g: sample_augment(k, self.cfg, self.out, g, dtype=self.dtype, canvas=self.canvas),
            _cat_params,
        )

    def params_of(self, index: torch.Tensor) -> AugmentParams:
        """Views at sorted, contiguous-run indices (e.g. a rank's rows in every pass)."""
        idx = index.tolist()
        runs, s = [], 0
        for i in range(1, len(idx) + 1):
            if i == len(idx) or idx[i] != idx[i - 1] + 1:
                runs.append(self.params(idx[s], idx[i - 1] + 1))
                s = i
        return _cat_params([(p, 0, len(p.views.flips)) for p in runs])


def apply_augment(images: torch.Tensor, params: AugmentParams, out: int) -> torch.Tensor:
    x = render_views(images, params.views, out)
    return x if params.noise is None else x + params.noise.to(x.device, x.dtype)


def augment(
    images: torch.Tensor, cfg: AugmentConfig, out: int, gen: torch.Generator, noise: bool = True
) -> torch.Tensor:
    """One random view per image: flip + RRC (+ noise). Used by distillation and probe training."""
    params = sample_augment(images.shape[0], cfg, out, gen, noise, images.dtype, canvas=images.shape[-1])
    return apply_augment(images, params, out)


def eval_view(canvases: torch.Tensor, resize_size: int, input_size: int) -> torch.Tensor:
    """The eval input of square canvases, the way the device makes it from a canvas
    (edgedd.device.inputs.prepare_canvases, before normalising): the whole canvas resampled to
    ``resize_size`` (bilinear, :func:`render_views` with the identity box) unless it already has that
    side, then the exact centre ``input_size`` crop. The host's one canvas -> eval input path (pack's
    edge path, evaluate's view of another backbone B)."""
    if canvases.shape[-1] != resize_size:
        n = canvases.shape[0]
        full = Views(torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(n, 1), torch.zeros(n, dtype=torch.bool))
        canvases = render_views(canvases, full, resize_size)
    return center_crop(canvases, input_size)


def center_crop(images: torch.Tensor, out: int) -> torch.Tensor:
    """Exact pixel centre crop (timm's CenterCrop rounding), no resampling."""
    h, w = images.shape[-2:]
    top, left = crop_start(h, out), crop_start(w, out)
    return images[..., top : top + out, left : left + out]


def crop_start(size: int, out: int) -> int:
    """First pixel of the centred ``out`` crop of ``size`` pixels, timm's rounding."""
    return int(round((size - out) / 2.0))


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s
