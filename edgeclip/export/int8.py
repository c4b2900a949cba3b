"""FP32 ONNX -> INT8 QDQ ONNX with onnxruntime.quantization (static, calibrated).

Targets:
  * ``cpu``: QUInt8 activations + per-channel symmetric QInt8 weights (U8S8): ONNX Runtime's
    fastest CPU kernels (VNNI/AMX). Conv towers: every op ORT quantizes; transformer towers:
    MatMul/Gemm only (measured: quantizing LayerNorm/Softmax/Adds ruins a MiniLM tower).
  * ``tensorrt``: QInt8 symmetric activations (zero point 0) + per-channel symmetric QInt8
    weights, Q/DQ only on Conv/MatMul/Gemm inputs, one Q/DQ pair per consumer: TensorRT's
    explicit-quantization rules (checked by :mod:`edgeclip.export.qdq_lint`).
"""

from __future__ import annotations

import fnmatch
import tempfile
from pathlib import Path

import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from ..errors import ConfigError

CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
TARGETS = ("cpu", "tensorrt")
#: Symbolic names for nodes to keep in float; anything else is a node name or a glob pattern.
EXCLUDE_ROLES = ("first_conv", "token_embedding", "final_projection", "ffn_down")
WEIGHT_OPS = ("Conv", "MatMul", "Gemm", "ConvTranspose")


def _is_down_projection(node: onnx.NodeProto, graph: onnx.GraphProto) -> bool:
    """A transformer FFN's down projection: constant weight with in >= 2 x out features (its
    input, after GELU, has outliers that per-tensor uint8 activations clip)."""
    weights = {i.name: i for i in graph.initializer}
    w = weights.get(node.input[1]) if len(node.input) > 1 else None
    if w is None or len(w.dims) != 2:
        return False
    k, n = w.dims if node.op_type == "MatMul" or not any(
        a.name == "transB" and a.i for a in node.attribute) else w.dims[::-1]
    return k >= 2 * n and any(m.op_type in ("Erf", "Gelu") for m in graph.node)


def _is_transformer(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("LayerNormalization", "Softmax") for n in model.graph.node)


def resolve_excludes(model: onnx.ModelProto, excludes: list[str] | tuple[str, ...]) -> list[str]:
    """Node names for ``excludes`` (roles resolved on this graph; unknown names -> ConfigError)."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    names = {n.name for n in graph.node}
    out: list[str] = []
    for item in excludes:
        if item == "first_conv":
            out += [n.name for n in graph.node if n.op_type == "Conv"][:1]
        elif item == "token_embedding":
            feeds = {i.name for i in graph.input if i.name == "input_ids"}
            out += [n.name for n in graph.node if n.op_type == "Gather"
                    and n.input[0] in inits and n.input[1] in feeds]
        elif item == "ffn_down":
            out += [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")
                    and _is_down_projection(n, graph)]
        elif item == "final_projection":
            out += [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")
                    and any(x in inits for x in n.input[1:2])][-1:]
        elif item in names:
            out.append(item)
        elif any(ch in item for ch in "*?["):
            out += [n for n in names if fnmatch.fnmatchcase(n, item)]
        else:
            raise ConfigError(f"quantization exclude '{item}' is neither a role "
                              f"({', '.join(EXCLUDE_ROLES)}) nor a node of the graph (globs such as '*dense_2*' are allowed).")
    return sorted(set(out))


def quant_settings(target: str) -> dict:
    """quantize_static keyword arguments for a target."""
    common = dict(quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                  weight_type=QuantType.QInt8)
    extra = {"WeightSymmetric": True, "MatMulConstBOnly": True,
             "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}}
    if target == "cpu":
        return {**common, "activation_type": QuantType.QUInt8,
                "extra_options": {**extra, "ActivationSymmetric": False}}
    if target == "tensorrt":
        return {**common, "activation_type": QuantType.QInt8,
                "op_types_to_quantize": list(WEIGHT_OPS),
                "extra_options": {**extra, "ActivationSymmetric": True, "DedicatedQDQPair": True,
                                  "QDQKeepRemovableActivations": True,
                                  "QuantizeBias": False,  # TensorRT: float bias, no int32 DQ
                                  "ForceQuantizeNoInputCheck": False}}
    raise ConfigError(f"unknown target '{target}' (known: {', '.join(TARGETS)}).")


def preprocess_for_quant(src: str | Path, dst: str | Path) -> Path:
    """ORT's quant_pre_process (optimise + shape inference); plain shape inference on failure."""
    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    except Exception:  # symbolic shape inference gives up on some graphs: ONNX inference is enough
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    return Path(dst)


def quantize_int8(src: str | Path, dst: str | Path, reader: CalibrationDataReader, target: str,
                  method: str = "minmax", excludes: tuple[str, ...] = ()) -> dict:
    """Quantize ``src`` to ``dst``; return what was done (for the manifest and the report)."""
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"unknown calibration method '{method}' (known: "
                          f"{', '.join(CALIBRATION_METHODS)}).")
    settings = quant_settings(target)
    with tempfile.TemporaryDirectory(prefix="edgeclip-quant-") as tmp:
        pre = preprocess_for_quant(src, Path(tmp) / "pre.onnx")
        graph = onnx.load(str(pre))
        nodes = resolve_excludes(graph, excludes)
        if target == "cpu" and _is_transformer(graph):
            # quantizing LayerNorm/Softmax/GELU/residual Adds with uint8 activations costs a
            # MiniLM tower ~0.15 cosine; its MatMuls alone give the speed-up
            settings["op_types_to_quantize"] = ["MatMul", "Gemm"]
        quantize_static(str(pre), str(dst), reader, nodes_to_exclude=nodes,
                        calibrate_method=CALIBRATION_METHODS[method], **settings)
    onnx.checker.check_model(str(dst))
    return {"target": target, "calibration": method, "excluded_nodes": nodes,
            "op_types": settings.get("op_types_to_quantize") or "all",
            "activations": "int8-symmetric" if target == "tensorrt" else "uint8",
            "weights": "int8-symmetric-per-channel", "format": "QDQ"}
