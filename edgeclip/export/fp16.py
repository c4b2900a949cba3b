"""FP32 ONNX -> FP16 ONNX with onnxconverter-common; float32 I/O and float32 sensitive ops.

Kept in float32: LayerNormalization and Softmax (fp16 overflow after attention), the reductions
and powers of hand-written norms, and the whole tail from the last ``ReduceL2`` to the output
(the L2 normalisation; its squared sum overflows fp16 for embeddings of norm > 256).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnxconverter_common import float16

SENSITIVE_OPS = ("LayerNormalization", "Softmax", "ReduceL2", "ReduceSumSquare", "ReduceMean",
                 "ReduceSum", "Pow", "Sqrt", "Reciprocal", "Exp", "Erf")


def normalisation_tail(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes from each ``ReduceL2`` (or ReduceSumSquare) forward to the outputs."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    starts = [n for n in graph.node if n.op_type in ("ReduceL2", "ReduceSumSquare")]
    seen: set[str] = set()
    todo = list(starts)
    while todo:
        node = todo.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        for out in node.output:
            todo.extend(consumers.get(out, []))
    return sorted(seen)


def _name_nodes(graph: onnx.GraphProto) -> None:
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"


def convert_fp16(src: str | Path, dst: str | Path, extra_block_ops: tuple[str, ...] = ()) -> Path:
    """Write an fp16 copy of ``src`` whose inputs/outputs and sensitive ops stay float32."""
    model = onnx.load(str(src))
    _name_nodes(model.graph)
    op_block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(SENSITIVE_OPS) | set(extra_block_ops))
    fp16 = float16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=op_block,
        node_block_list=normalisation_tail(model.graph))
    onnx.checker.check_model(fp16)
    onnx.save(fp16, str(dst))
    return Path(dst)
