"""The TensorRT runner and builder logic on faithful fakes (tests/backends/fake_trt.py): engine
I/O through named tensors, close() while another thread runs, stale engines (other TensorRT,
other board) with ``auto`` falling back to the ONNX graphs, timing caches, and the
optimisation-profile return value. Nothing here needs a GPU."""

from __future__ import annotations

import logging
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import fake_trt as F
from edgeclip.backends import make_runner, reset_fallback_state
from edgeclip.backends import tensorrt as T
from edgeclip.errors import BackendUnavailableError, BundleError
from edgeclip.manifest import ModelFile, TensorSpec, TowerSpec, load_bundle, write_manifest

TEXT = TowerSpec(inputs=[TensorSpec("input_ids", "int64", ["batch", 16]),
                         TensorSpec("attention_mask", "int64", ["batch", 16])],
                 outputs=[TensorSpec("text_embeds", "float32", ["batch", 16])], max_batch=8)


@pytest.fixture
def fake_env(monkeypatch, tmp_path):
    """tensorrt = the fake module, CUDA = a fake AGX Orin (16 SMs, 62000 MiB)."""
    monkeypatch.setitem(sys.modules, "tensorrt", F.make_module("10.13.0.35"))
    monkeypatch.setattr(T, "_logger", None)
    cuda = F.FakeCuda()
    F.FAKE.engine = None
    plan = tmp_path / "text.fp16.plan"
    plan.write_bytes(F.ENGINE_MAGIC + b"\0" * 16)
    yield cuda, plan
    F.FAKE.engine = None
    reset_fallback_state()


def model(**extra):
    base = {"tensorrt_version": "10.13.0.35", "gpu_name": "Orin", "compute_capability": "8.7",
            "multiprocessor_count": 16, "total_memory_mib": 62000}
    base.update(extra)
    return ModelFile("text.fp16.plan", "tensorrt", "fp16", "tensorrt", extra=base)


def feeds(n, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(100, 30000, (n, 16)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[:, 10:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_runner_runs_named_tensors_and_pads_to_profile_min(fake_env):
    cuda, plan = fake_env
    F.FAKE.engine = F.FakeEngine(batch=(2, 4, 8))
    r = T.TensorRTRunner(TEXT, model(), plan, cuda=cuda)
    assert (r.min_batch, r.opt_batch, r.max_batch) == (2, 4, 8)
    for n in (1, 5, 8):  # 1 is padded up to the profile's min of 2
        f = feeds(n, seed=n)
        got = r.run(f)
        want = F.expected_embeds(f["input_ids"], f["attention_mask"], 16)
        assert got.shape == (n, 16) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-6)
    r.close()
    assert len(cuda.freed) == 3 and cuda._mem == {}  # every device buffer freed once
    with pytest.raises(BackendUnavailableError, match="closed"):
        r.run(feeds(1))


def test_close_does_not_free_buffers_under_a_running_call(fake_env):
    cuda, plan = fake_env
    gate = threading.Event()
    F.FAKE.engine = F.FakeEngine(gate=gate)
    r = T.TensorRTRunner(TEXT, model(), plan, cuda=cuda)
    f = feeds(3)
    out, errors = [], []

    def call():
        try:
            out.append(r.run(f))
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    t = threading.Thread(target=call)
    t.start()
    assert F.FAKE.engine.entered.wait(5)  # the call is inside execute_async_v3
    r.close()  # from another thread, while the call runs
    assert cuda.freed == []  # nothing freed under the running call
    gate.set()
    t.join(5)
    assert not errors, errors
    np.testing.assert_allclose(out[0], F.expected_embeds(f["input_ids"], f["attention_mask"], 16))
    assert len(cuda.freed) == 3 and cuda._mem == {}  # freed by the call's thread when done
    r.close()  # idempotent


def test_many_threads_two_profiles(fake_env):
    cuda, plan = fake_env
    F.FAKE.engine = F.FakeEngine(profiles=2)
    r = T.TensorRTRunner(TEXT, model(), plan, cuda=cuda)
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(6) as ex:
        outs = list(ex.map(lambda i: (i, r.run(feeds(4, seed=i))), range(24)))
    for i, o in outs:
        f = feeds(4, seed=i)
        np.testing.assert_allclose(o, F.expected_embeds(f["input_ids"], f["attention_mask"], 16))
    assert len(r._slots) <= 2
    r.close()
    assert cuda._mem == {}


@pytest.mark.parametrize("extra,words", [
    ({"tensorrt_version": "10.3.0"}, ["built with TensorRT 10.3.0", "10.13.0.35"]),
    ({"multiprocessor_count": 8, "total_memory_mib": 7620},  # an Orin Nano engine on AGX Orin
     ["8 multiprocessors", "has 16", "7620 MiB"]),
])
def test_stale_engine_is_refused_with_the_rebuild_command(fake_env, extra, words):
    cuda, plan = fake_env
    with pytest.raises(T.StaleEngineError) as e:
        T.TensorRTRunner(TEXT, model(**extra), plan, cuda=cuda)
    msg = str(e.value)
    assert isinstance(e.value, BundleError)
    assert f"edgeclip build-engine {plan.parent} --precision fp16" in msg
    for w in words:
        assert w in msg


def test_same_board_memory_within_tolerance_is_accepted(fake_env):
    cuda, plan = fake_env
    r = T.TensorRTRunner(TEXT, model(total_memory_mib=61000), plan, cuda=cuda)  # 1.6% apart
    r.close()


def test_undeserializable_engine_is_stale(fake_env):
    cuda, plan = fake_env
    plan.write_bytes(b"ptrt engine of another TensorRT version")
    with pytest.raises(T.StaleEngineError, match="cannot deserialize"):
        T.TensorRTRunner(TEXT, model(), plan, cuda=cuda)


def test_stub_only_tensorrt_is_not_tensorrt(monkeypatch, tmp_path):
    """`pip install --no-deps tensorrt-stubs` leaves a `tensorrt/` with only .pyi files: a
    namespace package that imports but has no bindings."""
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.pyi").write_text("class Builder: ...\n")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # undo removes what the import adds
    del sys.modules["tensorrt"]
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BackendUnavailableError, match="no TensorRT bindings"):
        T._import_tensorrt()


# -- auto falls back from a stale engine to the ONNX graphs --------------------------------
def bundle_with_engine(tiny_bundle, tmp_path, **extra) -> Path:
    b = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, b)
    manifest, _ = load_bundle(b)
    (b / "text.fp16.plan").write_bytes(F.ENGINE_MAGIC)
    info = {"tensorrt_version": "10.13.0.35", "gpu_name": "Orin", "compute_capability": "8.7",
            "multiprocessor_count": 16, "total_memory_mib": 62000}
    info.update(extra)
    manifest.tower("text").models.append(ModelFile("text.fp16.plan", "tensorrt", "fp16",
                                                   "tensorrt", extra=info))
    write_manifest(manifest, b)
    return b


@pytest.fixture
def trt_here(fake_env, monkeypatch):
    cuda, _ = fake_env
    monkeypatch.setattr(T, "tensorrt_unavailable_reason", lambda: None)
    import edgeclip.backends.cuda as cu
    monkeypatch.setattr(cu, "get_cuda", lambda prefer=None: cuda)
    reset_fallback_state()
    return cuda


def test_auto_uses_a_fitting_engine(tiny_bundle, tmp_path, trt_here):
    b = bundle_with_engine(tiny_bundle, tmp_path)
    manifest, _ = load_bundle(b)
    r = make_runner(manifest, b, "text", backend="auto")
    assert r.backend == "tensorrt"
    r.close()


@pytest.mark.parametrize("extra", [{"tensorrt_version": "10.3.0"},
                                   {"multiprocessor_count": 8, "total_memory_mib": 7620}])
def test_auto_falls_back_from_stale_engine_with_one_warning(tiny_bundle, tmp_path, trt_here,
                                                            caplog, extra):
    import edgeclip
    b = bundle_with_engine(tiny_bundle, tmp_path, **extra)
    with caplog.at_level(logging.WARNING, logger="edgeclip"):
        emb = edgeclip.Embedder(b, backend="auto")
        emb2 = edgeclip.Embedder(b, backend="auto")  # the same fallback again: no new line
    assert emb.backends["text"] == "onnxruntime-cpu"
    lines = [r.getMessage() for r in caplog.records if r.name == "edgeclip"]
    assert len(lines) == 1, lines
    assert "stale TensorRT engine" in lines[0] and "\n" not in lines[0]
    assert f"edgeclip build-engine {b} --precision fp16" in lines[0]
    x = emb.embed_texts(["a dog runs on the grass"])
    assert np.allclose(x, emb2.embed_texts(["a dog runs on the grass"]))
    manifest, _ = load_bundle(b)
    with pytest.raises(BundleError, match="does not fit this machine"):
        make_runner(manifest, b, "text", backend="tensorrt")


def test_engine_file_given_explicitly_still_raises(tiny_bundle, tmp_path, trt_here):
    b = bundle_with_engine(tiny_bundle, tmp_path, tensorrt_version="10.3.0")
    manifest, _ = load_bundle(b)
    with pytest.raises(T.StaleEngineError):
        make_runner(manifest, b, "text", backend="auto", model_path=b / "text.fp16.plan")


# -- builder: timing cache and optimisation profiles ---------------------------------------
def test_timing_cache_corrupt_or_foreign_starts_afresh(tmp_path):
    from edgeclip.export.tensorrt_build import _load_timing_cache, _save_timing_cache
    logs = []
    path = tmp_path / "timing.cache"
    path.write_bytes(b"\x00garbage from another TensorRT")
    cfg = F.IBuilderConfig()
    cache = _load_timing_cache(cfg, path, logs.append)
    assert isinstance(cache, F.ITimingCache) and cfg.cache is cache
    assert any("starting afresh" in m for m in logs)
    _save_timing_cache(cache, path, logs.append)
    assert path.read_bytes().startswith(F.CACHE_MAGIC)
    logs.clear()
    again = _load_timing_cache(F.IBuilderConfig(), path, logs.append)  # now a good cache
    assert again is not None and not logs


def test_timing_cache_unavailable_builds_without(tmp_path):
    from edgeclip.export.tensorrt_build import _load_timing_cache, _save_timing_cache
    logs = []
    cfg = F.IBuilderConfig(fresh_cache_none=True)
    assert _load_timing_cache(cfg, tmp_path / "none.cache", logs.append) is None
    assert any("without one" in m for m in logs)
    _save_timing_cache(None, tmp_path / "none.cache", logs.append)
    assert not (tmp_path / "none.cache").exists()


def test_rejected_optimisation_profile_is_an_error(fp16_bundle):
    """build_one stops at add_optimization_profile's -1 (before building anything)."""
    from edgeclip.export import tensorrt_build as B
    trt = _fake_builder_module("10.13.0.35", accept_profiles=False)
    manifest, b = load_bundle(fp16_bundle)
    src = next(m for m in manifest.tower("image").models if m.precision == "fp16")
    with pytest.raises(BundleError, match="rejected the optimisation profile"):
        B.build_one(trt, b, manifest.tower("image"), "image", src, B.BuildSettings(),
                    b / "t.cache", log=lambda *_: None)


def test_auto_falls_back_when_tensorrt_fails_to_start(tiny_bundle, tmp_path, trt_here, caplog,
                                                       monkeypatch):
    """cudaMalloc failing (out of memory) while the engine's buffers are made: auto uses ONNX."""
    from edgeclip.backends.cuda import CudaError

    def no_memory(nbytes):
        raise CudaError("CUDA call cudaMalloc failed: cudaErrorMemoryAllocation. Check ...")
    monkeypatch.setattr(trt_here, "malloc", no_memory)
    b = bundle_with_engine(tiny_bundle, tmp_path)
    manifest, _ = load_bundle(b)
    with caplog.at_level(logging.WARNING, logger="edgeclip"):
        r = make_runner(manifest, b, "text", backend="auto")
    assert r.backend == "onnxruntime-cpu"
    (line,) = [x.getMessage() for x in caplog.records if x.name == "edgeclip"]
    assert "TensorRT did not start" in line and "cudaErrorMemoryAllocation" in line
    with pytest.raises(CudaError):
        make_runner(manifest, b, "text", backend="tensorrt")


def test_fp16_qdq_graph_refused_by_tensorrt_86(fp16_bundle, monkeypatch):
    """TensorRT 8.6 cannot parse float16 Q/DQ (opset 19): a clear error naming the fix."""
    from edgeclip.export import tensorrt_build as B
    trt = _fake_builder_module("8.6.2")
    manifest, b = load_bundle(fp16_bundle)
    src = ModelFile("image.fp16.onnx", "onnx", "int8", "tensorrt",
                    extra={"quantization": {"float": "float16"}})
    with pytest.raises(BundleError, match=r"TensorRT >= 10 \(JetPack >= 6.1\)"):
        B.build_one(trt, b, manifest.tower("image"), "image", src, B.BuildSettings(),
                    b / "t.cache", log=lambda *_: None)


def _fake_builder_module(version, accept_profiles=True):
    class Net:
        num_inputs = 1

        def get_input(self, i):
            return type("ITensor", (), {"name": "pixel_values"})()

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            return True

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Net()

        def create_builder_config(self):
            cfg = F.IBuilderConfig(accept_profiles=accept_profiles)
            cfg.set_memory_pool_limit = lambda pool, size: None
            cfg.set_flag = lambda flag: None
            return cfg

        def create_optimization_profile(self):
            return type("IOptimizationProfile", (), {"set_shape": lambda *a: None})()

        def build_serialized_network(self, network, config):  # pragma: no cover
            raise AssertionError("not reached in these tests")

    trt = F.make_module(version)
    trt.Builder, trt.OnnxParser = Builder, Parser
    trt.NetworkDefinitionCreationFlag = F.enum.IntEnum("NetworkDefinitionCreationFlag",
                                                       {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
    trt.MemoryPoolType = F.enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.BuilderFlag = F.enum.IntEnum("BuilderFlag", {"FP16": 0, "INT8": 1})
    T._logger = None
    return trt
