"""Check an ORT-format (``.ort``) model for external data, with the standard library only.

The ORT format is a FlatBuffer (schema: onnxruntime's ``ort.fbs``), and its ``Tensor`` table has an
``external_data_offset``: a tensor whose bytes live in a separate file, outside what the artifact
hashes. The same rule as for ``.onnx`` graphs (onnx_scan) applies: a bundle never has external
data, so a graph that declares any is refused before onnxruntime sees it, whatever onnxruntime
would do with it. The device must not need the ``flatbuffers`` package's generated ORT classes
(``onnxruntime.tools`` imports torch where it is installed), hence this bounded walk over the
tables that can hold a tensor: InferenceSession.model -> Model.graph -> Graph.initializers,
sparse_initializers, nodes -> Node.attributes -> Attribute.t, tensors, g, graphs (subgraphs).

FlatBuffers layout: a table starts with an int32 offset back to its vtable; the vtable holds
uint16 (vtable size, table size, field offsets...); a field that refers to a table, vector or string
stores a uint32 offset relative to where it is stored; a vector is a uint32 length then its elements.
"""

from __future__ import annotations

import struct

ORT_IDENTIFIER = b"ORTM"  # the FlatBuffer file identifier of the ORT format, bytes 4..8
MAX_TABLES = 1 << 22  # a walk over more tables than any real model has is a crafted cycle

# vtable byte offsets of the fields walked (4 + 2 * field index in ort.fbs)
_SESSION_MODEL, _MODEL_GRAPH = 6, 18
_GRAPH_INITIALIZERS, _GRAPH_NODES, _GRAPH_SPARSE = 4, 8, 18
_NODE_ATTRIBUTES = 24
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS = 16, 18, 26, 28
_SPARSE_VALUES, _SPARSE_INDICES = 4, 6
_TENSOR_EXTERNAL_DATA_OFFSET = 16


class Malformed(ValueError):
    pass


def is_ort_format(data: bytes) -> bool:
    return len(data) >= 8 and data[4:8] == ORT_IDENTIFIER


class _Buf:
    def __init__(self, data: bytes):
        self.data = data

    def u32(self, pos: int) -> int:
        return self._unpack("<I", pos)

    def _unpack(self, fmt: str, pos: int):
        if pos < 0 or pos + struct.calcsize(fmt) > len(self.data):
            raise Malformed("offset past the end")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def field(self, table: int, slot: int) -> int | None:
        """Position of a field's value in ``table`` (None: absent)."""
        vtable = table - self._unpack("<i", table)
        size = self._unpack("<H", vtable)
        if slot + 2 > size:
            return None
        off = self._unpack("<H", vtable + slot)
        return table + off if off else None

    def ref(self, table: int, slot: int) -> int | None:
        """The table / vector a reference field points to (None: absent)."""
        pos = self.field(table, slot)
        return None if pos is None else pos + self.u32(pos)

    def tables(self, table: int, slot: int) -> list[int]:
        """The tables of a vector-of-tables field."""
        vec = self.ref(table, slot)
        if vec is None:
            return []
        n = self.u32(vec)
        if vec + 4 + 4 * n > len(self.data):
            raise Malformed("vector past the end")
        return [vec + 4 + 4 * i + self.u32(vec + 4 + 4 * i) for i in range(n)]


def uses_external_data(data: bytes) -> bool:
    """True if any tensor of the model declares external data. Raises Malformed on a buffer that is
    not an ORT-format model or cannot be walked within bounds."""
    if not is_ort_format(data):
        raise Malformed("no ORT format identifier")
    buf = _Buf(data)
    root = buf.u32(0)  # the root table: a uoffset at byte 0
    model = buf.ref(root, _SESSION_MODEL)
    graph = None if model is None else buf.ref(model, _MODEL_GRAPH)
    graphs, tensors, seen = ([] if graph is None else [graph]), [], 0
    while graphs or tensors:
        seen += 1
        if seen > MAX_TABLES:
            raise Malformed("too many tables")
        if tensors:
            pos = buf.field(tensors.pop(), _TENSOR_EXTERNAL_DATA_OFFSET)
            if pos is not None and buf._unpack("<q", pos) != -1:
                return True
            continue
        g = graphs.pop()
        tensors += buf.tables(g, _GRAPH_INITIALIZERS)
        for sparse in buf.tables(g, _GRAPH_SPARSE):
            tensors += [t for t in (buf.ref(sparse, _SPARSE_VALUES), buf.ref(sparse, _SPARSE_INDICES)) if t is not None]
        nodes = buf.tables(g, _GRAPH_NODES)
        seen += len(nodes)
        for node in nodes:
            for attr in buf.tables(node, _NODE_ATTRIBUTES):
                tensors += [t for t in (buf.ref(attr, _ATTR_T),) if t is not None] + buf.tables(attr, _ATTR_TENSORS)
                graphs += [s for s in (buf.ref(attr, _ATTR_G),) if s is not None] + buf.tables(attr, _ATTR_GRAPHS)
    return False
