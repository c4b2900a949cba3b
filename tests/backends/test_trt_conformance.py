"""Every TensorRT name edgeclip's code uses exists in the real API: TensorRT 10.x (the type stubs
of tensorrt-stubs 10.13, from the installed package when present, else the list derived from it)
and TensorRT 11.x (the names in the tensorrt-cu13-bindings 11.4 module), except the names of the
TensorRT 8.6 code path, which must be absent from 11 (so the version guard is needed).
How the lists were derived: tests/backends/trt_names.py."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

import fake_trt
import trt_names as N

HERE = Path(__file__).resolve().parent


def trt10_names() -> tuple[set[str], str]:
    try:
        dist = metadata.distribution("tensorrt-stubs")
    except metadata.PackageNotFoundError:
        return N.read_list(HERE / "trt10_names.txt"), "tests/backends/trt10_names.txt"
    root = Path(dist.locate_file(""))
    return N.stub_dir_names(root), f"tensorrt-stubs {dist.version} at {root}"


TRT11 = N.read_list(HERE / "trt11_names.txt")
USED = N.used_names()


def _module_checks(names: set[str]) -> list[str]:
    """``Logger.WARNING`` -> ["tensorrt.Logger", "Logger.WARNING"]; dunders other than
    __version__ are Python's, not TensorRT's."""
    out = []
    for u in sorted(names):
        parts = u.split(".")
        if parts[0].startswith("__") and parts[0] != "__version__":
            continue
        out.append(f"tensorrt.{parts[0]}")
        if len(parts) > 1:
            out.append(u)
    return out


def test_collector_sees_the_calls_that_matter():
    """Guards against a vacuous pass: the AST collection finds the core API."""
    for name in ("IExecutionContext.execute_async_v3", "IExecutionContext.set_input_shape",
                 "IExecutionContext.set_tensor_address", "ICudaEngine.get_tensor_profile_shape",
                 "Runtime.deserialize_cuda_engine", "Builder.build_serialized_network",
                 "IBuilderConfig.create_timing_cache", "IBuilderConfig.add_optimization_profile",
                 "OnnxParser.parse_from_file", "NetworkDefinitionCreationFlag.STRONGLY_TYPED"):
        assert name in USED["members"], name
    assert {"__version__", "Logger.WARNING", "MemoryPoolType.WORKSPACE"} <= USED["module"]


def test_every_name_exists_in_tensorrt10():
    names, source = trt10_names()
    assert len(names) > 2000, source
    missing = [n for n in _module_checks(USED["module"]) + sorted(USED["members"])
               if n not in names]
    assert not missing, f"not in TensorRT 10.x ({source}): {missing}"


def test_every_name_exists_in_tensorrt11_except_the_86_path():
    assert len(TRT11) > 2000
    missing = []
    for n in _module_checks(USED["module"]) + sorted(USED["members"]):
        if n.removeprefix("tensorrt.") in N.PRE10_ONLY:
            continue
        for part in n.removeprefix("tensorrt.").split("."):
            if part not in TRT11:
                missing.append(n)
    assert not missing, f"not in TensorRT 11.x: {missing}"
    # the 8.6-only names really are gone in 11 (they must stay behind trt_major(trt) < 10);
    # "INT8" cannot tell: DataType.INT8 still exists and the list is flat
    for n in N.PRE10_ONLY:
        assert n in USED["members"] | USED["module"], f"{n} is no longer used: drop it"
        if n != "BuilderFlag.INT8":
            assert n.split(".")[1] not in TRT11, n


def test_fakes_use_real_names():
    """The fakes' classes and members are TensorRT names (10.x)."""
    names, _ = trt10_names()
    checks = {"ICudaEngine": fake_trt.FakeEngine, "IExecutionContext": fake_trt.FakeContext,
              "Runtime": fake_trt.Runtime, "IBuilderConfig": fake_trt.IBuilderConfig,
              "ITimingCache": fake_trt.ITimingCache}
    for cls, fake in checks.items():
        public = [m for m in vars(fake) if not m.startswith("_")]
        for m in public:
            if m in ("engine", "shapes", "addresses", "profile", "cuda", "contexts", "gate",
                     "entered", "seq", "dim", "batch", "logger", "engine_factory",
                     "accept_profiles", "fresh_cache_none", "profiles", "cache", "data"):
                continue  # the fake's own bookkeeping
            assert f"{cls}.{m}" in names, f"{cls}.{m}"
    for enum_cls in (fake_trt.TensorIOMode, fake_trt.DataType):
        for member in enum_cls:
            assert f"{enum_cls.__name__}.{member.name}" in names
    assert "Logger.WARNING" in names


@pytest.mark.parametrize("line", ["tensorrt-stubs 10.13.0.35.1",
                                  "tensorrt-cu13-bindings 11.4.0.106"])
def test_lists_say_how_they_were_derived(line):
    text = (HERE / "trt10_names.txt").read_text() + (HERE / "trt11_names.txt").read_text()
    assert line in text
