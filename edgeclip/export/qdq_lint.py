"""Q/DQ lint: does an INT8 ONNX graph follow TensorRT's explicit-quantization rules?

Checks (onnx only, no TensorRT): every QuantizeLinear/DequantizeLinear is int8 (no uint8, and
a zero point is given: ONNX defaults a missing one to uint8), zero points are all 0, scales
are finite and positive, activation scales are per-tensor, and per-channel weight scales run
along the output-channel axis of the consuming Conv/ConvTranspose/MatMul/Gemm.

    python -m edgeclip.export.qdq_lint model.onnx     # exit 1 when there are findings
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Finding:
    node: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.node}: [{self.rule}] {self.message}"


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _weight_axis(consumer: onnx.NodeProto, input_index: int, rank: int) -> int | None:
    """The output-channel axis of the weight fed at ``input_index`` (None: not a weight input)."""
    op = consumer.op_type
    if op == "Conv" and input_index == 1:
        return 0
    if op == "ConvTranspose" and input_index == 1:
        return 1
    if op == "MatMul" and input_index == 1:
        return rank - 1
    if op == "Gemm" and input_index == 1:
        return 0 if _attr(consumer, "transB", 0) else 1
    return None


def lint(model: onnx.ModelProto | str | Path) -> list[Finding]:
    """All findings for ``model`` (a path or ModelProto); [] means TensorRT-clean."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    graph = model.graph
    consts = _constants(graph)
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in graph.node:
        for i, name in enumerate(n.input):
            consumers.setdefault(name, []).append((n, i))
    findings: list[Finding] = []
    qdq = [n for n in graph.node if n.op_type in QDQ_OPS]
    if not qdq:
        return [Finding(graph.name or "graph", "no-qdq", "no QuantizeLinear/DequantizeLinear "
                        "nodes: this is not an explicitly quantized graph.")]
    for n in qdq:
        name = n.name or f"{n.op_type}({n.input[0]})"
        scale = consts.get(n.input[1])
        if scale is None:
            findings.append(Finding(name, "scale-constant", "scale is not a constant."))
        elif not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            findings.append(Finding(name, "scale-positive",
                                    f"scale has non-positive or non-finite values "
                                    f"(min {float(np.min(scale)):.3g})."))
        zp = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is None:
            if len(n.input) > 2 and n.input[2]:
                findings.append(Finding(name, "zero-point-constant", "zero point is not a constant."))
            else:
                findings.append(Finding(name, "int8-only", "no zero point: ONNX then uses uint8. "
                                        "Export with signed activations (--target tensorrt)."))
        else:
            if zp.dtype != np.int8:
                findings.append(Finding(name, "int8-only", f"zero point is {zp.dtype}; TensorRT "
                                        f"takes int8 only. Export with --target tensorrt."))
            if np.any(zp != 0):
                findings.append(Finding(name, "zero-point-zero", f"zero point is not 0 (values "
                                        f"{np.unique(zp)[:4].tolist()}): TensorRT quantization is "
                                        f"symmetric."))
        if n.op_type == "DequantizeLinear" and n.input[0] in consts:
            x = consts[n.input[0]]
            if x.dtype != np.int8:
                findings.append(Finding(name, "int8-only", f"quantized weight is {x.dtype}."))
            if scale is not None and scale.size > 1:
                axis = _attr(n, "axis", 1) % x.ndim
                for consumer, idx in consumers.get(n.output[0], []):
                    want = _weight_axis(consumer, idx, x.ndim)
                    if want is not None and axis != want:
                        findings.append(Finding(name, "per-channel-axis",
                                                f"per-channel axis {axis} feeding {consumer.op_type} "
                                                f"'{consumer.name}' must be its output-channel axis "
                                                f"{want}."))
        elif scale is not None and scale.size > 1:
            findings.append(Finding(name, "activation-per-tensor", "activation scale is per-channel"
                                    "; TensorRT takes per-tensor activation scales."))
    return findings


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m edgeclip.export.qdq_lint MODEL.onnx [...]", file=sys.stderr)
        return 2
    status = 0
    for path in args:
        if not Path(path).is_file():
            print(f"{path}: no such file", file=sys.stderr)
            return 2
        findings = lint(path)
        for f in findings:
            print(f"{path}: {f}")
        if findings:
            status = 1
        else:
            print(f"{path}: OK (TensorRT explicit-quantization rules)")
    return status


if __name__ == "__main__":
    sys.exit(main())
