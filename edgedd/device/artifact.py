"""The edgedd artifact: one safetensors file with everything a device needs (spec: docs/ARTIFACT.md).

Integrity covers every byte of the file. The header must be exactly what the (deterministic)
writer makes of its content, with exactly the three ``__metadata__`` keys below, and the tensors
must fill the rest of the file exactly (``edgedd.core.stio.read_header``): so the header is a function
of the metadata and the tensors' names, dtypes and shapes. ``edgedd.sha256`` covers those and the
tensor bytes: the canonical JSON of the metadata and, per tensor in name order, its name, dtype,
shape and bytes. Readers refuse an unknown major version and any mismatch, so a changed byte
anywhere is caught. After the hash, the metadata and tensors are validated against the bundle
schema (``edgedd.device.schema``), so what passes is both unaltered and well formed.

Reading is bounded: the header (at most ``MAX_HEADER`` bytes) and the file size are checked
before any tensor data is read, so memory is the tensors' size, and a file with anything after
its last tensor is refused unread. The data is read once into one buffer that is hashed and then
used (views, no second copy); never memory-mapped, so a file changed after the check cannot
change what was checked, nor crash the reader by shrinking.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from edgedd.core.errors import EdgeddError
from edgedd.core.stio import Malformed, read_header, strict_json

FORMAT_MAJOR = 1
FORMAT_MINOR = 6  # 1.1: reference holds the real-image expectations (golden_heldout_top1, expected_edge_top1);
# 1.2: reference.projector_prior (edgedd.device.ridge eq. 4); 1.3: with --int8, reference.int8_expected_edge_top1
# (the int8 backbone on the same held-out images; pack's int8 gate is judged there); 1.4: the fixed-shape
# backbones (onnx.backbone_static, onnx.backbone_int8_static, with their batch and mobile readiness) and
# the optional "ort" (ORT format) and "litert" (.tflite) graph sections
# 1.5: copy_ratio (the synthetic images' distance to the training data, edgedd.core.copyratio), optional
# 1.6: reference.device_ridge, the projector strength pack chose on held-out real images through B
# (edgedd.device.ridge.select_ridge_on_images), which the device's fit uses; optional (null: cross-validation)
FORMAT = f"{FORMAT_MAJOR}.{FORMAT_MINOR}"
ARTIFACT_FILE = "edgedd.artifact.safetensors"
# Bounds the header's JSON and with it the parser's memory (a few hundred MB for the most
# wasteful JSON of this size); real headers are a few KB plus the class names (ImageNet-21k's ~1 MB).
MAX_HEADER = 8 * 1024 * 1024
HEADER_KEYS = ("edgedd.format", "edgedd.meta", "edgedd.sha256")  # the whole __metadata__, nothing else
_CHUNK = 1 << 24


@dataclass
class Artifact:
    tensors: dict[str, np.ndarray]
    meta: dict
    file_sha256: str = ""  # of the very bytes verified, so what is bound to it (the fitted projector) needs no re-read

    def __getitem__(self, key: str) -> np.ndarray:
        return self.tensors[key]


def canonical_json(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_sha256(tensors: dict[str, np.ndarray], meta: dict) -> str:
    h = hashlib.sha256()
    h.update(canonical_json(meta).encode())
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"\0{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.reshape(-1).view(np.uint8))  # the bytes in place, no copy
    return h.hexdigest()


def to_bytes(tensors: dict[str, np.ndarray], meta: dict) -> bytes:
    from edgedd.core.stio import serialize

    meta = dict(meta, format=FORMAT)
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    try:
        text = canonical_json(meta)
    except ValueError:  # a reader refuses NaN/Infinity (not JSON): refuse to write what cannot be read
        raise EdgeddError(
            "the artifact's metadata holds a NaN or infinite number",
            "re-run the step that produced it; a bundle carries finite figures only",
        ) from None
    data = serialize(
        tensors, {"edgedd.format": FORMAT, "edgedd.meta": text, "edgedd.sha256": content_sha256(tensors, meta)}
    )
    if int.from_bytes(data[:8], "little") > MAX_HEADER:
        raise EdgeddError(
            f"the artifact's header would exceed {MAX_HEADER >> 20} MiB, more than readers accept",
            "use shorter class names or fewer classes",
        )
    return data


def _bad(path, what: str) -> EdgeddError:
    return EdgeddError(
        f"artifact {path} is damaged or not an edgedd artifact ({what})", "re-copy the bundle or re-run edgedd pack"
    )


def _check_tag(md: dict, path) -> str:
    """The format tag: an unknown major version gets its own message, before anything else is judged."""
    version = md.get("edgedd.format")
    if version is None:
        raise _bad(path, "no edgedd format tag")
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise _bad(path, f"format {version[:20]!r}") from None
    if major != FORMAT_MAJOR:
        raise EdgeddError(
            f"artifact {path} has format {version[:20]}, this edgedd reads {FORMAT_MAJOR}.x",
            "use the edgedd version that packed it, or re-pack with this one",
        )
    if sorted(md) != sorted(HEADER_KEYS):
        raise _bad(path, "header metadata keys other than " + ", ".join(HEADER_KEYS))
    return version


def _verified(f: BinaryIO, size: int, path) -> Artifact:
    """Header first (bounded, canonical, covering the file exactly), then the data, read once and hashed."""
    try:
        md, specs, head = read_header(f, size, MAX_HEADER)
        version = _check_tag(md, path)
        meta = strict_json(md["edgedd.meta"], "metadata")
    except Malformed as e:
        raise _bad(path, str(e)) from None
    try:  # 1e999 parses as inf, which canonical JSON cannot hold: not canonical, not a traceback
        canonical = isinstance(meta, dict) and md["edgedd.meta"] == canonical_json(meta)
    except ValueError:
        canonical = False
    if not canonical:
        raise _bad(path, "metadata is not in canonical form")
    if meta.get("format") != version:
        raise _bad(path, "sha256 mismatch")  # the tag is not hashed itself, so it must agree with the hashed meta
    whole = hashlib.sha256(head)
    try:
        data = np.empty(size - len(head), np.uint8)
    except MemoryError:
        raise EdgeddError(
            f"artifact {path} holds {size - len(head)} bytes of tensors, more than this device can allocate",
            "free memory, or pack a smaller bundle",
        ) from None
    view, got = memoryview(data), 0
    while got < len(data):
        n = f.readinto(view[got : got + _CHUNK])
        if not n:
            raise _bad(path, "shorter than its header says")  # it shrank while being read
        whole.update(view[got : got + n])
        got += n
    data.flags.writeable = False  # these are the hashed bytes: nobody changes them afterwards
    tensors = {name: _tensor(data, t) for name, t in specs.items()}
    if md["edgedd.sha256"] != content_sha256(tensors, meta):
        raise _bad(path, "sha256 mismatch")
    return Artifact(tensors, meta, whole.hexdigest())


def _tensor(data: np.ndarray, t) -> np.ndarray:
    a = data[t.start : t.end].view(t.dtype).reshape(t.shape)
    if not a.flags.aligned:  # an unaligned view would be slow or refused downstream
        a = a.copy()
        a.flags.writeable = False
    return a


def _validated(a: Artifact, path) -> Artifact:
    from .schema import problem

    why = problem(a.meta, a.tensors)
    if why:
        raise EdgeddError(
            f"artifact {path} verifies but does not hold a valid bundle ({why})",
            "the packer that made it was faulty or altered; re-run edgedd pack with a released edgedd",
        )
    return a


def load(path: str | Path) -> Artifact:
    """The artifact, integrity-verified as a file (format, canonical header, size, sha256), no schema."""
    path = Path(path)
    if not path.is_file():
        raise EdgeddError(f"artifact {path} does not exist", "pass a bundle directory made by edgedd pack")
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise _bad(path, "not a regular file")
            return _verified(f, st.st_size, path)
    except OSError as e:
        raise EdgeddError(
            f"cannot read artifact {path} ({os.strerror(e.errno) if e.errno else type(e).__name__})",
            "check the file's permissions, or re-copy the bundle",
        ) from None


def read(path: str | Path) -> Artifact:
    """The artifact, verified (:func:`load`) and then validated against the bundle schema."""
    return _validated(load(path), path)


def load_bytes(data: bytes, path: str = "<bytes>") -> Artifact:
    return _verified(io.BytesIO(data), len(data), path)


def from_bytes(data: bytes, path: str = "<bytes>") -> Artifact:
    return _validated(load_bytes(data, path), path)


def write(path: str | Path, tensors: dict[str, np.ndarray], meta: dict) -> str:
    from edgedd.core.atomic import write_bytes

    data = to_bytes(tensors, meta)
    write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()
