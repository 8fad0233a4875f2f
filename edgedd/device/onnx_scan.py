"""Find external-data tensors in a serialised ONNX model, with the standard library only.

A TensorProto may say ``data_location = EXTERNAL`` and name a file (``external_data``) that
onnxruntime then reads. That file is outside the bytes whose sha256 the artifact records, so a
re-signed bundle could make a device read, and leak through its outputs, any file it can open.
Loading the model from bytes does not prevent it: onnxruntime (checked with 1.32) resolves a
relative location against the *current directory*. So edgedd refuses every graph that has an
external tensor, before onnxruntime sees it, whatever the onnxruntime version. edgedd's packer
never writes external data. The device must not need the ``onnx`` package, hence this walker of
the protobuf wire format over every place onnx.proto (IR 10) allows a TensorProto.
"""

from __future__ import annotations

# message -> {field number: message type of that (length-delimited) field}
_MODEL, _GRAPH, _NODE, _ATTR, _FUNC, _TRAIN, _SPARSE, _TENSOR = range(8)
_CHILDREN = {
    _MODEL: {7: _GRAPH, 20: _TRAIN, 25: _FUNC},
    _TRAIN: {1: _GRAPH, 2: _GRAPH},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTR},
    _FUNC: {7: _NODE, 11: _ATTR},
    _ATTR: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _TENSOR: {},
}
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 13, 14


class Malformed(ValueError):
    pass


def _varint(buf: memoryview, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise Malformed("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def uses_external_data(data: bytes) -> bool:
    """True if any tensor in the model declares external data. Raises Malformed on bad protobuf."""
    buf = memoryview(data)
    stack = [(_MODEL, 0, len(buf))]  # explicit stack: nesting depth comes from the (hostile) file
    while stack:
        kind, i, end = stack.pop()
        children = _CHILDREN[kind]
        while i < end:
            key, i = _varint(buf, i, end)
            field, wire = key >> 3, key & 7
            if wire == 0:
                value, i = _varint(buf, i, end)
                if kind == _TENSOR and field == _TENSOR_DATA_LOCATION and value != 0:
                    return True
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            elif wire == 2:
                n, i = _varint(buf, i, end)
                if i + n > end:
                    raise Malformed("field runs past its message")
                if kind == _TENSOR and field == _TENSOR_EXTERNAL_DATA:
                    return True
                if field in children:
                    stack.append((children[field], i, i + n))
                i += n
            else:  # groups (3, 4) are not used by onnx.proto; 6, 7 are invalid
                raise Malformed(f"wire type {wire}")
            if i > end:
                raise Malformed("field runs past its message")
    return False
