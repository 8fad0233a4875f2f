"""Numpy twin of ``edgedd.host.augment.render_views`` and of the real-image preprocessing.

A view is an axis-aligned box (x0, y0, x1, y1) in [0, 1] plus a flip. torch's
``affine_grid`` + bilinear ``grid_sample(align_corners=False, padding_mode="border")`` has no
rotation here, so it separates: output column j samples input column

    ix_j = ((x_in + 1) * W - 1) / 2,   x_in = s * ((2j + 1) / out - 1) + t,
    s = ±(x1 - x0) (minus when flipped),   t = x0 + x1 - 1,

clipped to [0, W - 1], and bilinear weights on floor(ix) and floor(ix) + 1. Each output is then
``Ry @ image @ Rx.T`` with two non-zeros per row of Ry, Rx.
"""

from __future__ import annotations

import numpy as np


def _axis_matrix(lo: float, hi: float, flip: bool, out: int, size: int) -> np.ndarray:
    s = (hi - lo) * (-1.0 if flip else 1.0)
    t = lo + hi - 1.0
    x_out = (2.0 * np.arange(out, dtype=np.float64) + 1.0) / out - 1.0
    ix = ((s * x_out + t + 1.0) * size - 1.0) / 2.0
    ix = np.clip(ix, 0.0, size - 1.0)
    i0 = np.floor(ix).astype(np.int64)
    w1 = ix - i0
    m = np.zeros((out, size), dtype=np.float64)
    rows = np.arange(out)
    m[rows, i0] += 1.0 - w1
    m[rows, np.minimum(i0 + 1, size - 1)] += w1
    return m


def render_views(images: np.ndarray, boxes: np.ndarray, flips: np.ndarray, out: int) -> np.ndarray:
    """images (N, 3, H, W) float in [0, 1]; boxes (N, 4); flips (N,) -> (N, 3, out, out) float32."""
    n, c, h, w = images.shape
    res = np.empty((n, c, out, out), dtype=np.float32)
    for i in range(n):
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        rx = _axis_matrix(x0, x1, bool(flips[i]), out, w)
        ry = _axis_matrix(y0, y1, False, out, h)
        res[i] = np.einsum("oh,chw,pw->cop", ry, images[i].astype(np.float64), rx, optimize=True)
    return res


def center_crop(images: np.ndarray, out: int) -> np.ndarray:
    h, w = images.shape[-2:]
    top, left = int(round((h - out) / 2.0)), int(round((w - out) / 2.0))
    return images[..., top : top + out, left : left + out]


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return ((images.astype(np.float32) - m) / s).astype(np.float32)


def resize_square(images: np.ndarray, out: int) -> np.ndarray:
    """Whole-image bilinear resample to out x out (the identity box, no flip)."""
    n = images.shape[0]
    boxes = np.tile(np.array([[0.0, 0.0, 1.0, 1.0]]), (n, 1))
    return render_views(images, boxes, np.zeros(n, dtype=bool), out)
