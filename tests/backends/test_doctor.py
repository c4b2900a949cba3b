"""``edgeclip doctor``: on this CPU machine for real (TensorRT absent, CUDA absent, auto ->
ONNX Runtime CPU with the reasons), and its logic on a fake Jetson AGX Orin (fake tensorrt
module, fake CUDA device, device-tree/L4T files in a temporary root)."""

from __future__ import annotations

import enum
import json
import shutil
import sys
import types

import pytest
from click.testing import CliRunner

import fake_trt as F
from edgeclip import doctor as D
from edgeclip.backends import cuda as cu
from edgeclip.backends import reset_fallback_state
from edgeclip.backends import tensorrt as T
from edgeclip.manifest import ModelFile, load_bundle, write_manifest


@pytest.mark.skipif(T.tensorrt_unavailable_reason() is None, reason="TensorRT runs here")
def test_doctor_on_this_cpu_machine():
    r = CliRunner().invoke(D.doctor, [])
    assert r.exit_code == 0, r.output
    out = r.output
    assert "TensorRT: absent (tensorrt does not import" in out
    assert "CUDA: absent (" in out and "GPU: none visible" in out
    import onnxruntime as ort
    assert f"ONNX Runtime: {ort.__version__}, providers: " in out
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        for tower in ("image", "text"):
            assert f"  {tower}: auto -> onnxruntime-cpu (int8, {tower}.int8.cpu.onnx)" in out
        assert "because: this ONNX Runtime has no CUDAExecutionProvider" in out
        assert "because: no TensorRT engine in the bundle" in out
    facts = json.loads(CliRunner().invoke(D.doctor, ["--json"]).output)
    assert facts["tensorrt"]["present"] is False and facts["cuda"]["present"] is False
    assert facts["auto"]["towers"]["text"]["runs"].startswith("onnxruntime")


def test_doctor_registered_in_cli():
    from edgeclip.cli import LAZY_COMMANDS
    assert LAZY_COMMANDS["doctor"][0] == "edgeclip.doctor:doctor"


class _Err(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInsufficientDriver = 35


def test_cuda_python_versions_tuple_returns():
    rt = types.SimpleNamespace(cudaError_t=_Err,
                               cudaRuntimeGetVersion=lambda: (_Err.cudaSuccess, 12060),
                               cudaDriverGetVersion=lambda: (_Err.cudaSuccess, 0))
    assert cu.cuda_python_versions(rt) == {"runtime": "12.6", "driver": "none (no NVIDIA driver)"}
    rt.cudaRuntimeGetVersion = lambda: (_Err.cudaErrorInsufficientDriver, 0)
    rt.cudaDriverGetVersion = lambda: (_Err.cudaSuccess, 13000)
    assert cu.cuda_python_versions(rt) == {
        "runtime": "unavailable (cudaErrorInsufficientDriver)", "driver": "13.0"}


@pytest.fixture
def fake_agx_orin(monkeypatch, tmp_path, tiny_bundle):
    monkeypatch.setitem(sys.modules, "tensorrt", F.make_module("10.3.0"))
    monkeypatch.setattr(T, "_logger", None)
    T.reset_cache()
    fake = F.FakeCuda(gpu_name="Orin", cc=(8, 7), sms=16, memory_mib=62800)
    monkeypatch.setattr(cu, "get_cuda", lambda prefer=None: fake)
    root = tmp_path / "root"
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\0")
    (root / "etc/nv_tegra_release").write_text(
        "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64\n")
    b = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, b)
    manifest, _ = load_bundle(b)
    (b / "text.fp16.plan").write_bytes(F.ENGINE_MAGIC)
    manifest.tower("text").models.append(ModelFile(
        "text.fp16.plan", "tensorrt", "fp16", "tensorrt",
        extra={"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7",
               "multiprocessor_count": 16, "total_memory_mib": 62800}))
    write_manifest(manifest, b)
    reset_fallback_state()
    yield root, b
    T.reset_cache()
    reset_fallback_state()


def test_doctor_logic_on_a_fake_jetson(fake_agx_orin):
    root, b = fake_agx_orin
    facts = D.collect(str(b), root=root)
    assert facts["tensorrt"] == {"present": True, "version": "10.3.0",
                                 "location": "/fake/tensorrt/__init__.py"}
    assert facts["cuda"]["versions"] == {"runtime": "12.6", "driver": "12.6"}
    assert facts["cuda"]["gpu"] == {"name": "Orin", "compute_capability": "8.7", "devices": 1,
                                    "multiprocessors": 16, "memory_mib": 62800}
    assert facts["board"] == {"jetson": True, "model": "NVIDIA Jetson AGX Orin Developer Kit",
                              "l4t": "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: "
                                     "generic, EABI: aarch64"}
    assert "python3-libnvinfer" in facts["install"] and "cuda-python<13" in facts["install"]
    towers = facts["auto"]["towers"]
    assert towers["text"]["pick"] == "tensorrt" and towers["text"]["runs"] == "tensorrt"
    assert towers["image"]["pick"] == "onnxruntime-cpu"  # no image engine
    assert "no TensorRT engine in the bundle" in towers["image"]["why"][0]
    text = D.format_facts(facts)
    assert "board: NVIDIA Jetson AGX Orin Developer Kit; L4T: # R36" in text
    assert "TensorRT: 10.3.0" in text and "GPU: Orin (sm 8.7, 16 SMs, 62800 MiB" in text
    assert "  text: auto -> tensorrt (fp16, text.fp16.plan)" in text


def test_doctor_shows_a_stale_engine_falling_back(fake_agx_orin, monkeypatch):
    """The same bundle on an Orin Nano: auto picks TensorRT, the engine is stale, ONNX runs."""
    root, b = fake_agx_orin
    nano = F.FakeCuda(gpu_name="Orin", cc=(8, 7), sms=8, memory_mib=7620)
    monkeypatch.setattr(cu, "get_cuda", lambda prefer=None: nano)
    facts = D.collect(str(b), root=root)
    row = facts["auto"]["towers"]["text"]
    assert row["pick"] == "tensorrt" and row["runs"] == "onnxruntime-cpu"
    assert len(facts["auto"]["warnings"]) == 1
    assert f"edgeclip build-engine {b} --precision fp16" in facts["auto"]["warnings"][0]
    assert "really runs onnxruntime-cpu" in D.format_facts(facts)


@pytest.mark.parametrize("driver,words", [("12.2", "tensorrt-cu12"), ("13.0", "tensorrt-cu13"),
                                          (None, "no NVIDIA driver seen")])
def test_install_advice_per_cuda_major(driver, words):
    facts = {"board": {"jetson": False},
             "cuda": {"versions": {"driver": driver}} if driver else {}}
    assert words in D.install_advice(facts)
