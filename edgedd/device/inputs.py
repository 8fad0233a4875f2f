"""Images -> normalised edge inputs, preprocessed exactly as ``edgedd predict`` does."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from edgedd.core.errors import EdgeddError
from edgedd.core.images import UNREADABLE_IMAGE, load_canvas, resize_center_crop, to_rgb
from edgedd.core.paths import PERMISSION_FIX, NotRegularFile

from .render import center_crop, normalize, resize_square

if TYPE_CHECKING:
    from .bundle import Bundle


def is_image_list(images) -> bool:
    """A list/tuple of images, or an (N, H, W, 3) array; anything else is one image."""
    return isinstance(images, (list, tuple)) or (isinstance(images, np.ndarray) and images.ndim == 4)


def as_image_list(images) -> list:
    return list(images) if is_image_list(images) else [images]


def edge_canvas(image, size: int, interpolation: str) -> np.ndarray:
    """One image (file path, PIL image or (H, W, 3) uint8 array) -> (size, size, 3) uint8 canvas,
    decoded and resized exactly as ``edgedd predict`` does for files (:func:`edgedd.core.images.load_canvas`)."""
    if isinstance(image, (str, os.PathLike)):
        try:
            return load_canvas(str(image), size, interpolation)
        except FileNotFoundError:
            raise EdgeddError(f"image {image} does not exist", "pass existing image files") from None
        except PermissionError:
            raise EdgeddError(f"cannot read image {image} (permission denied)", PERMISSION_FIX) from None
        except NotRegularFile as e:  # a directory, or a FIFO named x.png (refused before it could block)
            raise EdgeddError(f"image {image} is {e.kind}, not a file", "pass image files") from None
        except UNREADABLE_IMAGE as e:  # incl. decompression bombs and MemoryError
            raise EdgeddError(
                f"cannot read image {image} ({type(e).__name__})", "pass a JPEG, PNG, BMP or WebP file"
            ) from None
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8 or 0 in image.shape:
            raise EdgeddError(
                f"an image array of shape {image.shape} and dtype {image.dtype} is not an RGB image",
                "pass (H, W, 3) uint8 arrays (e.g. np.asarray(pil_image.convert('RGB')))",
            )
        image = Image.fromarray(np.ascontiguousarray(image), "RGB")
    if not isinstance(image, Image.Image):
        raise EdgeddError(
            f"cannot classify a {type(image).__name__}", "pass a file path, a PIL image or an (H, W, 3) uint8 array"
        )
    return np.asarray(resize_center_crop(to_rgb(image), size, interpolation), dtype=np.uint8)


def prepare_canvases(b: Bundle, canvases: np.ndarray) -> np.ndarray:
    """(n, 3, R, R) pixels in [0, 1] -> edge input: resize to resize_size, centre crop, normalise."""
    pp = b.edge_preprocess
    x = canvases if canvases.shape[-1] == pp["resize_size"] else resize_square(canvases, pp["resize_size"])
    return normalize(center_crop(x, pp["input_size"]), pp["mean"], pp["std"])
