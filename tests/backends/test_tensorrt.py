"""TensorRT backend: checks that need no GPU (manifest/version/I-O checks, profile batch range,
batch splitting, version-specific flags), ``auto`` falling back to ONNX Runtime when TensorRT is
absent, and (marked ``gpu``) a real engine run where TensorRT and a GPU exist."""

from __future__ import annotations

import shutil
import types
from pathlib import Path

import numpy as np
import pytest

from edgeclip.backends import make_runner, resolve_backend, trt_ep_options
from edgeclip.backends import tensorrt as T
from edgeclip.errors import BackendUnavailableError, BundleError, InputError
from edgeclip.manifest import ModelFile, TensorSpec, TowerSpec, load_bundle, write_manifest

TEXT = TowerSpec(inputs=[TensorSpec("input_ids", "int64", ["batch", 16]),
                         TensorSpec("attention_mask", "int64", ["batch", 16])],
                 outputs=[TensorSpec("text_embeds", "float32", ["batch", 16])], max_batch=8)
PLAN = Path("/b/text.fp16.plan")


def text_io(ids_dtype="int32", out_name="text_embeds", seq=16, ranges=((1, 4, 32), (1, 4, 32))):
    io = []
    for name, (lo, opt, hi) in zip(("input_ids", "attention_mask"), ranges):
        io.append(T.IOTensor(name, True, ids_dtype, (-1, seq),
                             [((lo, seq), (opt, seq), (hi, seq))]))
    io.append(T.IOTensor(out_name, False, "float32", (-1, 16)))
    return io


def engine_model(**extra):
    base = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7"}
    base.update(extra)
    return ModelFile("text.fp16.plan", "tensorrt", "fp16", "tensorrt", extra=base)


# -- device/version checks -----------------------------------------------------------------
def test_compat_accepts_same_device():
    T.check_engine_compat(engine_model(), PLAN, "10.3.0", "Orin", "8.7")


@pytest.mark.parametrize("here,words", [
    (("8.6.2", "Orin", "8.7"), ["TensorRT 10.3.0", "8.6.2"]),
    (("10.3.0", "Orin", "7.2"), ["compute capability 8.7", "7.2"]),
    (("10.3.0", "NVIDIA H200", "8.7"), ["'Orin'", "'NVIDIA H200'"]),
])
def test_compat_mismatch_says_rebuild_here(here, words):
    with pytest.raises(BundleError) as e:
        T.check_engine_compat(engine_model(), PLAN, *here)
    msg = str(e.value)
    assert "edgeclip build-engine /b" in msg and str(PLAN) in msg
    for w in words:
        assert w in msg


def test_compat_skips_fields_the_manifest_lacks():
    m = ModelFile("text.fp16.plan", "tensorrt", "fp16", "tensorrt", extra={})
    T.check_engine_compat(m, PLAN, "11.4.1", "Thor", "11.0")


# -- engine I/O vs manifest ----------------------------------------------------------------
def test_io_accepts_int32_ids_from_trt86_and_int64():
    T.check_engine_io(text_io("int32"), TEXT, PLAN)
    T.check_engine_io(text_io("int64"), TEXT, PLAN)


@pytest.mark.parametrize("io,words", [
    (text_io(out_name="embeds"), ["no output 'text_embeds'", "embeds"]),
    (text_io(ids_dtype="float32"), ["'input_ids' is float32 in the engine, int64"]),
    (text_io(seq=32), ["shape [-1, 32]", "['batch', 16]"]),
    (text_io()[:1] + text_io()[2:], ["engine inputs ['input_ids']"]),
])
def test_io_mismatch(io, words):
    with pytest.raises(BundleError) as e:
        T.check_engine_io(io, TEXT, PLAN)
    for w in words:
        assert w in str(e.value)
    assert "edgeclip build-engine" in str(e.value)


# -- optimisation profile and batches --------------------------------------------------------
def test_profile_batch_range_intersects_inputs():
    io = text_io(ranges=((1, 8, 32), (2, 4, 16)))
    assert T.profile_batch_range(io, TEXT, PLAN) == (2, 8, 16)


def test_profile_batch_range_empty():
    io = text_io(ranges=((1, 2, 4), (8, 8, 16)))
    with pytest.raises(BundleError, match="no batch size that all inputs accept"):
        T.profile_batch_range(io, TEXT, PLAN)


def test_split_batches():
    assert T.split_batches(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert T.split_batches(4, 4) == [slice(0, 4)]
    assert T.split_batches(0, 4) == []
    with pytest.raises(ValueError):
        T.split_batches(3, 0)


def test_check_batch():
    assert T.check_batch(5, 1, 8, PLAN) == 0
    assert T.check_batch(1, 4, 8, PLAN) == 3  # padded up to the profile's min
    with pytest.raises(InputError) as e:
        T.check_batch(9, 1, 8, PLAN)
    assert "batch of 9" in str(e.value) and "at most 8" in str(e.value)
    with pytest.raises(InputError, match="empty batch"):
        T.check_batch(0, 1, 8, PLAN)


# -- version-specific calls (_compat) ----------------------------------------------------------
def fake_trt(version, strongly_typed=True):
    flags = types.SimpleNamespace(EXPLICIT_BATCH=0)
    if strongly_typed:
        flags.STRONGLY_TYPED = 1
    return types.SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=flags,
                                 BuilderFlag=types.SimpleNamespace(FP16="FP16", INT8="INT8"))


def test_network_flags_per_version():
    assert T.network_flags(fake_trt("8.6.2")) == 1 << 0  # EXPLICIT_BATCH
    assert T.network_flags(fake_trt("10.3.0")) == 1 << 1  # STRONGLY_TYPED
    assert T.network_flags(fake_trt("11.4.1", strongly_typed=False)) == 0  # typed by default


def test_builder_flags_only_on_86():
    assert T.builder_precision_flags(fake_trt("8.6.2"), "fp16") == ["FP16"]
    assert T.builder_precision_flags(fake_trt("8.6.2"), "int8") == ["FP16", "INT8"]
    assert T.builder_precision_flags(fake_trt("10.13.0"), "int8") == []
    assert T.builder_precision_flags(fake_trt("11.0.0"), "fp16") == []


def test_dtype_names_and_versions():
    assert T.dtype_name(types.SimpleNamespace(name="HALF")) == "float16"
    assert T.dtype_name("DataType.INT32") == "int32"
    assert T.trt_version_tuple("10.3.0.post1") == (10, 3, 0)
    assert T.trt_version_tuple("8.6.2") == (8, 6, 2)


# -- fallback selection with a real bundle (TensorRT is absent here) ----------------------------
def with_fake_engine(tiny_bundle, tmp_path, keep_onnx=True) -> Path:
    b = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, b)
    manifest, _ = load_bundle(b)
    (b / "image.fp16.plan").write_bytes(b"not a real engine")
    tower = manifest.tower("image")
    if not keep_onnx:
        tower.models = []
    tower.models.append(ModelFile("image.fp16.plan", "tensorrt", "fp16", "tensorrt",
                                  extra={"tensorrt_version": "10.3.0", "gpu_name": "Orin",
                                         "compute_capability": "8.7", "min_batch": 1,
                                         "opt_batch": 4, "max_batch": 8}))
    write_manifest(manifest, b)
    return b


needs_no_trt = pytest.mark.skipif(T.tensorrt_unavailable_reason() is None,
                                  reason="TensorRT and a GPU are here: the fallback cannot happen")


@needs_no_trt
def test_auto_falls_back_to_onnxruntime(tiny_bundle, tmp_path):
    import edgeclip
    b = with_fake_engine(tiny_bundle, tmp_path)
    manifest, _ = load_bundle(b)
    assert resolve_backend(manifest, "image", "auto") in ("onnxruntime-cpu", "onnxruntime-cuda")
    emb = edgeclip.Embedder(b, backend="auto")
    assert emb.backend.startswith("onnxruntime")
    x = emb.embed_texts(["a dog runs on the grass"])
    assert x.shape == (1, emb.dim) and np.isclose(np.linalg.norm(x), 1.0, atol=1e-4)


@needs_no_trt
def test_explicit_tensorrt_says_how_to_install(tiny_bundle, tmp_path):
    import edgeclip
    b = with_fake_engine(tiny_bundle, tmp_path)
    for kwargs in ({"backend": "tensorrt"}, {}):
        path = b if kwargs else b / "image.fp16.plan"
        with pytest.raises(BackendUnavailableError) as e:
            edgeclip.Embedder(path, towers=("image",), **kwargs)
        assert "tensorrt" in str(e.value) and "edgeclip[tensorrt-cu12]" in str(e.value)


@needs_no_trt
def test_image_engine_path_leaves_text_tower_on_onnx(tiny_bundle, tmp_path):
    b = with_fake_engine(tiny_bundle, tmp_path)
    manifest, _ = load_bundle(b)
    r = make_runner(manifest, b, "text", backend="auto", model_path=b / "image.fp16.plan")
    assert r.backend.startswith("onnxruntime")


@needs_no_trt
def test_engine_only_bundle_without_trt(tiny_bundle, tmp_path):
    b = with_fake_engine(tiny_bundle, tmp_path, keep_onnx=False)
    manifest, _ = load_bundle(b)
    with pytest.raises(BackendUnavailableError) as e:
        resolve_backend(manifest, "image", "auto")
    assert "has only TensorRT engines" in str(e.value) and "edgeclip[tensorrt-cu12]" in str(e.value)


def test_tensorrt_backend_rejects_onnx_file(tiny_bundle, tmp_path):
    b = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, b)
    manifest, _ = load_bundle(b)
    with pytest.raises(BackendUnavailableError, match="is an ONNX graph"):
        make_runner(manifest, b, "image", backend="tensorrt", model_path=b / "image.fp32.onnx")


def test_trt_ep_options(tiny_bundle, tmp_path):
    b = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, b)
    manifest, _ = load_bundle(b)
    tower = manifest.tower("text")
    opts = trt_ep_options(tower, ModelFile("text.int8.onnx", "onnx", "int8", "tensorrt"), b)
    assert opts["trt_engine_cache_path"] == str(b / "trt_ep_cache")
    assert (b / "trt_ep_cache").is_dir() and opts["trt_int8_enable"] == "True"
    assert opts["trt_profile_max_shapes"] == "input_ids:8x16,attention_mask:8x16"
    assert opts["trt_profile_min_shapes"] == "input_ids:1x16,attention_mask:1x16"


# -- the real thing: needs TensorRT and a GPU ---------------------------------------------------
@pytest.mark.gpu
def test_engine_matches_onnxruntime(fp16_bundle):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (needs an NVIDIA GPU)")
    if T.tensorrt_unavailable_reason() is not None:
        pytest.skip(f"TensorRT cannot run here: {T.tensorrt_unavailable_reason()}")
    import edgeclip
    from edgeclip.export.tensorrt_build import BuildSettings, build_engines
    b = fp16_bundle
    build_engines(b, BuildSettings(precision="fp16", opt_batch=4, streams=2))
    ref = edgeclip.Embedder(b, backend="onnxruntime", precision="fp32")
    trt = edgeclip.Embedder(b, backend="tensorrt")
    assert trt.backend == "tensorrt"
    texts = [f"caption number {i}" for i in range(19)]  # > max_batch: split by the Embedder
    cos = np.sum(ref.embed_texts(texts) * trt.embed_texts(texts), axis=1)
    assert cos.min() >= 0.999
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(4) as ex:  # thread safety: 2 profiles, 4 threads
        outs = list(ex.map(lambda _: trt.embed_texts(texts), range(8)))
    for o in outs:
        assert np.allclose(o, outs[0], atol=1e-3)
