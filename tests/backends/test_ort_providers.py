"""ONNX Runtime GPU providers are checked after the session exists.

ONNX Runtime lists ``CUDAExecutionProvider`` in ``get_available_providers()`` whenever the
onnxruntime-gpu package is installed, but a session asked for it silently runs on the CPU when the
CUDA/cuDNN libraries do not load; only ``session.get_providers()`` tells. The fakes reproduce
exactly that: real CPU sessions (a subclass of ``onnxruntime.InferenceSession``) behind a provider
list that claims CUDA; one kind falls back like ORT does, the other reports CUDA as started.
"""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest

import edgeclip
from edgeclip.backends import make_runner, reset_fallback_state
from edgeclip.errors import BackendUnavailableError
from edgeclip.manifest import load_bundle

REAL_SESSION = ort.InferenceSession


class FallsBackToCpu(REAL_SESSION):
    """What ORT does when the CUDA provider fails to load: a CPU session, the error logged."""

    def __init__(self, path, sess_options=None, providers=None, provider_options=None, **kw):
        super().__init__(path, sess_options=sess_options, providers=["CPUExecutionProvider"])
        self.requested = list(providers or [])


class CudaStarts(REAL_SESSION):
    """A session whose CUDA provider started (computes on the CPU here)."""

    def __init__(self, path, sess_options=None, providers=None, provider_options=None, **kw):
        super().__init__(path, sess_options=sess_options, providers=["CPUExecutionProvider"])
        self._claimed = [p for p in (providers or []) if p in ("CUDAExecutionProvider",
                                                               "CPUExecutionProvider")]

    def get_providers(self):
        return list(self._claimed)


@pytest.fixture
def gpu_ort(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    reset_fallback_state()
    yield monkeypatch
    reset_fallback_state()


def test_explicit_cuda_that_falls_back_raises(tiny_bundle, gpu_ort):
    gpu_ort.setattr(ort, "InferenceSession", FallsBackToCpu)
    with pytest.raises(BackendUnavailableError) as e:
        edgeclip.Embedder(tiny_bundle, backend="onnxruntime-cuda")
    msg = str(e.value)
    assert "did not start the CUDAExecutionProvider" in msg
    assert "CPUExecutionProvider" in msg and "backend='onnxruntime'" in msg


def test_auto_skips_a_provider_that_fails_with_one_warning(tiny_bundle, gpu_ort, caplog):
    gpu_ort.setattr(ort, "InferenceSession", FallsBackToCpu)
    with caplog.at_level(logging.WARNING, logger="edgeclip"):
        emb = edgeclip.Embedder(tiny_bundle, backend="auto")  # two towers
    assert emb.backends == {"image": "onnxruntime-cpu", "text": "onnxruntime-cpu"}
    lines = [r.getMessage() for r in caplog.records if r.name == "edgeclip"]
    assert len(lines) == 1, lines
    assert "CUDAExecutionProvider did not start" in lines[0] and "using the CPU" in lines[0]
    assert emb.embed_texts(["a cat"]).shape == (1, emb.dim)
    # the failure is remembered: later towers go straight to the CPU
    manifest, b = load_bundle(tiny_bundle)
    r = make_runner(manifest, b, "text", backend="auto")
    assert r.backend == "onnxruntime-cpu" and r.providers == ["CPUExecutionProvider"]


def test_runner_reports_the_provider_that_really_runs(tiny_bundle, gpu_ort):
    gpu_ort.setattr(ort, "InferenceSession", CudaStarts)
    manifest, b = load_bundle(tiny_bundle)
    r = make_runner(manifest, b, "text", backend="auto")
    assert r.backend == "onnxruntime-cuda"
    assert r.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    cpu = make_runner(manifest, b, "text", backend="onnxruntime")
    assert cpu.backend == "onnxruntime-cpu" and cpu.providers == ["CPUExecutionProvider"]
    ids = np.ones((2, 16), np.int64)
    feeds = {"input_ids": ids, "attention_mask": ids}
    np.testing.assert_allclose(r.run(feeds), cpu.run(feeds), atol=1e-6)


def test_int8_graph_for_tensorrt_runs_unfused_on_cpu(tiny_bundle, tmp_path):
    """A TensorRT-target INT8 graph on ORT's CPU runs with graph optimizations off."""
    import shutil

    from edgeclip.manifest import ModelFile, write_manifest
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    manifest, _ = load_bundle(b)
    # the options are what is checked here (the float16 Q/DQ numbers: tests/export)
    shutil.copyfile(b / "text.fp32.onnx", b / "text.int8.tensorrt.onnx")
    manifest.tower("text").models.append(ModelFile("text.int8.tensorrt.onnx", "onnx", "int8",
                                                   "tensorrt"))
    write_manifest(manifest, b)
    manifest, _ = load_bundle(b)
    r = make_runner(manifest, b, "text", backend="onnxruntime",
                    model_path=b / "text.int8.tensorrt.onnx")
    assert r._qdq_reference
    opts = r.session.get_session_options()
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
