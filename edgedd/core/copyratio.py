"""The copy ratio: how close synthetic images lie to the real training images (docs/METHOD.md).

For a synthetic image s and a space S (pixels, or phi_A's centre-crop features):

    d_S(s)      = min over real training images x of ||S(s) - S(x)||
    m_S         = median over reference real images r of  min over real x != r of ||S(r) - S(x)||
    ratio_S(s)  = d_S(s) / m_S

A ratio near 0 is a near-copy of one training image; near 1 the image is as far from the training
set as a typical real image is from its nearest other real image. The references are a fixed,
seeded sample of at most ``REFERENCES`` training images. Pixel space is every image resized to one
small RGB canvas (``CANVAS`` x ``CANVAS``, values in [0, 1]) with the RMS distance
||a - b|| / sqrt(3 CANVAS^2); feature space uses the Euclidean distance.

Everything here is numpy: :class:`Nearest` keeps the running minima of fixed query vectors over a
stream of real vectors (memory: the queries and one batch), :func:`summarise` turns the distances
into the figures that ``summary.json``, ``evaluate``, ``report`` and the artifact state. The torch
side (canvases, phi_A) is :mod:`edgedd.distillation.copies`.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

CANVAS = 32  # pixel space: both sides resized to this square canvas
REFERENCES = 1000  # reference real images for the median real-to-nearest-other distance
NEAR_COPY = 0.5  # a ratio under this is counted as a near-copy
SPACES = ("pixels", "features")


def sample_references(n: int, seed: int, k: int = REFERENCES) -> np.ndarray:
    """Sorted dataset positions of min(k, n) reference images, drawn without replacement."""
    # the stream's seed as edgedd.host.rng.seed_for makes it (that module imports torch; this one must not)
    seed = int.from_bytes(hashlib.sha256(repr(("copy-ratio-references", seed)).encode()).digest()[:8], "little") >> 1
    return np.sort(np.random.default_rng(seed).permutation(n)[: min(k, n)])


class Nearest:
    """Running ``min_x ||q - x||^2`` of fixed queries over the batches of a stream.

    ``ids`` (optional) gives each query's own position in the stream (a real reference image): the
    pair of a query with itself is skipped, so its minimum is its nearest *other* image.
    """

    def __init__(self, queries: np.ndarray, ids: np.ndarray | None = None):
        self.q = np.ascontiguousarray(queries, dtype=np.float32).reshape(len(queries), -1)
        self.qq = np.einsum("ij,ij->i", self.q, self.q, dtype=np.float64)
        self.ids = None if ids is None else np.asarray(ids, dtype=np.int64)
        self.best = np.full(len(self.q), np.inf)
        # stream position of each minimum (the batch's ``ids``; the row in its batch when none are given)
        self.arg = np.full(len(self.q), -1, dtype=np.int64)

    def update(self, x: np.ndarray, ids: np.ndarray | None = None) -> None:
        """Fold in a batch of real vectors ``x`` (B, ...) at stream positions ``ids`` (B,)."""
        if len(x) == 0 or len(self.q) == 0:
            return
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1)
        # ||q - x||^2 = ||q||^2 + ||x||^2 - 2 q.x ; clipped at 0 (rounding can make it slightly negative)
        d2 = (
            self.qq[:, None]
            + np.einsum("ij,ij->i", x, x, dtype=np.float64)[None, :]
            - 2.0 * (self.q @ x.T).astype(np.float64)
        )
        if self.ids is not None and ids is not None:
            d2[self.ids[:, None] == np.asarray(ids, dtype=np.int64)[None, :]] = np.inf
        j = d2.argmin(axis=1)  # a NaN row's first NaN, as min(axis=1) gives NaN
        d = np.maximum(d2[np.arange(len(j)), j], 0.0)
        better = ((d < self.best) | np.isnan(d)) & ~np.isnan(self.best)  # np.minimum's rule: a NaN stays
        self.best[better] = d[better]
        self.arg[better] = j[better] if ids is None else np.asarray(ids, dtype=np.int64)[j[better]]

    def distances(self) -> np.ndarray:
        return np.sqrt(self.best)


def ratios(synthetic: np.ndarray, references: np.ndarray) -> tuple[np.ndarray | None, float | None]:
    """Per-image ratios d(s) / m and the scale m (the references' median nearest-other distance);
    (None, m) when m is not a positive finite number (fewer than two real images, or all equal)."""
    finite = references[np.isfinite(references)]
    scale = float(np.median(finite)) if len(finite) else None
    if scale is None or not (scale > 0 and math.isfinite(scale)):
        return None, scale
    return np.asarray(synthetic, dtype=np.float64) / scale, scale


def summarise(synthetic: dict[str, np.ndarray], references: dict[str, np.ndarray], *, canvas: int = CANVAS) -> dict:
    """The copy-ratio figures of one synthetic set: per space the scale, min / median / max ratio
    and how many images lie under ``NEAR_COPY`` (docs/JSON.md, ``copy_ratio``)."""
    out: dict = {
        "definition": "nearest real training image / median real-to-nearest-other-real distance",
        "near_copy_below": NEAR_COPY,
        "canvas": canvas,
        "reference_images": 0,
        "spaces": {},
    }
    for space, d in synthetic.items():
        ref = references[space]
        out["reference_images"] = int(len(ref))
        r, scale = ratios(d, ref)
        entry = {"images": int(len(d)), "median_real_nearest": scale}
        if r is not None and len(r):
            below = int((r < NEAR_COPY).sum())
            entry.update(
                {
                    "min": float(r.min()),
                    "median": float(np.median(r)),
                    "max": float(r.max()),
                    "below": below,
                    "share_below": below / len(r),
                    "ratios": [round(float(v), 4) for v in r],
                }
            )
        else:
            entry.update({"min": None, "median": None, "max": None, "below": None, "share_below": None, "ratios": None})
        out["spaces"][space] = entry
    return out


def headline(cr, space: str = "pixels") -> str:
    """One line for people: "copy ratio median 0.31 (pixels), 100/100 images < 0.5: near-copies of
    training images" (or "not recorded")."""
    try:
        return _headline(cr, space)
    except (
        AttributeError,
        KeyError,
        TypeError,
        ValueError,
    ):  # inspect reads an artifact's metadata before any schema check
        return "copy ratio unreadable"


def _headline(cr: dict | None, space: str) -> str:
    spaces = (cr or {}).get("spaces") or {}
    e = spaces.get(space) or {}
    if e.get("median") is None:
        return (
            "copy ratio not recorded"
            if not e
            else f"copy ratio not defined ({space}: the training set has no two distinct images)"
        )
    n, below, cut = e["images"], e["below"], (cr or {}).get("near_copy_below", NEAR_COPY)
    verdict = (
        "near-copies of training images"
        if below == n
        else f"{below} near-copies of training images"
        if below
        else "no near-copies of training images"
    )
    line = f"copy ratio median {e['median']:.2f} ({space}), {below}/{n} images < {cut:g}: {verdict}"
    f = spaces.get("features") or {}
    if space == "pixels" and f.get("median") is not None:
        line += f"; phi_A median {f['median']:.2f}, {f['below']}/{f['images']} < {cut:g}"
    return line
