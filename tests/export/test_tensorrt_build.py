"""``edgeclip build-engine``: everything up to the TensorRT build runs here (profile merging,
source-graph choice, optimisation-profile shapes, the manifest entry, the error when TensorRT is
absent). The build itself is marked ``gpu`` and skipped without TensorRT and a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeclip.backends import tensorrt as T
from edgeclip.errors import BackendUnavailableError, BundleError, ConfigError
from edgeclip.export import tensorrt_build as B
from edgeclip.manifest import ModelFile, TensorSpec, TowerSpec, load_bundle, write_manifest

PROFILE = """
name = "jetson-orin-nano"
target = "tensorrt"
precisions = ["int8", "fp16"]
opset = 17
[batch]
min = 2
opt = 4
max = 16
[tensorrt]
workspace_mib = 512
timing_cache = "orin.timing.cache"
"""


def test_settings_defaults():
    s = B.settings_from(None, None, None, None)
    assert (s.precision, s.min_batch, s.opt_batch, s.max_batch) == ("fp16", 1, 8, None)
    assert s.workspace_mib == 1024 and s.timing_cache == B.DEFAULT_TIMING_CACHE


def test_settings_from_profile_and_overrides(tmp_path):
    p = tmp_path / "orin.toml"
    p.write_text(PROFILE)
    s = B.settings_from(str(p), None, None, None)
    assert (s.precision, s.min_batch, s.opt_batch, s.max_batch) == ("int8", 2, 4, 16)
    assert s.workspace_mib == 512 and s.timing_cache == "orin.timing.cache"
    s = B.settings_from(str(p), "fp16", 256, "/tmp/x.cache", streams=2)
    assert (s.precision, s.workspace_mib, s.timing_cache, s.streams) == ("fp16", 256,
                                                                          "/tmp/x.cache", 2)


def test_settings_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot be built into an engine"):
        B.settings_from(None, "fp32", None, None)
    with pytest.raises(ConfigError, match="--workspace must be >= 1"):
        B.settings_from(None, None, 0, None)
    bad = tmp_path / "bad.toml"
    bad.write_text("[batch]\nmin = 8\nmax = 2\n")
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        B.settings_from(str(bad), None, None, None)
    with pytest.raises(ConfigError, match="no such profile"):
        B.settings_from(str(tmp_path / "missing.toml"), None, None, None)


def test_bare_profile_name_resolves_to_targets_dir():
    assert B.resolve_profile_path("jetson-orin-nano") == Path("export/targets/jetson-orin-nano.toml")
    assert B.resolve_profile_path("my/orin.toml") == Path("my/orin.toml")


def test_profile_shapes_for_every_batched_input():
    ids = TensorSpec("input_ids", "int64", ["batch", 32])
    assert B.profile_shapes(ids, 1, 8, 32) == ((1, 32), (8, 32), (32, 32))
    px = TensorSpec("pixel_values", "float32", ["batch", 3, 224, 224])
    assert B.profile_shapes(px, 2, 4, 16)[2] == (16, 3, 224, 224)
    fixed = TensorSpec("scale", "float32", [1])
    assert B.profile_shapes(fixed, 1, 8, 32) == ((1,), (1,), (1,))


def test_batch_range_defaults_to_tower_max():
    tower = TowerSpec([TensorSpec("x", "float32", ["batch", 4])],
                      [TensorSpec("y", "float32", ["batch", 4])], max_batch=4)
    assert B.batch_range(B.BuildSettings(), tower, "w") == (1, 4, 4)  # opt clipped to max
    with pytest.raises(ConfigError):
        B.batch_range(B.BuildSettings(min_batch=8), tower, "w")


def tower_with(*models):
    return TowerSpec([TensorSpec("x", "float32", ["batch", 4])],
                     [TensorSpec("y", "float32", ["batch", 4])], models=list(models))


def test_pick_source():
    fp16 = ModelFile("image.fp16.onnx", "onnx", "fp16", "any")
    q_cpu = ModelFile("image.int8.cpu.onnx", "onnx", "int8", "cpu")
    q_trt = ModelFile("image.int8.trt.onnx", "onnx", "int8", "tensorrt")
    assert B.pick_source(tower_with(fp16, q_cpu, q_trt), "image", "int8", Path("b")) is q_trt
    assert B.pick_source(tower_with(q_cpu, fp16), "image", "fp16", Path("b")) is fp16
    with pytest.raises(BundleError) as e:
        B.pick_source(tower_with(fp16, q_cpu), "image", "int8", Path("b"))
    assert "--target tensorrt" in str(e.value) and "unsigned activations" in str(e.value)
    with pytest.raises(BundleError, match="no fp16 ONNX graph"):
        B.pick_source(tower_with(q_trt), "image", "fp16", Path("b"))


def test_engine_entry_round_trips_through_manifest(fp16_bundle):
    b = fp16_bundle
    manifest, _ = load_bundle(b)
    facts = {"gpu_name": "Orin", "compute_capability": "8.7"}
    for n in (1, 2):  # a rebuild replaces the entry at the same path
        (b / "text.fp16.plan").write_bytes(b"engine bytes %d" % n)
        entry = B.engine_entry("text", "fp16", facts, 1, 4, 8, "10.3.0", "text.fp16.onnx")
        B.add_engine(manifest, "text", entry)
        write_manifest(manifest, b)
    again, _ = load_bundle(b)  # hashes checked: the new plan is in 'files'
    engines = again.tower("text").find_model(fmt="tensorrt")
    assert len(engines) == 1
    e = engines[0]
    assert (e.path, e.precision, e.target) == ("text.fp16.plan", "fp16", "tensorrt")
    assert e.extra["tensorrt_version"] == "10.3.0" and e.extra["compute_capability"] == "8.7"
    assert (e.extra["min_batch"], e.extra["opt_batch"], e.extra["max_batch"]) == (1, 4, 8)
    T.check_engine_compat(e, b / e.path, "10.3.0", "Orin", "8.7")  # what the runner checks


def test_cli_without_fp16_graph(tiny_bundle):
    r = CliRunner().invoke(B.build_engine, [str(tiny_bundle), "--precision", "fp16"])
    assert isinstance(r.exception, BundleError)
    assert "no fp16 ONNX graph" in str(r.exception) and "edgeclip export" in str(r.exception)


@pytest.mark.skipif(T.tensorrt_unavailable_reason() is None, reason="TensorRT is installed here")
def test_cli_without_tensorrt(fp16_bundle):
    r = CliRunner().invoke(B.build_engine, [str(fp16_bundle), "--tower", "image"])
    assert isinstance(r.exception, BackendUnavailableError)
    assert "tensorrt does not import" in str(r.exception)
    assert "edgeclip[tensorrt-cu12]" in str(r.exception)


def test_module_imports_without_tensorrt_or_torch():
    """build-engine runs on boards that have neither torch nor (yet) tensorrt."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['tensorrt'] = None; sys.modules['torch'] = None; "
            "import edgeclip.export.tensorrt_build as m; print(m.build_engine.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "build-engine"


@pytest.mark.gpu
def test_build_int8_and_fp16_engines(fp16_bundle):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (needs an NVIDIA GPU)")
    if T.tensorrt_unavailable_reason() is not None:
        pytest.skip(f"TensorRT cannot run here: {T.tensorrt_unavailable_reason()}")
    r = CliRunner().invoke(B.build_engine, [str(fp16_bundle), "--workspace", "256"])
    assert r.exit_code == 0, r.output
    manifest, _ = load_bundle(fp16_bundle)
    for t in ("image", "text"):
        (e,) = manifest.tower(t).find_model(fmt="tensorrt")
        assert e.extra["max_batch"] == manifest.tower(t).max_batch
    assert (fp16_bundle / B.DEFAULT_TIMING_CACHE).is_file()
