"""cpu-target INT8: int8 embedding table, 8-bit weight-only MatMulNBits for the excluded
MatMuls, stem exclusion, histogram calibration on a twice-normalised tower, profile keys."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxslim")
pytest.importorskip("onnx_ir", reason="ORT's MatMulNBits quantizer needs onnx-ir")

from edgeclip.errors import ConfigError  # noqa: E402
from edgeclip.export.bundle import export_tiny_bundle  # noqa: E402
from edgeclip.export.calibration import image_reader  # noqa: E402
from edgeclip.export.data import builtin_samples  # noqa: E402
from edgeclip.export.int8 import quantize_int8, resolve_excludes  # noqa: E402
from edgeclip.export.profiles import load_profile  # noqa: E402
from edgeclip.manifest import load_bundle  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    pytest.importorskip("skimage", reason="calibration photos come from scikit-image")
    return export_tiny_bundle(tmp_path_factory.mktemp("i8") / "b", precisions=("fp32", "int8"))


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_text_tower_int8_table_and_weight_only_matmuls(bundle):
    manifest, _ = load_bundle(bundle)
    info = manifest.tower("text").find_model(precision="int8")[0].extra["quantization"]
    proto = onnx.load(str(bundle / "text.int8.cpu.onnx"))
    by_out = {o: n for n in proto.graph.node for o in n.output}
    emb = next(n for n in proto.graph.node if n.op_type == "Gather"
               and n.input[1] == "input_ids")
    assert by_out[emb.input[0]].op_type == "DequantizeLinear"  # the table is stored in 8 bits
    nbits = [n for n in proto.graph.node if n.op_type == "MatMulNBits"]
    assert info["weight_only_nodes"] and len(nbits) == len(info["weight_only_nodes"])
    assert all(next(a.i for a in n.attribute if a.name == "bits") == 8 for n in nbits)
    assert set(info["weight_only_nodes"]) <= set(info["excluded_nodes"])
    inits = {i.name: i for i in proto.graph.initializer}
    table = inits[by_out[emb.input[0]].input[0]]
    assert table.data_type in (onnx.TensorProto.UINT8, onnx.TensorProto.INT8)
    ids = np.zeros((1, 16), dtype=np.int64)
    ids[0, :4] = [1, 17, 42, 2]
    feed = {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64)}
    a, b = _session(bundle / "text.fp32.onnx").run(None, feed)[0], \
        _session(bundle / "text.int8.cpu.onnx").run(None, feed)[0]
    assert float(np.sum(a * b)) > 0.97


def test_high_res_leaves_a_net_without_down_sampling_alone(bundle):
    model = onnx.load(str(bundle / "image.fp32.onnx"))
    assert resolve_excludes(model, ["high_res"]) == []  # the tiny tower never down-samples


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_on_twice_normalised_tower(bundle, tmp_path, method):
    src = bundle / "image.fp32.onnx"
    assert [n.op_type for n in onnx.load(str(src)).graph.node].count("ReduceL2") == 2
    manifest, _ = load_bundle(bundle)
    photos = builtin_samples().images[:8]
    reader = image_reader(photos, manifest.tower("image").preprocess, batch_size=4)
    dst = tmp_path / "q.onnx"
    info = quantize_int8(src, dst, reader, "cpu", method)
    assert info["calibration"] == method
    proto = onnx.load(str(dst))
    assert proto.graph.node[-1].op_type == "Div" and proto.graph.output[0].name == "image_embeds"
    reader.rewind()
    feed = reader.get_next()
    a, b = _session(src).run(None, feed)[0], _session(dst).run(None, feed)[0]
    assert np.sum(a * b, axis=1).min() > 0.97


def test_profile_weight_only_and_moving_average_keys(tmp_path):
    good = tmp_path / "p.toml"
    good.write_text('target = "cpu"\n[calibration]\nmoving_average = false\n'
                    '[quantization]\nexclude = ["ffn_down"]\nweight_only = []\n')
    p = load_profile(good)
    assert p.calib_moving_average is False and p.weight_only == () and p.exclude == ("ffn_down",)
    bad = tmp_path / "bad.toml"
    bad.write_text('target = "cpu"\n[calibration]\nmoving_average = "yes"\n')
    with pytest.raises(ConfigError, match="moving_average"):
        load_profile(bad)
