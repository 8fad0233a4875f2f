"""Deterministic safetensors writer (numpy in, bytes out; no torch).

The safetensors library keeps ``__metadata__`` in a hash map, so the order of its keys, and with it
the file's bytes, can change from one process to the next. edgedd promises byte-identical outputs
for identical inputs, so it writes the (simple) format itself:

    8 bytes   little-endian u64 N = header length
    N bytes   JSON: {"__metadata__": {sorted str: str}, name: {"dtype", "shape", "data_offsets"}, ...}
              names sorted, no spaces, padded with spaces to a multiple of 8
    data      each tensor's C-order bytes, in name order, back to back

:func:`read_header` reads back exactly what :func:`serialize` writes and nothing else: the header
must be the very bytes this writer would produce for its content (canonical), and its tensors must
lie back to back from the first data byte to the last byte of the file, so every byte of a file
it accepts is either canonical header or a tensor's data.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

_DTYPES = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}
_CODES = {code: dtype.newbyteorder("<") for dtype, code in _DTYPES.items()}  # what the file's bytes are


class Malformed(ValueError):
    """A file that is not exactly what :func:`serialize` writes; the message says what is wrong."""


@dataclass(frozen=True)
class TensorSpec:
    """One tensor's header entry: dtype, shape and byte range in the data section."""

    dtype: np.dtype
    shape: tuple[int, ...]
    start: int
    end: int


def header_bytes(metadata: dict[str, str] | None, specs: dict[str, TensorSpec]) -> bytes:
    """The header exactly as written: length prefix, canonical JSON, space padding to 8 bytes."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    for name in sorted(specs):
        t = specs[name]
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [t.start, t.end]}
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head


def serialize(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    specs, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        a = np.ascontiguousarray(a).reshape(a.shape)  # ascontiguousarray makes a 0-d array 1-d
        if a.dtype not in _DTYPES:
            raise TypeError(f"{name}: dtype {a.dtype} is not stored by edgedd")
        raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        specs[name] = TensorSpec(a.dtype, a.shape, offset, offset + len(raw))
        blobs.append(raw)
        offset += len(raw)
    return header_bytes(metadata, specs) + b"".join(blobs)


def _is_count(x) -> bool:
    return type(x) is int and x >= 0  # not bool, not float: the writer writes plain non-negative ints


def _spec(name: str, entry, offset: int) -> TensorSpec:
    """One header entry, checked: exactly dtype/shape/data_offsets, a known dtype, and a byte range
    that starts where the previous tensor ended and is exactly as long as the shape says."""
    if not isinstance(entry, dict) or sorted(entry) != ["data_offsets", "dtype", "shape"]:
        raise Malformed(f"tensor {name[:40]!r} has entry keys other than dtype, shape, data_offsets")
    dtype = _CODES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    shape, offsets = entry["shape"], entry["data_offsets"]
    if dtype is None:
        raise Malformed(f"tensor {name[:40]!r} has an unknown dtype")
    if not isinstance(shape, list) or not all(map(_is_count, shape)):
        raise Malformed(f"tensor {name[:40]!r} has a malformed shape")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_count, offsets)):
        raise Malformed(f"tensor {name[:40]!r} has malformed data offsets")
    if offsets[0] != offset or offsets[1] - offsets[0] != math.prod(shape) * dtype.itemsize:
        raise Malformed(f"tensor {name[:40]!r} is not where its shape and the tensors before it put it")
    return TensorSpec(dtype, tuple(shape), offsets[0], offsets[1])


def read_header(f: BinaryIO, size: int, max_header: int) -> tuple[dict[str, str], dict[str, TensorSpec], bytes]:
    """Read and check the header of a file of ``size`` bytes open at its start, reading no tensor data.

    Returns (metadata, tensor specs, the header's bytes incl. the length prefix). Raises Malformed unless the header is
    at most
    ``max_header`` bytes of plain JSON (no NaN, nesting within the parser's limit), its entries are
    well formed and contiguous, the tensors end exactly at the end of the file (nothing hidden
    after them) and the header bytes are exactly what :func:`header_bytes` makes of that content.
    """
    prefix = f.read(8)
    if len(prefix) < 8:
        raise Malformed("too short")
    (n,) = struct.unpack("<Q", prefix)
    if n > max_header or 8 + n > size:
        raise Malformed("header length out of range")
    raw = f.read(n)
    header = strict_json(raw, "header")
    if len(raw) != n or not isinstance(header, dict):
        raise Malformed("header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())
    ):
        raise Malformed("metadata is not a map of strings")
    specs, offset = {}, 0
    for name in sorted(header):
        specs[name] = _spec(name, header[name], offset)
        offset = specs[name].end
    if 8 + n + offset != size:
        raise Malformed(f"the tensors end at byte {8 + n + offset}, the file at byte {size}")
    if header_bytes(metadata, specs) != prefix + raw:
        raise Malformed("header is not in canonical form")
    return metadata or {}, specs, prefix + raw


def strict_json(text: str | bytes, what: str):
    """Parse JSON as the standard has it: no NaN/Infinity (json.loads' extension; the writer never
    writes them), and nesting deeper than the parser's recursion limit is refused, not a crash."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Malformed(f"{what} is not JSON") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def torch_serialize(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """Host helper: torch tensors (CPU, numpy-compatible dtypes) -> deterministic bytes."""
    return serialize({k: v.detach().cpu().contiguous().numpy() for k, v in tensors.items()}, metadata)
