"""Verification catches a corrupted graph; the Q/DQ lint passes TensorRT graphs, rejects U8."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

pytest.importorskip("torch")
pytest.importorskip("skimage", reason="verification photos come from scikit-image")

from edgeclip.errors import ExportValidationError  # noqa: E402
from edgeclip.export.bundle import TinyDualEncoder, export_tiny_bundle  # noqa: E402
from edgeclip.export.data import builtin_samples  # noqa: E402
from edgeclip.export.qdq_lint import lint, main as lint_main  # noqa: E402
from edgeclip.export.verify import (VerifyData, raise_on_failure,  # noqa: E402
                                    verify_export)


@pytest.fixture(scope="module")
def trt_bundle(tmp_path_factory):
    model = TinyDualEncoder(seed=1)
    out = export_tiny_bundle(tmp_path_factory.mktemp("trt") / "b", precisions=("fp32", "int8"),
                             target="tensorrt", model=model)
    return out, model


def test_verification_catches_a_flipped_weight(trt_bundle, tmp_path):
    bundle, model = trt_bundle
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    proto = onnx.load(str(bad / "image.fp32.onnx"))
    conv_w = next(n for n in proto.graph.node if n.op_type == "Conv").input[1]
    init = next(i for i in proto.graph.initializer if i.name == conv_w)
    w = numpy_helper.to_array(init).copy()
    w.flat[0] = -w.flat[0] * 50.0  # one flipped, scaled weight
    init.CopyFrom(numpy_helper.from_array(w, conv_w))
    onnx.save(proto, str(bad / "image.fp32.onnx"))
    photos = builtin_samples()
    data = VerifyData(photos.images, photos.captions)
    files = {("image", "fp32"): "image.fp32.onnx", ("text", "fp32"): "text.fp32.onnx"}
    good = verify_export(model, bundle, files, data)
    assert good["passed"], good["failures"]
    report = verify_export(model, bad, files, data)
    assert not report["passed"]
    assert any(f.startswith("image fp32") for f in report["failures"])
    assert not any(f.startswith("text") for f in report["failures"])
    with pytest.raises(ExportValidationError, match="image fp32"):
        raise_on_failure(report, bad / "report.json")


def test_lint_passes_tensorrt_graphs(trt_bundle, capsys):
    bundle, _ = trt_bundle
    for tower in ("image", "text"):
        path = bundle / f"{tower}.int8.tensorrt.onnx"
        assert lint(path) == []
        assert lint_main([str(path)]) == 0
    proto = onnx.load(str(bundle / "image.int8.tensorrt.onnx"))
    assert any(n.op_type == "DequantizeLinear" for n in proto.graph.node)


def test_lint_rejects_u8_graph(tmp_path):
    out = export_tiny_bundle(tmp_path / "b", precisions=("int8",), target="cpu",
                             model=TinyDualEncoder(seed=2))
    findings = lint(out / "image.int8.cpu.onnx")
    assert any(f.rule == "int8-only" and "uint8" in f.message for f in findings)
    assert lint_main([str(out / "image.int8.cpu.onnx")]) == 1


def test_lint_rejects_nonzero_zero_point_and_wrong_axis(trt_bundle, tmp_path):
    bundle, _ = trt_bundle
    proto = onnx.load(str(bundle / "image.int8.tensorrt.onnx"))
    inits = {i.name: i for i in proto.graph.initializer}
    act_q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear"
                 and n.input[0] not in inits)
    inits[act_q.input[2]].CopyFrom(numpy_helper.from_array(np.array(3, dtype=np.int8),
                                                           act_q.input[2]))
    w_dq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear"
                and n.input[0] in inits and numpy_helper.to_array(inits[n.input[1]]).size > 1)
    for a in w_dq.attribute:
        if a.name == "axis":
            a.i = 1
    rules = {f.rule for f in lint(proto)}
    assert {"zero-point-zero", "per-channel-axis"} <= rules


def test_lint_rejects_a_float_graph(trt_bundle):
    bundle, _ = trt_bundle
    assert [f.rule for f in lint(bundle / "image.fp32.onnx")] == ["no-qdq"]
