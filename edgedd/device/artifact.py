"""The edgedd artifact: one safetensors file with everything a device needs (spec: docs/ARTIFACT.md).

Integrity: ``edgedd.sha256`` in the header covers *everything else* in the file: the canonical JSON
of the metadata (without that key) and, per tensor in name order, its name, dtype, shape and bytes.
Readers refuse an unknown major version and any mismatch, so a flipped bit anywhere is caught.
Writing is deterministic: the same tensors and metadata give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EdgeddError

FORMAT_MAJOR = 1
FORMAT_MINOR = 1  # 1.1: reference holds the real-image expectations (golden_heldout_top1, expected_edge_top1)
FORMAT = f"{FORMAT_MAJOR}.{FORMAT_MINOR}"
ARTIFACT_FILE = "edgedd.artifact.safetensors"
MAX_HEADER = 100 * 1024 * 1024


@dataclass
class Artifact:
    tensors: dict[str, np.ndarray]
    meta: dict
    file_sha256: str = ""  # of the very bytes verified, so what is bound to it (the fitted projector) needs no re-read

    def __getitem__(self, key: str) -> np.ndarray:
        return self.tensors[key]


def content_sha256(tensors: dict[str, np.ndarray], meta: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"\0{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def to_bytes(tensors: dict[str, np.ndarray], meta: dict) -> bytes:
    from ..stio import serialize

    meta = dict(meta, format=FORMAT)
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    header = {
        "edgedd.format": FORMAT,
        "edgedd.meta": json.dumps(meta, sort_keys=True, separators=(",", ":")),
        "edgedd.sha256": content_sha256(tensors, meta),
    }
    return serialize(tensors, header)


def _bad(path, what: str) -> EdgeddError:
    return EdgeddError(f"artifact {path} is damaged or not an edgedd artifact ({what})", "re-copy the bundle or re-run edgedd pack")


def from_bytes(data: bytes, path: str = "<bytes>") -> Artifact:
    from safetensors.numpy import load

    if len(data) < 8:
        raise _bad(path, "too short")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER or 8 + n > len(data):
        raise _bad(path, "header length out of range")
    try:
        header = json.loads(data[8 : 8 + n])
        md = header.get("__metadata__") or {}
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise _bad(path, "header is not JSON") from None
    if not isinstance(md, dict) or "edgedd.format" not in md:
        raise _bad(path, "no edgedd format tag")
    version = str(md["edgedd.format"])
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise _bad(path, f"format {version!r}") from None
    if major != FORMAT_MAJOR:
        raise EdgeddError(
            f"artifact {path} has format {version}, this edgedd reads {FORMAT_MAJOR}.x",
            "use the edgedd version that packed it, or re-pack with this one",
        )
    try:
        meta = json.loads(md["edgedd.meta"])
        tensors = load(data)
    except Exception:  # safetensors raises its own error types for malformed files
        raise _bad(path, "cannot parse tensors") from None
    if not isinstance(meta, dict) or meta.get("format") != version or md.get("edgedd.sha256") != content_sha256(tensors, meta):
        raise _bad(path, "sha256 mismatch")  # the tag is not hashed itself, so it must agree with the hashed meta
    return Artifact(tensors, meta, hashlib.sha256(data).hexdigest())


def read(path: str | Path) -> Artifact:
    path = Path(path)
    if not path.is_file():
        raise EdgeddError(f"artifact {path} does not exist", "pass a bundle directory made by edgedd pack")
    return from_bytes(path.read_bytes(), str(path))


def write(path: str | Path, tensors: dict[str, np.ndarray], meta: dict) -> str:
    from ..atomic import write_bytes

    data = to_bytes(tensors, meta)
    write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()
