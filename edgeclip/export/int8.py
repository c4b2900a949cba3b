"""FP32 ONNX -> INT8 QDQ ONNX with onnxruntime.quantization (static, calibrated).

Targets:
  * ``cpu``: QUInt8 activations + per-channel symmetric QInt8 weights (U8S8): ONNX Runtime's
    fastest CPU kernels (VNNI/AMX). Conv towers: every op ORT quantizes except the stem stages
    (``high_res``); transformer towers: MatMul/Gemm and the embedding-table Gathers (measured:
    quantizing LayerNorm/Softmax/Adds ruins a MiniLM tower). Excluded FFN down projections and
    the final projection get 8-bit weight-only ``MatMulNBits`` (their GELU-output activations
    clip under per-tensor uint8). minmax ranges are averaged over batches (ORT moving average).
  * ``tensorrt``: QInt8 symmetric activations (zero point 0) + per-channel symmetric QInt8
    weights, Q/DQ only on Conv/MatMul/Gemm inputs, one Q/DQ pair per consumer: TensorRT's
    explicit-quantization rules (checked by :mod:`edgeclip.export.qdq_lint`). Quantized over the
    **FP16** graph (``float_dtype="fp16"``, the default): TensorRT >= 10 builds strongly typed
    networks, so the graph's types are the engine's precisions, and the float compute between
    the Q/DQ pairs (Softmax, LayerNormalization, GELU, residual Adds, excluded layers) must be
    float16 in the graph to run as FP16. Q/DQ scales are float16 too (opset >= 19). Only the
    L2-normalisation tail stays float32 (its squared sum overflows float16), plus any op types
    named in ``keep_fp32``. ``float_dtype="fp32"`` gives the older float32 Q/DQ graph (opset 17)
    for TensorRT 8.6 (JetPack 6.0), which gets FP16 from its builder flags.
"""

from __future__ import annotations

import fnmatch
import logging
import tempfile
from pathlib import Path

import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from ..errors import ConfigError
from .fp16 import convert_fp16

CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
TARGETS = ("cpu", "tensorrt")
#: Symbolic names for nodes to keep in float; anything else is a node name or a glob pattern.
EXCLUDE_ROLES = ("first_conv", "high_res", "token_embedding", "final_projection", "ffn_down")
#: cpu target: excluded MatMuls whose constant weights get 8-bit block-wise weight-only
#: quantization (ORT MatMulNBits, int8 compute) instead of staying float32.
WEIGHT_ONLY_DEFAULT = ("ffn_down", "final_projection")
#: cpu: the embedding table is int8 (Gather), the stem stages of a conv net stay float (fidelity).
CPU_DEFAULT_EXCLUDE = ("first_conv", "high_res", "final_projection", "ffn_down")
TENSORRT_DEFAULT_EXCLUDE = ("first_conv", "token_embedding", "final_projection", "ffn_down")
WEIGHT_ONLY_BLOCK = 128
HIGH_RES_FACTOR = 4  # "high_res": inputs of at least 1/HIGH_RES_FACTOR of the input pixels
WEIGHT_OPS = ("Conv", "MatMul", "Gemm", "ConvTranspose")
#: tensorrt target: the float type of the graph the Q/DQ pairs are put into
FLOAT_DTYPES = ("fp16", "fp32")
#: QuantizeLinear/DequantizeLinear with float16 scales (and inputs) exist from opset 19 on
FP16_QDQ_OPSET = 19


def tensorrt_fp16_base(src: str | Path, dst: str | Path,
                       keep_fp32: tuple[str, ...] = ()) -> Path:
    """The float16 graph the TensorRT INT8 graph is quantized over: everything in float16 but
    the L2-normalisation tail and the op types in ``keep_fp32``; float32 inputs/outputs; the
    default-domain opset raised to at least 19 (float16 Q/DQ scales)."""
    from onnx import version_converter
    convert_fp16(src, dst, sensitive_ops=tuple(keep_fp32))
    model = onnx.load(str(dst))
    current = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                  default=FP16_QDQ_OPSET)
    if current < FP16_QDQ_OPSET:
        model = version_converter.convert_version(model, FP16_QDQ_OPSET)
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(dst))
    return Path(dst)


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


def _spatial(graph: onnx.GraphProto) -> dict[str, int]:
    """H*W of every 4-D tensor whose spatial size shape inference fixed."""
    out = {}
    for v in list(graph.input) + list(graph.value_info):
        d = v.type.tensor_type.shape.dim
        if len(d) == 4 and d[2].dim_value and d[3].dim_value:
            out[v.name] = d[2].dim_value * d[3].dim_value
    return out


def _high_res_nodes(graph: onnx.GraphProto) -> list[str]:
    """Nodes reading a feature map at >= 1/2 the input resolution (a conv net's stem stages:
    their per-tensor uint8 activations cost an EfficientNet-Lite0 most of its int8 fidelity),
    up to the end of their last block; none when every conv runs there."""
    hw = _spatial(graph)
    full = max((hw[i.name] for i in graph.input if i.name in hw), default=0)
    names = {n.name for n in graph.node
             if full and n.input and hw.get(n.input[0], 0) * HIGH_RES_FACTOR >= full}
    if {n.name for n in graph.node if n.op_type == "Conv"} <= names:
        return []  # no down-sampled stage: no "stem"
    readers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    # close the last block: follow single-reader tensors to the block's output
    last = {o for n in graph.node if n.name in names for o in n.output}
    for n in graph.node:
        if n.name not in names and n.input and n.input[0] in last and readers[n.input[0]] == 1:
            names.add(n.name)
            last.update(n.output)
    return sorted(names)


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
        elif item == "high_res":
            out += _high_res_nodes(graph)
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


def _split_tail(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[onnx.NodeProto]]:
    """The graph up to its last constant-weight MatMul/Gemm, and the nodes after it (the
    L2-normalisation tail). A tower normalised twice has a norm tensor of 1.0 +- 1e-7 there,
    on which ORT's histogram calibrators fail ("Too many bins for data range")."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    last = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")
            and any(x in inits for x in n.input[1:2])][-1:]
    if not last:
        return model, []
    front, tail = {last[0].output[0]}, []
    for n in graph.node:
        if any(i in front for i in n.input):
            tail.append(n)
            front.update(n.output)
    if not tail:
        return model, []
    body = onnx.ModelProto()
    body.CopyFrom(model)
    del body.graph.node[:]
    body.graph.node.extend(n for n in graph.node if n not in tail)
    del body.graph.output[:]
    body.graph.output.append(onnx.helper.make_tensor_value_info(last[0].output[0],
                                                                onnx.TensorProto.FLOAT, None))
    return body, tail


def _attach_tail(path: Path, original: onnx.ModelProto, tail: list[onnx.NodeProto]) -> None:
    model = onnx.load(str(path))
    have = {i.name for i in model.graph.initializer}
    used = {x for n in tail for x in n.input}
    model.graph.initializer.extend(i for i in original.graph.initializer
                                   if i.name in used and i.name not in have)
    model.graph.node.extend(tail)
    del model.graph.output[:]
    model.graph.output.extend(original.graph.output)
    onnx.save(model, str(path))


def default_exclude(target: str) -> tuple[str, ...]:
    """Nodes kept out of static INT8 per target (measured on lite0-minilm2, see
    benchmarks/results/export_speed.json)."""
    return CPU_DEFAULT_EXCLUDE if target == "cpu" else TENSORRT_DEFAULT_EXCLUDE


def weight_only_int8(path: str | Path, names: list[str]) -> list[str]:
    """Second pass (cpu target): the MatMuls ``names`` with constant float weights become ORT
    ``MatMulNBits`` (8-bit symmetric block-wise weights, int8 compute, float activations, no
    calibration). Returns the nodes converted."""
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer)
    except ImportError as e:  # it needs onnx-ir
        raise ConfigError(f"8-bit weight-only quantization needs onnxruntime's MatMulNBits "
                          f"quantizer ({e}): pip install onnx-ir, or set weight_only = [] in the "
                          f"profile's [quantization].") from None
    logging.getLogger(MatMulNBitsQuantizer.__module__).setLevel(logging.WARNING)  # per-node INFO
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    todo = [n.name for n in model.graph.node if n.name in set(names) and n.op_type == "MatMul"
            and n.input[1] in inits and len(inits[n.input[1]].dims) == 2]
    if not todo:
        return []
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in todo]
    cfg = DefaultWeightOnlyQuantConfig(block_size=WEIGHT_ONLY_BLOCK, is_symmetric=True, bits=8,
                                       accuracy_level=4, op_types_to_quantize=("MatMul",))
    q = MatMulNBitsQuantizer(model, nodes_to_include=todo, nodes_to_exclude=others,
                             algo_config=cfg, op_types_to_quantize=("MatMul",))
    q.process()
    q.model.save_model_to_file(str(path), False)
    return todo


def quantize_int8(src: str | Path, dst: str | Path, reader: CalibrationDataReader, target: str,
                  method: str = "minmax", excludes: tuple[str, ...] | None = None,
                  weight_only: tuple[str, ...] | None = None,
                  moving_average: bool | None = None, float_dtype: str | None = None,
                  keep_fp32: tuple[str, ...] = ()) -> dict:
    """Quantize ``src`` to ``dst``; return what was done (for the manifest and the report).

    ``excludes`` (roles/names/globs) stay out of static INT8; on the cpu target those of them
    also in ``weight_only`` get 8-bit weight-only quantization. ``None`` = the target's default.
    ``moving_average``: minmax ranges averaged over calibration batches (default: cpu yes).
    ``float_dtype`` (tensorrt target): ``fp16`` (default) quantizes the float16 graph (float16
    compute and Q/DQ scales; op types in ``keep_fp32`` stay float32), ``fp32`` the float32 one.
    """
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"unknown calibration method '{method}' (known: "
                          f"{', '.join(CALIBRATION_METHODS)}).")
    settings = quant_settings(target)
    excludes = default_exclude(target) if excludes is None else tuple(excludes)
    if weight_only is None:
        weight_only = WEIGHT_ONLY_DEFAULT if target == "cpu" else ()
    if target != "cpu":
        weight_only = ()  # MatMulNBits is an ONNX Runtime contrib op: TensorRT cannot run it
    if moving_average is None:
        moving_average = target == "cpu"
    if float_dtype is None:
        float_dtype = "fp16" if target == "tensorrt" else "fp32"
    if float_dtype not in FLOAT_DTYPES or (target == "cpu" and float_dtype != "fp32"):
        raise ConfigError(f"float type '{float_dtype}' for the {target} INT8 graph: use "
                          f"{'fp16 or fp32' if target == 'tensorrt' else 'fp32'}.")
    if moving_average and method == "minmax":
        settings["extra_options"]["CalibMovingAverage"] = True
    if method != "minmax":  # histogram calibrators keep every batch's activations: bound memory
        settings["extra_options"]["CalibMaxIntermediateOutputs"] = 4
    with tempfile.TemporaryDirectory(prefix="edgeclip-quant-") as tmp:
        pre = preprocess_for_quant(src, Path(tmp) / "pre.onnx")
        if float_dtype == "fp16":
            pre = tensorrt_fp16_base(pre, Path(tmp) / "pre.fp16.onnx", tuple(keep_fp32))
        graph = onnx.load(str(pre))
        nodes = resolve_excludes(graph, excludes)
        wo_nodes = sorted(set(resolve_excludes(graph, weight_only)) & set(nodes))
        if target == "cpu" and _is_transformer(graph):
            # quantizing LayerNorm/Softmax/GELU/residual Adds with uint8 activations costs a
            # MiniLM tower ~0.15 cosine; its MatMuls (and embedding tables) alone are enough
            settings["op_types_to_quantize"] = ["MatMul", "Gemm", "Gather"]
        tail = []
        if target == "cpu" and method != "minmax":  # histograms: calibrate the body only
            body, tail = _split_tail(graph)
            if tail:
                pre = Path(tmp) / "body.onnx"
                onnx.save(body, str(pre))
        quantize_static(str(pre), str(dst), reader, nodes_to_exclude=nodes,
                        calibrate_method=CALIBRATION_METHODS[method], **settings)
        if tail:  # the float L2-normalisation tail back on
            _attach_tail(Path(dst), graph, tail)
    wo_done = weight_only_int8(dst, wo_nodes) if wo_nodes else []
    onnx.checker.check_model(str(dst))
    info = {"target": target, "calibration": method, "excluded_nodes": nodes,
            "op_types": settings.get("op_types_to_quantize") or "all",
            "activations": "int8-symmetric" if target == "tensorrt" else "uint8",
            "weights": "int8-symmetric-per-channel", "format": "QDQ",
            "float": "float16" if float_dtype == "fp16" else "float32"}
    if float_dtype == "fp16":
        info["keep_fp32"] = ["l2_normalisation_tail", *keep_fp32]
    if target == "cpu":
        info.update({"moving_average": bool(moving_average and method == "minmax"),
                     "weight_only_nodes": wo_done,
                     "weight_only": f"MatMulNBits int8 block {WEIGHT_ONLY_BLOCK}, accuracy_level 4"})
    return info
