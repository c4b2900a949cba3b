"""Q/DQ lint: does an INT8 ONNX graph follow TensorRT's explicit-quantization rules?

Checks (onnx only, no TensorRT): every QuantizeLinear/DequantizeLinear is int8 (no uint8, and
a zero point is given: ONNX defaults a missing one to uint8), zero points are all 0, scales
are finite and positive, activation scales are per-tensor, and per-channel weight scales run
along the output-channel axis of the consuming Conv/ConvTranspose/MatMul/Gemm. With
``expect_float="float16"`` (the graphs ``--target tensorrt`` exports: TensorRT >= 10 takes the
precisions from the graph's types), also: every Q/DQ scale is float16 and Softmax,
LayerNormalization and GELU (Erf/Gelu) read float16, outside the float32 L2-normalisation tail.

    python -m edgeclip.export.qdq_lint model.onnx     # exit 1 when there are findings
    python -m edgeclip.export.qdq_lint --fp16 model.onnx
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
#: ops whose float inputs show the precision the engine computes them in
PRECISION_OPS = ("Softmax", "LayerNormalization", "Erf", "Gelu", "MatMul", "Gemm", "Conv", "Add")
#: in a float16 TensorRT graph these must read float16 (their fp32 version was the fault)
FP16_REQUIRED = ("Softmax", "LayerNormalization", "Erf", "Gelu")
_DTYPE = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
          onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.DOUBLE: "float64"}


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


def _tensor_types(model: onnx.ModelProto) -> dict[str, str]:
    """Float type name of every tensor ONNX shape inference can type."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a graph shape inference rejects: use what the file records
        inferred = model
    g = inferred.graph
    out = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        t = vi.type.tensor_type.elem_type
        if t in _DTYPE:
            out[vi.name] = _DTYPE[t]
    for i in g.initializer:
        if i.data_type in _DTYPE:
            out[i.name] = _DTYPE[i.data_type]
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type in _DTYPE:
                    out[n.output[0]] = _DTYPE[a.t.data_type]
    return out


def _l2_tail(graph: onnx.GraphProto) -> set[str]:
    from .fp16 import normalisation_tail
    return set(normalisation_tail(graph))


def float_summary(model: onnx.ModelProto | str | Path) -> dict:
    """What float types the graph computes in: per op type in :data:`PRECISION_OPS` the
    count of nodes reading each float type (first input), the Q/DQ scale types, and the
    float32 nodes of those types outside the L2-normalisation tail (for report.json)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    types = _tensor_types(model)
    tail = _l2_tail(model.graph)
    ops: dict[str, dict[str, int]] = {}
    fp32_nodes = []
    scales: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type in QDQ_OPS and len(n.input) > 1:
            t = types.get(n.input[1], "unknown")
            scales[t] = scales.get(t, 0) + 1
        if n.op_type in PRECISION_OPS and n.input:
            t = types.get(n.input[0], "unknown")
            if t == "unknown" and n.op_type in ("MatMul", "Gemm", "Conv", "Add"):
                t = types.get(n.input[1], "unknown") if len(n.input) > 1 else t
            per = ops.setdefault(n.op_type, {})
            per[t] = per.get(t, 0) + 1
            if t == "float32" and n.name not in tail:
                fp32_nodes.append(n.name or n.op_type)
    return {"ops": ops, "qdq_scales": scales, "float32_nodes": fp32_nodes,
            "l2_tail_nodes": len(tail)}


def lint(model: onnx.ModelProto | str | Path, expect_float: str | None = None,
         keep_fp32: tuple[str, ...] = ()) -> list[Finding]:
    """All findings for ``model`` (a path or ModelProto); [] means TensorRT-clean.
    ``expect_float="float16"`` adds the float16-graph rules (see the module docstring); op
    types in ``keep_fp32`` were kept float32 on purpose (the export's ``keep_fp32``)."""
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
    if expect_float == "float16":
        findings += _fp16_findings(model, set(keep_fp32))
    elif expect_float not in (None, "float32"):
        raise ValueError(f"expect_float must be float16, float32 or None, not {expect_float!r}")
    return findings


def _fp16_findings(model: onnx.ModelProto, keep_fp32: set[str] = frozenset()) -> list[Finding]:
    types = _tensor_types(model)
    tail = _l2_tail(model.graph)
    out = []
    for n in model.graph.node:
        name = n.name or f"{n.op_type}({n.input[0] if n.input else ''})"
        if n.op_type in QDQ_OPS and len(n.input) > 1:
            t = types.get(n.input[1], "unknown")
            if t != "float16":
                out.append(Finding(name, "fp16-scale", f"scale is {t}; the float16 graph for "
                                   f"TensorRT needs float16 scales (opset >= 19)."))
        elif (n.op_type in FP16_REQUIRED and n.op_type not in keep_fp32 and n.name not in tail
              and n.input):
            t = types.get(n.input[0], "unknown")
            if t != "float16":
                out.append(Finding(name, "fp16-compute", f"{n.op_type} reads {t}: a strongly "
                                   f"typed TensorRT network runs it in {t}. Quantize the float16 "
                                   f"graph (float = \"fp16\")."))
    return out


def lint_report(bundle_dir: str | Path, graphs: dict[str, str],
                quant_info: dict[str, dict] | None = None) -> dict:
    """The lint of a bundle's TensorRT INT8 graphs for report.json: ``graphs`` maps tower ->
    file (relative to ``bundle_dir``); ``quant_info`` the tower's manifest ``quantization``
    entry, whose ``float`` (float16 | float32) selects the float16 rules."""
    out: dict = {"passed": True, "findings": [], "graphs": {}}
    for tower, rel in sorted(graphs.items()):
        info = (quant_info or {}).get(tower) or {}
        expect = info.get("float")
        model = onnx.load(str(Path(bundle_dir) / rel))
        found = [str(f) for f in lint(model, expect_float=expect,
                                      keep_fp32=tuple(info.get("keep_fp32") or ()))]
        out["graphs"][rel] = {"tower": tower, "expect_float": expect or "any",
                              "findings": found, "float": float_summary(model)}
        out["findings"] += [f"{rel}: {f}" for f in found]
    out["passed"] = not out["findings"]
    return out


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    expect = None
    if "--fp16" in args:
        args.remove("--fp16")
        expect = "float16"
    if not args:
        print("usage: python -m edgeclip.export.qdq_lint [--fp16] MODEL.onnx [...]",
              file=sys.stderr)
        return 2
    status = 0
    for path in args:
        if not Path(path).is_file():
            print(f"{path}: no such file", file=sys.stderr)
            return 2
        findings = lint(path, expect_float=expect)
        for f in findings:
            print(f"{path}: {f}")
        if findings:
            status = 1
        else:
            print(f"{path}: OK (TensorRT explicit-quantization rules)")
    return status


if __name__ == "__main__":
    sys.exit(main())
