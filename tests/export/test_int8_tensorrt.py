"""The ``--target tensorrt`` INT8 graph is quantized over the FP16 graph: its float ops and Q/DQ
scales are float16 (a strongly typed TensorRT network runs what the graph says), it passes the
Q/DQ lint, its embeddings through ONNX Runtime (reference Q/DQ semantics) stay within the int8
gates, and export and build-engine write the lint into report.json."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
pytest.importorskip("skimage", reason="calibration/verification photos come from scikit-image")

from edgeclip import Embedder  # noqa: E402
from edgeclip.errors import ConfigError  # noqa: E402
from edgeclip.export.bundle import TinyDualEncoder, export_tiny_bundle  # noqa: E402
from edgeclip.export.data import builtin_samples  # noqa: E402
from edgeclip.export.qdq_lint import float_summary, lint, lint_report  # noqa: E402
from edgeclip.manifest import load_bundle  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return export_tiny_bundle(tmp_path_factory.mktemp("trt16") / "b", precisions=("fp32", "int8"),
                              target="tensorrt", model=TinyDualEncoder(seed=3))


def test_float_ops_and_scales_are_float16(bundle):
    for tower in ("image", "text"):
        proto = onnx.load(str(bundle / f"{tower}.int8.tensorrt.onnx"))
        assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 19
        s = float_summary(proto)
        assert set(s["qdq_scales"]) == {"float16"} and s["qdq_scales"]["float16"] > 0
        assert s["float32_nodes"] == [], s["float32_nodes"]  # only the L2 tail is float32
        assert s["l2_tail_nodes"] > 0
        for op, types in s["ops"].items():
            assert set(types) == {"float16"}, (tower, op, types)
        if tower == "text":
            assert {"Softmax", "LayerNormalization", "Erf"} <= set(s["ops"])
        assert lint(proto, expect_float="float16") == []
        assert lint(proto) == []
        # the graph's inputs/outputs stay float32 (the manifest's types)
        assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    manifest, _ = load_bundle(bundle)
    info = manifest.tower("text").find_model(precision="int8")[0].extra["quantization"]
    assert info["float"] == "float16" and info["keep_fp32"] == ["l2_normalisation_tail"]


def test_embeddings_within_int8_gates(bundle):
    report = json.loads((bundle / "report.json").read_text())
    assert report["passed"], report["failures"]
    rows = {(r["tower"], r["precision"]): r for r in report["cosine"]}
    for tower in ("image", "text"):  # vs PyTorch, the export's own gate
        assert rows[(tower, "int8")]["cos_min"] >= report["thresholds"]["int8_min_cosine"]
    photos = builtin_samples()
    ref = Embedder(bundle, backend="onnxruntime", precision="fp32")
    for tower, fn, data in (("image", "embed_images", photos.images),
                            ("text", "embed_texts", photos.captions)):
        q = Embedder(bundle / f"{tower}.int8.tensorrt.onnx", backend="onnxruntime",
                     towers=(tower,))
        assert q.precisions[tower] == "int8"
        cos = np.sum(getattr(q, fn)(data) * getattr(ref, fn)(data), axis=1)
        assert cos.min() >= 0.95, (tower, cos.min())


def test_export_report_has_the_lint(bundle):
    report = json.loads((bundle / "report.json").read_text())
    lint_part = report["qdq_lint"]
    assert lint_part["passed"] is True and lint_part["findings"] == []
    g = lint_part["graphs"]["text.int8.tensorrt.onnx"]
    assert g["expect_float"] == "float16" and g["float"]["ops"]["Softmax"] == {"float16": 1}


def test_fp32_flavour_and_the_lint_telling_them_apart(tmp_path):
    """float = "fp32" (TensorRT 8.6) gives float32 scales; the float16 rules flag it."""
    from edgeclip.export.profiles import ExportProfile
    from edgeclip.export.pipeline import export_dual_encoder
    prof = ExportProfile(target="tensorrt", precisions=("int8",), float_dtype="fp32",
                         calib_count=8)
    out = tmp_path / "b32"
    export_dual_encoder(TinyDualEncoder(seed=3), out, ("int8",), "tensorrt", profile=prof,
                        calib_data=builtin_samples(), towers=("text",), log=lambda *_: None)
    proto = onnx.load(str(out / "text.int8.tensorrt.onnx"))
    assert set(float_summary(proto)["qdq_scales"]) == {"float32"}
    assert lint(proto) == []  # a valid Q/DQ graph for TensorRT 8.6
    rules = {f.rule for f in lint(proto, expect_float="float16")}
    assert rules == {"fp16-scale", "fp16-compute"}
    report = json.loads((out / "report.json").read_text())
    assert report["qdq_lint"]["graphs"]["text.int8.tensorrt.onnx"]["expect_float"] == "float32"


def test_keep_fp32_ops(bundle, tmp_path):
    from edgeclip.export.calibration import text_reader
    from edgeclip.export.int8 import quantize_int8
    photos = builtin_samples()
    model = TinyDualEncoder(seed=3)
    reader = text_reader(photos.captions, model.tokenizer_file, 16, batch_size=7)
    dst = tmp_path / "text.int8.tensorrt.onnx"
    info = quantize_int8(bundle / "text.fp32.onnx", dst, reader, "tensorrt",
                         keep_fp32=("Softmax",))
    s = float_summary(dst)
    assert s["ops"]["Softmax"] == {"float32": 1} and s["ops"]["LayerNormalization"] == {
        "float16": 1}
    assert info["keep_fp32"] == ["l2_normalisation_tail", "Softmax"]
    assert [f.rule for f in lint(dst, expect_float="float16")] == ["fp16-compute"]
    shutil.copyfile(dst, tmp_path / "g.onnx")
    rep = lint_report(tmp_path, {"text": "g.onnx"}, {"text": info})  # kept on purpose: clean
    assert rep["passed"], rep["findings"]


def test_profile_keys(tmp_path):
    from edgeclip.export.profiles import load_profile
    p = tmp_path / "p.toml"
    p.write_text('target = "tensorrt"\n[quantization]\nfloat = "fp32"\nkeep_fp32 = ["Softmax"]\n')
    prof = load_profile(p)
    assert prof.float_dtype == "fp32" and prof.keep_fp32 == ("Softmax",)
    p.write_text('[quantization]\nfloat = "bf16"\n')
    with pytest.raises(ConfigError, match="float must be"):
        load_profile(p)


def test_build_engine_records_the_lint(bundle, tmp_path):
    """What build-engine writes into report.json before/after building (the build itself
    needs TensorRT: marked gpu elsewhere)."""
    from edgeclip.export.tensorrt_build import (engine_entry, lint_sources, pick_source,
                                                record_build)
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    manifest, _ = load_bundle(b)
    sources = {t: pick_source(manifest.tower(t), t, "int8", b) for t in ("image", "text")}
    logs = []
    lint_res = lint_sources(b, sources, logs.append)
    assert lint_res["passed"] and any("Q/DQ lint: passed" in m for m in logs)
    facts = {"gpu_name": "Orin", "compute_capability": "8.7", "multiprocessor_count": 8,
             "total_memory_mib": 7620}
    entry = engine_entry("text", "int8", facts, 1, 8, 32, "10.3.0", sources["text"].path)
    assert entry.extra["multiprocessor_count"] == 8 and entry.extra["total_memory_mib"] == 7620
    record_build(b, manifest, "text", entry, lint_res)
    rep = json.loads((b / "report.json").read_text())
    item = rep["build_engine"]["text.int8.plan"]
    assert item["qdq_lint"]["passed"] is True and item["source"] == "text.int8.tensorrt.onnx"
    assert item["qdq_lint"]["float"]["qdq_scales"].keys() == {"float16"}
    assert rep["passed"]  # the export's report is kept
