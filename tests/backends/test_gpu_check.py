"""benchmarks/gpu_check.py: on this machine (no GPU) it runs nothing and says what it did not
check and why; with ONNX Runtime's CUDA provider present (fake sessions that report the CUDA
provider, computing on the CPU) it runs the provider stage end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import onnxruntime as ort
import pytest

from edgeclip.backends import reset_fallback_state

REPO = Path(__file__).resolve().parents[2]


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks/gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_nothing_gpu_here(capsys, tmp_path):
    g = load_gpu_check()
    have = g._probe()
    if any(v is None for v in have.values()):
        pytest.skip(f"a GPU stage can run here: {have}")
    out_json = tmp_path / "gpu_check.json"
    assert g.main(["--json", str(out_json)]) == 2
    out = capsys.readouterr().out
    assert "nothing GPU here: no check could run." in out
    lines = [ln for ln in out.splitlines() if ln.startswith("not checked: ")]
    assert [ln.split(":")[1].strip() for ln in lines] == [
        "TensorRT engines", "ONNX Runtime CUDA provider", "torch CUDA distillation throughput"]
    assert "tensorrt does not import" in lines[0] or "no TensorRT bindings" in lines[0]
    assert "has no CUDAExecutionProvider" in lines[1]
    assert "sees no CUDA device" in lines[2] or "torch is not installed" in lines[2]
    assert not out_json.exists()  # nothing measured, nothing recorded


def test_ort_cuda_stage_runs_and_reports(tiny_bundle, tmp_path, monkeypatch, capsys):
    from test_ort_providers import CudaStarts
    g = load_gpu_check()
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", CudaStarts)
    monkeypatch.setattr(g, "_probe", lambda: {"tensorrt": "tensorrt does not import (test)",
                                              "ort_cuda": None, "torch_cuda": None})
    reset_fallback_state()
    out_json = tmp_path / "gpu_check.json"
    rc = g.main([str(tiny_bundle), "--n", "4", "--batch-sizes", "1,2", "--duration", "0.05",
                 "--json", str(out_json)])
    out = capsys.readouterr().out
    assert rc == 0, out
    res = json.loads(out_json.read_text())
    assert res["checked"] == "ONNX Runtime CUDA provider"
    assert res["providers"] == {"image": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                                "text": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
    assert {(r["tower"], r["backend"], r["batch"]) for r in res["rows"]} >= {
        ("text", "onnxruntime-cuda", 1), ("image", "onnxruntime-cpu", 2)}
    assert all(r["cos_min"] > 0.999 for r in res["rows"])
    assert res["not_checked"] == [
        "TensorRT engines: tensorrt does not import (test)",
        "torch CUDA distillation throughput: not run: ONNX Runtime CUDA provider came first"]
    assert "checked: ONNX Runtime CUDA provider (PASS" in out
