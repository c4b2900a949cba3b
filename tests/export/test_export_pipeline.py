"""Export a tiny student at fp32/fp16/int8 and run every graph through edgeclip.Embedder."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxslim")

from edgeclip import Embedder  # noqa: E402
from edgeclip.export.bundle import TinyDualEncoder, export_tiny_bundle, tiny_model  # noqa: E402
from edgeclip.export.data import builtin_samples  # noqa: E402
from edgeclip.manifest import ONNX_METADATA_KEY, load_bundle  # noqa: E402

PRECISIONS = ("fp32", "fp16", "int8")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    pytest.importorskip("skimage", reason="calibration/verification photos come from scikit-image")
    return export_tiny_bundle(tmp_path_factory.mktemp("exp") / "b", precisions=PRECISIONS,
                              target="cpu")


@pytest.fixture(scope="module")
def photos():
    return builtin_samples()


def test_bundle_layout_and_manifest(bundle):
    manifest, _ = load_bundle(bundle)  # checks every sha256
    assert "report.json" in manifest.files
    report = json.loads((bundle / "report.json").read_text())
    assert report["passed"] and not report["failures"]
    for tower, (ins, outs) in {"image": (["pixel_values"], ["image_embeds"]),
                               "text": (["input_ids", "attention_mask"], ["text_embeds"])}.items():
        spec = manifest.tower(tower)
        assert sorted(m.precision for m in spec.models) == sorted(PRECISIONS)
        assert [m.target for m in spec.models if m.precision == "int8"] == ["cpu"]
        for m in spec.models:
            assert {"onnx", "onnxruntime", "torch"} <= set(m.tools)
            proto = onnx.load(str(bundle / m.path))
            assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
            assert [i.name for i in proto.graph.input] == ins
            assert [o.name for o in proto.graph.output] == outs
            for vi in list(proto.graph.input) + list(proto.graph.output):
                assert vi.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT,
                                                         onnx.TensorProto.INT64)
                assert vi.type.tensor_type.shape.dim[0].dim_param == "batch"
            props = {p.key: p.value for p in proto.metadata_props}
            assert props["edgeclip.tower"] == tower
            assert json.loads(props[ONNX_METADATA_KEY]) == manifest.mirror_dict()
            assert proto.graph.node[-1].op_type == "Div"  # ends with the L2 normalisation


@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_precision_runs_in_embedder(bundle, photos, precision):
    ref = Embedder(bundle, backend="onnxruntime", precision="fp32")
    emb = Embedder(bundle, backend="onnxruntime", precision=precision)
    assert emb.precision == precision
    img = emb.embed_images(photos.images, batch_size=4)
    txt = emb.embed_texts(photos.captions, batch_size=4)
    assert img.shape == (len(photos.images), emb.dim) and txt.shape[0] == len(photos.captions)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-3)
    cos_img = np.sum(img * ref.embed_images(photos.images), axis=1)
    cos_txt = np.sum(txt * ref.embed_texts(photos.captions), axis=1)
    floor = {"fp32": 0.99999, "fp16": 0.999, "int8": 0.97}[precision]
    assert cos_img.min() > floor and cos_txt.min() > floor


def test_fp16_keeps_sensitive_ops_in_float32(bundle):
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(bundle / "text.fp16.onnx")))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(proto.graph.value_info) + list(proto.graph.input)}
    inits = {i.name: i.data_type for i in proto.graph.initializer}
    types.update(inits)
    ops = {n.op_type for n in proto.graph.node}
    assert {"LayerNormalization", "Softmax", "ReduceL2"} <= ops
    for n in proto.graph.node:
        if n.op_type in ("LayerNormalization", "Softmax", "ReduceL2"):
            assert types[n.input[0]] == onnx.TensorProto.FLOAT, n.name
    matmul_weights = [inits[n.input[1]] for n in proto.graph.node
                      if n.op_type == "MatMul" and n.input[1] in inits]
    assert onnx.TensorProto.FLOAT16 in matmul_weights  # the body really is fp16


def test_int8_cpu_graph_is_u8s8_with_exclusions(bundle):
    proto = onnx.load(str(bundle / "image.int8.cpu.onnx"))
    inits = {i.name: i for i in proto.graph.initializer}
    zps = [inits[n.input[2]].data_type for n in proto.graph.node
           if n.op_type == "QuantizeLinear" and n.input[2] in inits]
    assert zps and set(zps) == {onnx.TensorProto.UINT8}
    manifest, _ = load_bundle(bundle)
    info = manifest.tower("image").find_model(precision="int8")[0].extra["quantization"]
    first_conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    assert first_conv.name in info["excluded_nodes"]
    # an excluded node reads a float weight, not a DequantizeLinear output
    assert first_conv.input[1] in inits and inits[first_conv.input[1]].data_type == 1


def test_tiny_fallback_module_exports(tmp_path, photos):
    pytest.importorskip("skimage")
    out = export_tiny_bundle(tmp_path / "b", precisions=("fp32",), model=TinyDualEncoder())
    emb = Embedder(out, backend="onnxruntime")
    assert emb.embed_texts(["a cat"]).shape == (1, 16)


def test_int8_without_calibration_data_uses_the_builtin_photos(tmp_path):
    pytest.importorskip("skimage")
    from edgeclip.export.pipeline import export_dual_encoder
    said = []
    report = export_dual_encoder(tiny_model(), tmp_path / "b", ("int8",), "cpu", log=said.append)
    assert said[0].startswith("[export] note: no --calib-data given; int8 calibrates on "
                              "scikit-image's 14 built-in photographs")
    assert report["passed"] and report["data"]["images"] == 14
    assert sorted(p.name for p in (tmp_path / "b").glob("*.onnx")) == ["image.int8.cpu.onnx",
                                                                      "text.int8.cpu.onnx"]


def test_failed_export_keeps_the_old_bundle_and_leaves_nothing(tmp_path):
    pytest.importorskip("skimage")
    from edgeclip.errors import ConfigError, ExportValidationError
    from edgeclip.export.pipeline import export_dual_encoder
    from edgeclip.export.verify import Thresholds
    out = tmp_path / "b"
    export_dual_encoder(tiny_model(), out, ("fp32",), "cpu", log=lambda *_: None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ExportValidationError, match="no bundle was written"):
        export_dual_encoder(tiny_model(), out, ("fp32",), "cpu", log=lambda *_: None,
                            thresholds=Thresholds(fp32_min_cosine=1.5))  # cannot pass
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.report.json"]
    with pytest.raises(AttributeError):  # any error mid-way: no new directory either
        export_dual_encoder(None, tmp_path / "new", ("fp32",), "cpu", log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.report.json"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not an edgeclip bundle"):
        export_dual_encoder(tiny_model(), tmp_path / "mine", ("fp32",), "cpu")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["thesis.txt"]
