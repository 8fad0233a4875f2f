"""The files edgedd ships in ``edgedd/weights/``: the shipped backbones' weights and every model
card (the SimCLR models' and the packaged EfficientNet-Lites'). Standard library only, so that the
zoo's registry (:mod:`edgedd.backbones.zoo`) and the packaged models (:mod:`edgedd.backbones.lite`) both read the
cards from here without importing each other."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path

WEIGHTS_DIR = "weights"  # a data folder inside the edgedd package (package-data), not a subpackage


def resource(filename: str) -> Path:
    return Path(str(resources.files("edgedd").joinpath(WEIGHTS_DIR, filename)))


@cache
def _read(path: str, mtime_ns: int) -> str:
    return Path(path).read_text()


def read_card(stem: str) -> dict:
    """The model card ``edgedd/weights/<stem>.json`` (a fresh dict each call; re-read when the file
    changes). Raises FileNotFoundError if none is shipped."""
    p = resource(stem + ".json")
    return json.loads(_read(str(p), p.stat().st_mtime_ns))
