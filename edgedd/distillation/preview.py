"""PNG grids of synthetic images: one row per class, one column per image of that class
(at one image per class, a near-square grid in class order)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from edgedd.core import atomic


def grid(images: np.ndarray, num_classes: int, min_tile: int = 64, pad: int = 2) -> Image.Image:
    """``images``: (N, 3, H, W) floats in [0, 1], class-major. Small images are upscaled
    (nearest neighbour) to at least ``min_tile`` pixels so they can be seen."""
    n, _, h, w = images.shape
    per_class = n // num_classes
    rows, cols = num_classes, per_class
    if per_class == 1:  # one image per class: a near-square grid rather than a tall column
        cols = int(np.ceil(np.sqrt(n)))
        rows = -(-n // cols)
    scale = max(1, -(-min_tile // max(h, w)))
    th, tw = h * scale, w * scale
    canvas = np.full((rows * (th + pad) + pad, cols * (tw + pad) + pad, 3), 255, dtype=np.uint8)
    tiles = (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
    for i in range(n):
        r, c = divmod(i, cols)
        tile = tiles[i].repeat(scale, axis=0).repeat(scale, axis=1)
        y, x = pad + r * (th + pad), pad + c * (tw + pad)
        canvas[y : y + th, x : x + tw] = tile
    return Image.fromarray(canvas)


def write_grid(path, images: np.ndarray, num_classes: int) -> None:
    buf = io.BytesIO()
    grid(images, num_classes).save(buf, format="PNG", optimize=False)
    atomic.write_bytes(path, buf.getvalue())
