"""FP16 ONNX graph -> FP32 graph, in memory, without the ``onnx`` package.

On CPUs without native FP16 arithmetic ONNX Runtime runs an FP16 graph slower than the same graph
in FP32 (0.70-0.83x on the development machines). A bundle that ships FP16 as its only float graph
(the default model: INT8 for the CPU + FP16 for TensorRT, to stay small) gets its FP32 CPU graph
from the FP16 one at load: every FP16 initializer and constant becomes FP32 (exactly: every FP16
value is an FP32 value), every ``Cast(to=FLOAT16)`` becomes ``Cast(to=FLOAT)`` (a no-op ORT removes)
and every FP16 type annotation becomes FP32. The result computes in FP32 from the FP16 weights.

The rewrite works on the protobuf wire format directly (ONNX's field numbers are a stable, public
schema: onnx/onnx.proto), so the runtime needs neither ``onnx`` nor ``protobuf`` classes. Fields it
does not touch are copied byte for byte.
"""

from __future__ import annotations

import numpy as np

FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto.DataType

# field numbers from onnx/onnx.proto
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_VALUE_INFO = 1, 5, 11, 12, 13
_GRAPH_SPARSE_INIT = 15
_NODE_ATTRIBUTE = 5
_ATTR_NAME, _ATTR_I, _ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS = 1, 3, 5, 6, 10, 11
_TENSOR_DATA_TYPE, _TENSOR_INT32_DATA, _TENSOR_RAW = 2, 5, 9
_TENSOR_EXTERNAL, _TENSOR_LOCATION = 13, 14
_VI_TYPE = 2
_TYPE_TENSOR, _TYPE_SEQUENCE, _TYPE_MAP, _TYPE_SPARSE, _TYPE_OPTIONAL = 1, 4, 5, 8, 9
_TT_ELEM = 1
_MAP_VALUE = 2
_DTYPE_ATTRS = (b"to", b"dtype")


class UpcastError(ValueError):
    """The graph uses something this rewrite does not handle (e.g. external data)."""


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _enc_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(buf):
    """Yield (field, wire_type, start, end, value) over a message; ``value`` is the int of a
    varint or the (start, end) span of a length-delimited payload."""
    pos, n = 0, len(buf)
    while pos < n:
        start = pos
        tag, pos = _varint(buf, pos)
        field, wt = tag >> 3, tag & 7
        if wt == 0:
            value, pos = _varint(buf, pos)
        elif wt == 2:
            length, pos = _varint(buf, pos)
            value = (pos, pos + length)
            pos += length
        elif wt == 1:
            value, pos = None, pos + 8
        elif wt == 5:
            value, pos = None, pos + 4
        else:
            raise UpcastError(f"unsupported protobuf wire type {wt}")
        yield field, wt, start, pos, value


def _size(chunks: list) -> int:
    return sum(len(c) for c in chunks)


def _ld(field: int, chunks: list) -> list:
    """A length-delimited field as chunks (no copy of the payload)."""
    return [_enc_varint(field << 3 | 2) + _enc_varint(_size(chunks))] + chunks


def _vi(field: int, value: int) -> bytes:
    return _enc_varint(field << 3) + _enc_varint(value)


def _rewrite(buf, handlers: dict) -> list | None:
    """A message with each length-delimited field in ``handlers`` passed through its rewrite
    (``handler(payload) -> chunks or None``) and each varint field through ``handlers[(f, 0)]``;
    returned as a list of byte chunks (slices of ``buf`` where unchanged), None when unchanged."""
    out: list = []
    last = 0
    for field, wt, start, end, value in _fields(buf):
        if wt == 2 and field in handlers:
            new = handlers[field](buf[value[0]:value[1]])
            if new is not None:
                out.append(buf[last:start])
                out.extend(_ld(field, new))
                last = end
        elif wt == 0 and (field, 0) in handlers:
            new = handlers[(field, 0)](value)
            if new != value:
                out.append(buf[last:start])
                out.append(_vi(field, new))
                last = end
    if last == 0:
        return None  # unchanged
    out.append(buf[last:])
    return out


def _tensor(buf) -> list | None:
    dtype, raw, halves, external = None, None, [], False
    for field, wt, start, end, value in _fields(buf):
        if field == _TENSOR_DATA_TYPE and wt == 0:
            dtype = value
        elif field == _TENSOR_RAW and wt == 2:
            raw = buf[value[0]:value[1]]
        elif field == _TENSOR_INT32_DATA:
            if wt == 2:  # packed
                p, stop = value
                while p < stop:
                    v, p = _varint(buf, p)
                    halves.append(v)
            elif wt == 0:
                halves.append(value)
        elif field in (_TENSOR_EXTERNAL, _TENSOR_LOCATION) and (wt == 2 or value):
            external = True
    if dtype != FLOAT16:
        return None
    if external:
        raise UpcastError("FP16 tensors in external data files are not supported")
    if raw is not None:
        data = np.frombuffer(raw, dtype="<f2")
    else:
        data = np.asarray(halves, dtype=np.uint16).view("<f2")
    new_raw = memoryview(data.astype("<f4")).cast("B")
    out, last = [], 0
    for field, wt, start, end, value in _fields(buf):
        if field in (_TENSOR_RAW, _TENSOR_INT32_DATA, _TENSOR_DATA_TYPE):
            out.append(buf[last:start])
            last = end
    out.append(buf[last:])
    out.append(_vi(_TENSOR_DATA_TYPE, FLOAT))
    out.extend(_ld(_TENSOR_RAW, [new_raw]))
    return out


def _elem(v: int) -> int:
    return FLOAT if v == FLOAT16 else v


def _type(buf) -> list | None:
    return _rewrite(buf, {
        _TYPE_TENSOR: lambda b: _rewrite(b, {(_TT_ELEM, 0): _elem}),
        _TYPE_SPARSE: lambda b: _rewrite(b, {(_TT_ELEM, 0): _elem}),
        _TYPE_SEQUENCE: lambda b: _rewrite(b, {1: _type}),
        _TYPE_OPTIONAL: lambda b: _rewrite(b, {1: _type}),
        _TYPE_MAP: lambda b: _rewrite(b, {_MAP_VALUE: _type}),
    })


def _value_info(buf) -> list | None:
    return _rewrite(buf, {_VI_TYPE: _type})


def _attribute(buf) -> list | None:
    name = None
    for field, wt, start, end, value in _fields(buf):
        if field == _ATTR_NAME and wt == 2:
            name = bytes(buf[value[0]:value[1]])
            break
    handlers = {_ATTR_T: _tensor, _ATTR_TENSORS: _tensor, _ATTR_G: _graph, _ATTR_GRAPHS: _graph}
    if name in _DTYPE_ATTRS:
        handlers[(_ATTR_I, 0)] = _elem
    return _rewrite(buf, handlers)


def _node(buf) -> list | None:
    return _rewrite(buf, {_NODE_ATTRIBUTE: _attribute})


def _graph(buf) -> list | None:
    for field, wt, start, end, value in _fields(buf):
        if field == _GRAPH_SPARSE_INIT:
            raise UpcastError("sparse initializers are not supported")
    return _rewrite(buf, {_GRAPH_NODE: _node, _GRAPH_INITIALIZER: _tensor,
                          _GRAPH_INPUT: _value_info, _GRAPH_OUTPUT: _value_info,
                          _GRAPH_VALUE_INFO: _value_info})


def upcast_fp16_model(data: bytes) -> bytes:
    """The serialized ModelProto ``data`` with every FP16 tensor, cast and type made FP32."""
    buf = memoryview(data)
    for field, wt, start, end, value in _fields(buf):
        if field == _MODEL_FUNCTIONS:
            raise UpcastError("graphs with local functions are not supported")
    out = _rewrite(buf, {_MODEL_GRAPH: _graph})
    return bytes(data) if out is None else b"".join(out)
