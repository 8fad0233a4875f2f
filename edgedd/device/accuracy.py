"""Top-1 on a labelled folder, and how a top-1 is judged: against chance, against the host's."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgedd.core.errors import EdgeddError
from edgedd.core.images import EMBEDDED_PREFIX, UNREADABLE_IMAGE, load_canvas, scan_image_folder
from edgedd.core.paths import require_dir

from .infer import BATCH
from .inputs import prepare_canvases

if TYPE_CHECKING:
    from .bundle import Bundle


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean()) if len(labels) else float("nan")


class LabelledFolder:
    """A local labelled ImageFolder, scanned and checked against the bundle's classes, read in
    batches (:meth:`batches`: decode, preprocess, yield, drop), so memory is bounded by the batch."""

    def __init__(self, b: Bundle, directory: str | Path):
        if str(directory).startswith(EMBEDDED_PREFIX):
            raise EdgeddError(
                f"--data {directory} is an embedded dataset, which a device cannot read (it ships with the host "
                "install)",
                f"on the host run: edgedd export-data {directory} DIR, copy DIR to this device and pass --data DIR",
            )
        src = scan_image_folder(
            require_dir(
                directory,
                "--data",
                "pass a local ImageFolder (one sub-folder per class, named after the "
                "bundle's classes); edgedd export-data on the host writes one from any dataset",
            ),
            min_classes=1,
        )
        unknown = [c for c in src.class_names if c not in b.class_names]
        if unknown:
            raise EdgeddError(
                f"--data class folder(s) {', '.join(unknown[:5])} are not classes of this bundle",
                f"use folders named after the bundle's classes ({', '.join(b.class_names[:10])}…)",
            )
        index = {c: i for i, c in enumerate(b.class_names)}
        self.bundle, self.directory, self.paths = b, directory, src.paths
        self.labels = np.asarray([index[src.class_names[label]] for label in src.labels], dtype=np.int64)
        self.skipped = 0  # unreadable images met so far (skipped and counted)

    def batches(self, batch: int = BATCH):
        """(edge inputs, labels) for up to ``batch`` readable images at a time; unreadable ones are counted in
        ``skipped``.
        """
        pp = self.bundle.edge_preprocess
        self.skipped = 0
        for s in range(0, len(self.paths), batch):
            xs, ys = [], []
            for path, label in zip(self.paths[s : s + batch], self.labels[s : s + batch], strict=True):
                try:
                    xs.append(load_canvas(path, pp["resize_size"], pp["interpolation"]).transpose(2, 0, 1))
                    ys.append(label)
                except UNREADABLE_IMAGE:  # incl. decompression bombs and MemoryError: skipped and counted
                    self.skipped += 1
            if xs:
                yield (
                    prepare_canvases(self.bundle, np.stack(xs).astype(np.float32) / 255.0),
                    np.asarray(ys, dtype=np.int64),
                )

    def no_images(self) -> EdgeddError:
        return EdgeddError(f"no readable images in {self.directory}", "pass a folder of images")


def load_labelled_folder(b: Bundle, directory: str | Path) -> tuple[np.ndarray, np.ndarray, int]:
    """A local ImageFolder, preprocessed for the edge backbone, all at once (memory grows with the
    folder: deploy-check streams it through :class:`LabelledFolder` instead)."""
    folder = LabelledFolder(b, directory)
    parts = list(folder.batches())
    if not parts:
        raise folder.no_images()
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]), folder.skipped


CHANCE_ALPHA = 0.00135  # one-sided tail probability of 3 sigma


def chance_bound(n: int, p: float, alpha: float = CHANCE_ALPHA) -> int | None:
    """The fewest correct answers out of ``n`` that a guesser right with probability ``p`` reaches
    with probability at most ``alpha`` (exact binomial tail, 3 sigma by default); None when even
    ``n`` of ``n`` is not that unlikely (too few images to tell a classifier from chance)."""
    if n <= 0 or p >= 1:
        return None
    if p <= 0:
        return 1

    def log_pmf(k: int) -> float:
        return (
            math.lgamma(n + 1)
            - math.lgamma(k + 1)
            - math.lgamma(n - k + 1)
            + k * math.log(p)
            + (n - k) * math.log1p(-p)
        )

    tail = 0.0
    for k in range(n, -1, -1):
        tail += math.exp(log_pmf(k))
        if tail > alpha:
            return k + 1 if k < n else None
    return 0  # pragma: no cover - the tail reaches 1 > alpha at k = 0


EXPECTED_MARGIN = 0.05  # deploy-check --margin: a drop below the host's expected top-1 never fails under this


def allowed_drop(
    device_top1: float, device_n: int, host_top1: float, host_n: int, margin: float = EXPECTED_MARGIN
) -> float:
    """How far the device's top-1 may fall below the host's expected top-1 before the ``expected``
    check fails: max(``margin``, 3 standard errors of the difference of the two proportions),

        se = sqrt(p1 (1 - p1) / n1 + p2 (1 - p2) / n2),

    each proportion Agresti-Caffo adjusted (p = (k + 1) / (n + 2), over n + 2), so that 3 of 3
    right on the host does not claim zero uncertainty and fail a device at 17 of 18."""

    def var(p: float, n: int) -> float:
        q = (p * n + 1) / (n + 2)
        return q * (1 - q) / (n + 2)

    return max(margin, 3 * math.sqrt(var(device_top1, device_n) + var(host_top1, host_n)))
