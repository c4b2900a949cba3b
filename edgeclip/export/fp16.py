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


def _split_tail(model: onnx.ModelProto, tail: set[str]):
    """(body model whose outputs are the tail's inputs, tail nodes, tail-only initializers)."""
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {vi.name: vi for vi in list(inferred.value_info) + list(inferred.input)
             + list(inferred.output)}
    body_nodes = [n for n in graph.node if n.name not in tail]
    tail_nodes = [n for n in graph.node if n.name in tail]
    produced = {o for n in body_nodes for o in n.output} | {i.name for i in graph.input}
    body_inputs = {i for n in body_nodes for i in n.input}
    inits = {i.name: i for i in graph.initializer}
    boundary = []
    for n in tail_nodes:
        for name in n.input:
            if name in produced and name not in boundary:
                boundary.append(name)
    tail_inits = [inits[i] for n in tail_nodes for i in n.input
                  if i in inits and i not in body_inputs]
    body = onnx.ModelProto()
    body.CopyFrom(model)
    del body.graph.node[:]
    body.graph.node.extend(body_nodes)
    keep = [i for i in graph.initializer if i.name in body_inputs]
    del body.graph.initializer[:]
    body.graph.initializer.extend(keep)
    del body.graph.output[:]
    body.graph.output.extend(types[name] for name in boundary)
    del body.graph.value_info[:]  # stale types of tail tensors would be converted too
    return body, tail_nodes, {i.name: i for i in tail_inits}


def _unshare_initializers(graph: onnx.GraphProto, block_ops: set[str],
                          block_nodes: set[str]) -> None:
    """Give the float32-kept (blocked) consumers of an initializer that fp16 nodes read too their
    own copy: onnxconverter-common converts a shared initializer for one side only (it happens
    when identical tensors are merged, e.g. the zero biases of a Conv and a LayerNorm)."""
    inits = {i.name: i for i in graph.initializer}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            if name in inits:
                users.setdefault(name, []).append(node)
    for name, nodes in users.items():
        blocked = [n for n in nodes if n.op_type in block_ops or n.name in block_nodes]
        if not blocked or len(blocked) == len(nodes):
            continue
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[name])
        copy.name = f"{name}__fp32"
        graph.initializer.append(copy)
        for n in blocked:
            for i, x in enumerate(n.input):
                if x == name:
                    n.input[i] = copy.name


def _commute_transpose_matmul(graph: onnx.GraphProto) -> int:
    """Rewrite ``MatMul(Transpose(x, perm), W)`` with a 2-D ``W`` and ``perm`` keeping the last
    axis as ``Transpose(MatMul(x, W), perm)`` (the same numbers): ONNX Runtime 1.32's CPU session
    crashes (SIGSEGV at session creation, default optimisation level) on the float16 form, which
    sequence-first attention (open_clip's transformers) produces. Returns the rewrites made."""
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    rewrites = 0
    nodes = list(graph.node)
    for node in nodes:
        if node.op_type != "MatMul" or node.input[0] not in producer:
            continue
        tr = producer[node.input[0]]
        if tr.op_type != "Transpose":
            continue
        perm = next((list(a.ints) for a in tr.attribute if a.name == "perm"), None)
        w = inits.get(node.input[1])
        if not perm or perm[-1] != len(perm) - 1 or w is None or len(w.dims) != 2:
            continue
        mid = f"{node.output[0]}__pre_transpose"
        new_tr = onnx.helper.make_node("Transpose", [mid], [node.output[0]], perm=perm,
                                       name=f"{node.name}__transpose")
        node.input[0] = tr.input[0]
        node.output[0] = mid
        graph.node.insert(list(graph.node).index(node) + 1, new_tr)
        rewrites += 1
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    dead = [n for n in graph.node
            if n.op_type == "Transpose" and not any(o in used for o in n.output)]
    for n in dead:
        graph.node.remove(n)
    if rewrites:
        keep = [vi for vi in graph.value_info if vi.name not in producer
                or producer[vi.name].op_type != "MatMul"]
        del graph.value_info[:]
        graph.value_info.extend(keep)
    return rewrites


def convert_fp16(src: str | Path, dst: str | Path, extra_block_ops: tuple[str, ...] = (),
                 sensitive_ops: tuple[str, ...] = SENSITIVE_OPS) -> Path:
    """Write an fp16 copy of ``src`` whose inputs/outputs and ``sensitive_ops`` stay float32
    (``sensitive_ops=()``: everything but the L2-normalisation tail in float16, the base of the
    TensorRT INT8 graph).

    The L2-normalisation tail is cut off, the body converted with float32 I/O, and the tail
    appended again unchanged (onnxconverter-common cannot keep a blocked node that feeds a graph
    output when ``keep_io_types`` is set).
    """
    model = onnx.load(str(src))
    _name_nodes(model.graph)
    op_block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(sensitive_ops) | set(extra_block_ops))
    # Cast nodes are blocked by name (the converter leaves their `to` at float32; blocking the op
    # type instead loops forever over the Cast nodes it inserts itself).
    casts = [n.name for n in model.graph.node if n.op_type == "Cast"]
    _unshare_initializers(model.graph, set(op_block), set(casts))
    tail = set(normalisation_tail(model.graph))
    if not tail:
        out = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=op_block,
                                               node_block_list=casts)
    else:
        body, tail_nodes, tail_inits = _split_tail(model, tail)
        out = float16.convert_float_to_float16(body, keep_io_types=True, op_block_list=op_block,
                                               node_block_list=[c for c in casts if c not in tail])
        out.graph.node.extend(tail_nodes)
        out.graph.initializer.extend(tail_inits.values())
        del out.graph.output[:]
        out.graph.output.extend(model.graph.output)
        tail_tensors = {t for n in tail_nodes for t in list(n.input) + list(n.output)}
        keep = [vi for vi in out.graph.value_info if vi.name not in tail_tensors]
        del out.graph.value_info[:]
        out.graph.value_info.extend(keep)
    _commute_transpose_matmul(out.graph)
    onnx.checker.check_model(out, full_check=True)
    onnx.save(out, str(dst))
    return Path(dst)
