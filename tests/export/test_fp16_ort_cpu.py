"""float16 graphs that ONNX Runtime's CPU session cannot open as the fp16 converter writes them:
``Transpose(perm keeps the last axis) -> MatMul(2-D weight)`` (sequence-first attention, as in
open_clip's transformers) makes ORT 1.32 crash (SIGSEGV) at session creation; convert_fp16
rewrites it as ``Transpose(MatMul(x, W))``, the same numbers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxconverter_common")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeclip.export.fp16 import convert_fp16  # noqa: E402

OPEN = ("import sys, onnxruntime as ort; o = ort.SessionOptions(); o.intra_op_num_threads = 1; "
        "ort.InferenceSession(sys.argv[1], o, providers=['CPUExecutionProvider']); print('ok')")


def _seq_first_matmul(path, seed=0):
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5, 24])
    w = numpy_helper.from_array(rng.standard_normal((8, 24)).astype(np.float32), "w")
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2], name="tr"),
             helper.make_node("MatMul", ["t", "w"], ["m"], name="mm"),
             helper.make_node("Transpose", ["m"], ["y"], perm=[1, 0, 2], name="back")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_fp16_seq_first_matmul_opens_and_matches_fp32(tmp_path):
    src = _seq_first_matmul(tmp_path / "f32.onnx")
    dst = convert_fp16(src, tmp_path / "f16.onnx")
    ops = [n.op_type for n in onnx.load(str(dst)).graph.node]
    assert "MatMul" in ops and ops.index("MatMul") < max(i for i, o in enumerate(ops)
                                                         if o == "Transpose")
    # a fresh process: the unrewritten graph takes the interpreter down with it
    run = subprocess.run([sys.executable, "-c", OPEN, str(dst)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", (run.returncode, run.stderr[-300:])
    feed = {"x": np.random.default_rng(1).standard_normal((3, 5, 8)).astype(np.float32)}
    a = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    b = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert b.shape == a.shape == (3, 5, 24)
    np.testing.assert_allclose(b, a, rtol=2e-2, atol=2e-2)
