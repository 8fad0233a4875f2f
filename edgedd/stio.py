"""Deterministic safetensors writer (numpy in, bytes out; no torch).

The safetensors library keeps ``__metadata__`` in a hash map, so the order of its keys, and with it
the file's bytes, can change from one process to the next. edgedd promises byte-identical outputs
for identical inputs, so it writes the (simple) format itself:

    8 bytes   little-endian u64 N = header length
    N bytes   JSON: {"__metadata__": {sorted str: str}, name: {"dtype", "shape", "data_offsets"}, ...}
              names sorted, no spaces, padded with spaces to a multiple of 8
    data      each tensor's C-order bytes, in name order, back to back

Files are read back with the safetensors library itself, which validates all of it.
"""

from __future__ import annotations

import json
import struct

import numpy as np

_DTYPES = {
    np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int16): "I16", np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL",
}


def serialize(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    blobs, offset = [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        if a.dtype not in _DTYPES:
            raise TypeError(f"{name}: dtype {a.dtype} is not stored by edgedd")
        raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def torch_serialize(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """Host helper: torch tensors (CPU, numpy-compatible dtypes) -> deterministic bytes."""
    return serialize({k: v.detach().cpu().contiguous().numpy() for k, v in tensors.items()}, metadata)
