"""What ``edgedd predict`` and ``edgedd inspect`` answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgedd.core.paths import require_file

from . import artifact as art
from .bundle import Bundle
from .infer import top_indices


def predict_files(b: Bundle, images: list[str], topk: int = 5) -> list[dict]:
    """``edgedd predict``'s answer: per image file, the ``topk`` labels with index and probability."""
    return list(prediction_rows(b, images, b.probabilities([str(p) for p in images]), topk))


def prediction_rows(b: Bundle, images: list[str], prob: np.ndarray, topk: int = 5) -> Iterator[dict]:
    """:func:`predict_files`'s rows from probabilities already computed (and checked), one at a time:
    the CLI prints them as they come, so the answer's memory is ``prob``'s (n x classes), not n dicts."""
    for p, row in zip(images, prob, strict=True):
        yield {
            "image": str(p),
            "top": [
                {"label": b.class_names[i], "index": int(i), "prob": float(row[i])} for i in top_indices(row, topk)
            ],
        }


def predict(
    directory: str | Path, images: list[str], topk: int = 5, int8: bool = False, threads: int | None = None
) -> list[dict]:
    """Open (and verify) the bundle, then :func:`predict_files`."""
    return predict_files(Bundle.open(directory, int8=int8, threads=threads), images, topk)


def inspect(path: str | Path) -> dict:
    """What an artifact (or a bundle directory) holds."""
    path = Path(path)
    if path.is_dir():
        path = path / art.ARTIFACT_FILE
    a = art.read(require_file(path, "artifact", "pass a bundle directory made by edgedd pack"))
    return {
        "file": str(path),
        "format": a.meta.get("format"),
        "sha256": a.file_sha256,
        "classes": len(a.meta.get("class_names", [])),
        "class_names": a.meta.get("class_names"),
        "tensors": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in sorted(a.tensors.items())},
        "distill": a.meta.get("distill"),
        "edge": a.meta.get("edge"),
        "onnx": a.meta.get("onnx"),
        "reference": a.meta.get("reference"),
        "copy_ratio": a.meta.get("copy_ratio"),
    }
