"""Reader for ONNX Runtime `.ort` model files (a FlatBuffer with identifier "ORTM").

Written from the ORT schema (onnxruntime/core/flatbuffers/schema/ort.fbs); only the parts needed to
recover weights and graph structure are read: initializers, nodes (name, op type, inputs, outputs,
attributes) and subgraphs held in node attributes (e.g. the two branches of a merged decoder's If).

FlatBuffer layout in brief: the file starts with a u32 offset to the root table. A table starts with
an i32 back-offset to its vtable; the vtable is [u16 vtable size, u16 table size, u16 field offset
per field]. Offsets to strings/vectors/sub-tables are u32, relative to where they are stored.
Strings and vectors are a u32 length followed by the elements.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class OrtFormatError(ValueError):
    pass


# ONNX TensorProto.DataType -> numpy
_ONNX_DTYPES = {
    1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
    9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64,
}
_ATTR_GRAPH, _ATTR_GRAPHS = 5, 10  # AttributeType enum


class _Table:
    __slots__ = ("buf", "pos", "vt", "vt_size")

    def __init__(self, buf: memoryview, pos: int):
        if not 0 <= pos <= len(buf) - 4:
            raise OrtFormatError(f"table offset {pos} outside the file ({len(buf)} bytes)")
        self.buf, self.pos = buf, pos
        self.vt = pos - struct.unpack_from("<i", buf, pos)[0]
        if not 0 <= self.vt <= len(buf) - 4:
            raise OrtFormatError(f"corrupt vtable offset at {pos}")
        self.vt_size = struct.unpack_from("<H", buf, self.vt)[0]

    def _field(self, index: int) -> int | None:
        o = 4 + 2 * index
        if o >= self.vt_size:
            return None
        off = struct.unpack_from("<H", self.buf, self.vt + o)[0]
        return self.pos + off if off else None

    def scalar(self, index: int, fmt: str, default=0):
        p = self._field(index)
        return default if p is None else struct.unpack_from("<" + fmt, self.buf, p)[0]

    def _deref(self, index: int) -> int | None:
        p = self._field(index)
        return None if p is None else p + struct.unpack_from("<I", self.buf, p)[0]

    def string(self, index: int) -> str:
        p = self._deref(index)
        if p is None:
            return ""
        n = struct.unpack_from("<I", self.buf, p)[0]
        return bytes(self.buf[p + 4 : p + 4 + n]).decode("utf-8")

    def table(self, index: int) -> "_Table | None":
        p = self._deref(index)
        return None if p is None else _Table(self.buf, p)

    def _vector(self, index: int) -> tuple[int, int]:
        p = self._deref(index)
        if p is None:
            return 0, 0
        n = struct.unpack_from("<I", self.buf, p)[0]
        return p + 4, n

    def tables(self, index: int) -> list["_Table"]:
        start, n = self._vector(index)
        out = []
        for i in range(n):
            e = start + 4 * i
            out.append(_Table(self.buf, e + struct.unpack_from("<I", self.buf, e)[0]))
        return out

    def strings(self, index: int) -> list[str]:
        start, n = self._vector(index)
        out = []
        for i in range(n):
            e = start + 4 * i
            s = e + struct.unpack_from("<I", self.buf, e)[0]
            ln = struct.unpack_from("<I", self.buf, s)[0]
            out.append(bytes(self.buf[s + 4 : s + 4 + ln]).decode("utf-8"))
        return out

    def array(self, index: int, dtype) -> np.ndarray:
        start, n = self._vector(index)
        dt = np.dtype(dtype)
        if start + n * dt.itemsize > len(self.buf):
            raise OrtFormatError("vector runs past the end of the file")
        return np.frombuffer(self.buf, dtype=dt.newbyteorder("<"), count=n, offset=start) if n else np.zeros(0, dt)


@dataclass
class OrtNode:
    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attributes: dict[str, object] = field(default_factory=dict)


@dataclass
class OrtGraph:
    """All initializers and nodes of a model, subgraphs flattened in (names are unique per model)."""

    initializers: dict[str, np.ndarray]
    nodes: list[OrtNode]
    inputs: list[str]
    outputs: list[str]

    def consumers(self) -> dict[str, list[OrtNode]]:
        out: dict[str, list[OrtNode]] = {}
        for n in self.nodes:
            for i in n.inputs:
                out.setdefault(i, []).append(n)
        return out

    def producers(self) -> dict[str, OrtNode]:
        return {o: n for n in self.nodes for o in n.outputs}


def _tensor(t: _Table) -> tuple[str, np.ndarray]:
    name = t.string(0)
    dims = [int(d) for d in t.array(2, np.int64)]
    dtype_id = t.scalar(3, "i")
    if dtype_id not in _ONNX_DTYPES:
        raise OrtFormatError(f"initializer {name!r}: unsupported ONNX data type {dtype_id}")
    if t.scalar(6, "q", default=-1) >= 0:
        raise OrtFormatError(f"initializer {name!r} keeps its data outside the .ort file; not supported")
    raw = t.array(4, np.uint8)
    dt = np.dtype(_ONNX_DTYPES[dtype_id])
    count = int(np.prod(dims)) if dims else 1
    if raw.size != count * dt.itemsize:
        raise OrtFormatError(f"initializer {name!r}: {raw.size} bytes for shape {dims} of {dt}")
    return name, raw.view(dt.newbyteorder("<")).astype(dt).reshape(dims)


def _attribute(a: _Table):
    kind = a.scalar(2, "i")
    if kind == 1:
        return a.scalar(3, "f")
    if kind == 2:
        return a.scalar(4, "q")
    if kind == 3:
        return a.string(5)
    if kind == 4:
        return _tensor(a.table(6))[1]
    if kind == 6:
        return a.array(8, np.float32).tolist()
    if kind == 7:
        return a.array(9, np.int64).tolist()
    if kind == 8:
        return a.strings(10)
    return None  # graphs are walked separately


def _walk(g: _Table, graph: OrtGraph) -> None:
    for t in g.tables(0):
        name, arr = _tensor(t)
        graph.initializers[name] = arr
    for n in g.tables(2):
        attrs, subgraphs = {}, []
        for a in n.tables(10):
            kind = a.scalar(2, "i")
            if kind == _ATTR_GRAPH:
                subgraphs.append(a.table(7))
            elif kind == _ATTR_GRAPHS:
                subgraphs.extend(a.tables(12))
            else:
                attrs[a.string(0)] = _attribute(a)
        graph.nodes.append(OrtNode(n.string(0), n.string(5), n.strings(8), n.strings(9), attrs))
        for sg in subgraphs:
            if sg is not None:
                _walk(sg, graph)


def read_ort_model(path: str | Path | bytes) -> OrtGraph:
    data = path if isinstance(path, (bytes, bytearray)) else Path(path).read_bytes()
    buf = memoryview(data)
    if len(buf) < 8 or bytes(buf[4:8]) != b"ORTM":
        raise OrtFormatError(f"{path if not isinstance(path, (bytes, bytearray)) else 'data'} is not an ONNX Runtime .ort file (no ORTM identifier)")
    session = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
    model = session.table(1)
    if model is None or model.table(7) is None:
        raise OrtFormatError(".ort file has no model graph")
    main = model.table(7)
    graph = OrtGraph({}, [], main.strings(5), main.strings(6))
    _walk(main, graph)
    return graph
