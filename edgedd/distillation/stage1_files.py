"""A Stage I entry on disk, the same in a run directory and in a cache entry: the statistics
(``rundir.STATS_FILE``), the golden classifier (``rundir.GOLDEN_FILE``) and ``rundir.STAGE1_JSON``,
which is written last, marks the entry complete and records the two tensor files' sha256, checked
(with their names, dtypes, shapes and finite values) before an entry is used."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as load_bytes

from edgedd.core import atomic
from edgedd.core.stio import torch_serialize as save
from edgedd.core.terminal import say

from .losses import flow
from .rundir import GOLDEN_FILE, STAGE1_JSON, STATS_FILE

STAGE1_FORMAT = (
    4  # 2: per-batch view generators (independent of the number of ranks); 3: named golden streams (edgedd.host.rng);
)
# 4: the converged golden classifier never trains on its held-out slice (the final fit too)


@dataclass
class Stage1:
    sums: torch.Tensor  # (C, D) float64
    counts: torch.Tensor  # (C,) int64
    weight: torch.Tensor  # (C, D) float32, golden classifier
    bias: torch.Tensor  # (C,) float32
    meta: dict = field(default_factory=dict)

    @property
    def centres(self) -> torch.Tensor:
        return self.sums / self.counts.unsqueeze(1).to(self.sums.dtype)


def save_stage1(s: Stage1, directory: Path) -> None:
    """Tensors to safetensors, metadata to JSON; the JSON is written last and marks completion.
    It records the sha256 of each tensor file ("sha256"), which :func:`load_stage1` verifies."""
    directory.mkdir(parents=True, exist_ok=True)
    centres = s.centres
    files = {
        STATS_FILE: save(
            {
                "sums": s.sums.contiguous(),
                "counts": s.counts.contiguous(),
                "centres": centres.contiguous(),
                "flow": flow(centres).contiguous(),
            },
            metadata={"format": str(STAGE1_FORMAT), "key": s.meta["key"]},
        ),
        GOLDEN_FILE: save(
            {"weight": s.weight.contiguous(), "bias": s.bias.contiguous()},
            metadata={"format": str(STAGE1_FORMAT), "key": s.meta["key"]},
        ),
    }
    for name, data in files.items():
        atomic.write_bytes(directory / name, data)
    atomic.write_json(
        directory / STAGE1_JSON,
        {**s.meta, "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}},
    )


class Stage1Damaged(Exception):
    """A Stage I entry that exists but cannot be trusted (see :func:`verify_stage1`)."""


def _read_regular(path: Path) -> bytes:
    """The bytes of a regular file (a FIFO or device would block or never end)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise Stage1Damaged(f"{path.name} is not a regular file")
        return path.read_bytes()
    except OSError as e:
        raise Stage1Damaged(f"{path.name}: {e.strerror or type(e).__name__}") from None


def verify_stage1(directory: Path, meta: dict, num_classes: int | None = None, dim: int | None = None) -> Stage1:
    """The Stage I tensors in ``directory`` described by ``meta`` (its stage1.json), each file read
    once, its sha256 checked against the one save_stage1 recorded, then parsed from those bytes and
    checked: sums (C, D) float64, counts (C,) int64 > 0, weight (C, D) float32, bias (C,) float32,
    every value finite (the centres also in float32, as Stage II uses them). Raises Stage1Damaged."""
    hashes = meta.get("sha256")
    if not isinstance(hashes, dict):
        raise Stage1Damaged("no checksums (written by an older edgedd)")
    if not isinstance(meta.get("skipped_images", []), list) or not isinstance(meta.get("golden", {}), dict):
        raise Stage1Damaged(f"{STAGE1_JSON} is malformed")
    tensors = {}
    for name in (STATS_FILE, GOLDEN_FILE):
        data = _read_regular(directory / name)
        if hashlib.sha256(data).hexdigest() != hashes.get(name):
            raise Stage1Damaged(f"{name} does not match its checksum")
        try:
            tensors[name] = load_bytes(data)
        except Exception as e:  # safetensors raises its own error types for malformed files
            raise Stage1Damaged(f"{name} is malformed ({type(e).__name__})") from None
    stats, golden = tensors[STATS_FILE], tensors[GOLDEN_FILE]
    sums, counts, weight, bias = stats.get("sums"), stats.get("counts"), golden.get("weight"), golden.get("bias")
    if sums is None or sums.dtype != torch.float64 or sums.dim() != 2:
        raise Stage1Damaged("sums are not a (C, D) float64 tensor")
    c, d = num_classes or sums.shape[0], dim or sums.shape[1]
    want = {
        "sums": (sums, torch.float64, (c, d)),
        "counts": (counts, torch.int64, (c,)),
        "centres": (stats.get("centres"), torch.float64, (c, d)),
        "flow": (stats.get("flow"), torch.float64, (c, d)),
        "weight": (weight, torch.float32, (c, d)),
        "bias": (bias, torch.float32, (c,)),
    }
    for name, (t, dtype, shape) in want.items():
        if t is None or (dtype is not None and t.dtype != dtype) or (shape is not None and tuple(t.shape) != shape):
            raise Stage1Damaged(f"{name} is missing or not {str(dtype).removeprefix('torch.')} {shape}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise Stage1Damaged(f"{name} holds non-finite values")
    if not (counts > 0).all():
        raise Stage1Damaged("a class count is not positive")
    s1 = Stage1(sums, counts, weight, bias, meta)
    if not torch.isfinite(s1.centres.float()).all():
        raise Stage1Damaged("the class centres overflow float32")
    return s1


def load_stage1(
    directory: Path,
    key: str | None = None,
    num_classes: int | None = None,
    dim: int | None = None,
    remove_damaged: bool = False,
) -> Stage1 | None:
    """The stage-I result in ``directory``, or None if absent, incomplete or for another key.

    An entry that is there but fails :func:`verify_stage1` (bytes changed since it was written,
    truncated or malformed files, wrong shapes, non-finite values) is also None, after one warning
    line on stderr: the caller recomputes it and overwrites the entry. ``remove_damaged`` (for a
    cache entry, a directory edgedd owns whole) deletes it first, so that nothing in it, a
    directory where a file belongs say, can stop the rewrite."""
    try:
        meta = json.loads((directory / STAGE1_JSON).read_text())
    except FileNotFoundError:
        return None  # absent or never completed (stage1.json is written last)
    except (OSError, ValueError, RecursionError) as e:  # ValueError: not JSON, not UTF-8
        return _damaged(directory, f"{STAGE1_JSON} is unreadable ({type(e).__name__})", remove_damaged)
    if not isinstance(meta, dict):
        return _damaged(directory, f"{STAGE1_JSON} is not a JSON object", remove_damaged)
    if meta.get("format") != STAGE1_FORMAT or (key is not None and meta.get("key") != key):
        return None
    try:
        return verify_stage1(directory, meta, num_classes, dim)
    except Stage1Damaged as e:
        return _damaged(directory, str(e), remove_damaged)


def _damaged(directory: Path, why: str, remove: bool) -> None:
    say(f"warning: the Stage I files in {directory} are damaged ({why}); recomputing them")  # the path may hold escapes
    if remove:
        shutil.rmtree(directory, ignore_errors=True)
    return None
