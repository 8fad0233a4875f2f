"""Helpers for the crafted run-directory and Stage I cache cases: a tiny distill through the CLI,
rewriting a safetensors file (optionally with a re-recorded checksum, so only the check under test
can stop it), and the audit of what a command touched."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from safetensors.torch import load_file
from typer.testing import CliRunner

from edgedd.cli.host import app
from edgedd.core.paths import cache_root
from edgedd.core.stio import torch_serialize

ITERATIONS = 4


def distill_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "distill",
        str(data),
        "--backbone",
        "test_vit",
        "--weights",
        "random",
        "--out",
        str(out),
        "--crop-res",
        "32",
        "--syn-res",
        "32",
        "--num-workers",
        "0",
        "--golden-views",
        "2",
        "--preview-every",
        "0",
        "--iterations",
        str(ITERATIONS),
        "--ipc",
        "1",
        "-q",
        *extra,
    ]


def distill(data: Path, out: Path, *extra: str):
    return CliRunner().invoke(app, distill_args(data, out, *extra))


def cache_entry() -> Path:
    """The one Stage I cache entry of this test (each test has its own EDGEDD_CACHE_DIR)."""
    (entry,) = (cache_root() / "stage1").iterdir()
    return entry


def rewrite(path: Path, edit, rehash: bool = False) -> None:
    """Apply ``edit(tensors)`` to a safetensors file (keeping its metadata); with ``rehash`` also
    record the new bytes' sha256 in the stage1.json beside it, as if save_stage1 had written them."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    edit(tensors)
    data = torch_serialize(tensors, meta)
    path.write_bytes(data)
    if rehash:
        rehash_file(path, data)


def rehash_file(path: Path, data: bytes | None = None) -> None:
    s1 = path.parent / "stage1.json"
    meta = json.loads(s1.read_text())
    meta["sha256"][path.name] = hashlib.sha256(path.read_bytes() if data is None else data).hexdigest()
    s1.write_text(json.dumps(meta))


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def outside(seen: list[str], base: Path, *allowed: Path) -> list[str]:
    """The paths under ``base`` (the session's temporary root) opened or listed outside ``allowed``."""
    base_s = os.fspath(base)
    ok = [os.fspath(a) for a in allowed]
    return [p for p in seen if p.startswith(base_s) and not any(p == a or p.startswith(a + os.sep) for a in ok)]
