"""Backend selection: which runner runs a tower of a bundle.

Backends: ``onnxruntime`` (= ``onnxruntime-cpu``), ``onnxruntime-cuda``, ``onnxruntime-tensorrt``,
``tensorrt``, and ``auto``: TensorRT when the bundle has an engine for the tower and TensorRT and
a GPU are here, else ONNX Runtime with CUDA when present, else ONNX Runtime on the CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BackendUnavailableError, BundleError
from ..manifest import ENGINE_SUFFIXES, Manifest, ModelFile
from .base import Runner

BACKENDS = ("auto", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt",
            "tensorrt")

# Precision preference when the caller names none.
_PREFER = {
    "cpu": ("int8", "fp32", "fp16"),
    "gpu": ("fp16", "fp32", "int8"),
}


def _pick(candidates: list[ModelFile], prefer: tuple[str, ...], precision: str | None,
          where: str) -> ModelFile:
    if precision is not None:
        chosen = [m for m in candidates if m.precision == precision]
        if not chosen:
            have = sorted({m.precision for m in candidates}) or ["none"]
            raise BundleError(f"{where}: no {precision} model for this backend (have: "
                              f"{', '.join(have)}). Export it with `edgeclip export --precision "
                              f"{precision}` or pick another precision.")
        return chosen[0]
    for p in prefer:
        for m in candidates:
            if m.precision == p:
                return m
    raise BundleError(f"{where}: no model file for this backend.")


def _onnx_candidates(tower, device: str) -> list[ModelFile]:
    onnx = [m for m in tower.models if m.format == "onnx"]
    if device == "cpu":
        # INT8 graphs made for TensorRT (signed activations) are slow on ORT's CPU kernels:
        # use them on the CPU only when nothing else is there.
        own = [m for m in onnx if m.target in ("any", "cpu")]
        return own or onnx
    own = [m for m in onnx if m.target in ("any", "tensorrt")]
    return own or onnx


def _ort_has(provider: str) -> bool:
    try:
        import onnxruntime as ort
        return provider in ort.get_available_providers()
    except ImportError:  # pragma: no cover
        return False


def resolve_backend(manifest: Manifest, tower_name: str, backend: str = "auto",
                    model_path: Path | None = None) -> str:
    """Turn ``auto`` (and aliases) into a concrete backend name for this tower."""
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend '{backend}' (known: {', '.join(BACKENDS)}).")
    if backend == "onnxruntime":
        backend = "onnxruntime-cpu"
    if model_path is not None and model_path.suffix in ENGINE_SUFFIXES:
        if backend not in ("auto", "tensorrt"):
            raise BackendUnavailableError(f"{model_path} is a TensorRT engine; it runs only with "
                                          f"backend='tensorrt' (or 'auto').")
        return "tensorrt"
    if backend != "auto":
        return backend
    tower = manifest.tower(tower_name)
    has_engine = any(m.format == "tensorrt" for m in tower.models)
    has_onnx = any(m.format == "onnx" for m in tower.models)
    if has_engine:
        from .tensorrt import tensorrt_unavailable_reason
        reason = tensorrt_unavailable_reason()
        if reason is None:
            return "tensorrt"
        if not has_onnx:
            raise BackendUnavailableError(
                f"the {tower_name} tower has only TensorRT engines and TensorRT cannot run here "
                f"({reason}). Install it with pip install 'edgeclip[tensorrt]' on a machine with an "
                f"NVIDIA GPU, or use a bundle with ONNX graphs.")
    if not has_onnx:
        raise BundleError(f"the {tower_name} tower of bundle '{manifest.model_name}' has no model "
                          f"file. Re-export the bundle.")
    if _ort_has("CUDAExecutionProvider"):
        return "onnxruntime-cuda"
    return "onnxruntime-cpu"


def make_runner(manifest: Manifest, bundle_dir: Path, tower_name: str, backend: str = "auto",
                precision: str | None = None, model_path: Path | None = None,
                threads: int | None = None) -> Runner:
    tower = manifest.tower(tower_name)
    where = f"{bundle_dir}: {tower_name} tower"
    matches = None
    if model_path is not None:
        rel = model_path.name
        matches = [m for m in tower.models if Path(m.path).name == rel] or None
        if matches is None:
            # the file belongs to the other tower: this one gets the usual choice (an image
            # engine must not force TensorRT on a text tower that has no engine)
            model_path = None
    concrete = resolve_backend(manifest, tower_name, backend, model_path)
    if concrete == "tensorrt":
        from .tensorrt import TensorRTRunner
        engines = [m for m in tower.models if m.format == "tensorrt"]
        if matches is not None:
            model = matches[0]
            if model.format != "tensorrt":
                raise BackendUnavailableError(
                    f"{bundle_dir / model.path} is an ONNX graph; backend='tensorrt' runs .plan "
                    f"engines. Use backend='onnxruntime-tensorrt' for ONNX graphs on TensorRT, or "
                    f"build an engine with `edgeclip build-engine {bundle_dir}`.")
        else:
            if not engines:
                raise BundleError(f"{where}: no TensorRT engine. Build one on this device with "
                                  f"`edgeclip build-engine {bundle_dir}`.")
            model = _pick(engines, ("fp16", "int8", "fp32"), precision, where)
        return TensorRTRunner(tower, model, bundle_dir / model.path, manifest=manifest)
    from .onnxruntime import OnnxRuntimeRunner
    device = "cpu" if concrete == "onnxruntime-cpu" else "gpu"
    if matches is not None and matches[0].format == "onnx":
        model = matches[0]
    else:
        model = _pick(_onnx_candidates(tower, device), _PREFER[device], precision, where)
    provider_options = None
    if concrete == "onnxruntime-tensorrt":
        provider_options = [trt_ep_options(tower, model, bundle_dir), {}, {}]
    return OnnxRuntimeRunner(tower, model, bundle_dir / model.path, backend=concrete,
                             threads=threads, provider_options=provider_options)


def trt_ep_options(tower, model: ModelFile, bundle_dir: Path) -> dict:
    """ONNX Runtime TensorRT EP options: engine and timing caches inside the bundle (when it is
    writable), an optimisation profile for batch 1..max_batch (else the EP rebuilds its engine for
    every new batch size), and reduced precision where the graph has it (fp16 casts, Q/DQ)."""
    opts = {"trt_fp16_enable": "True" if model.precision in ("fp16", "int8") else "False",
            "trt_int8_enable": "True" if model.precision == "int8" else "False"}
    cache = bundle_dir / "trt_ep_cache"
    try:
        cache.mkdir(exist_ok=True)
        writable = os.access(cache, os.W_OK)
    except OSError:
        writable = False
    if writable:
        opts.update({"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
                     "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache)})
    shapes = {}
    for label, b in (("min", 1), ("opt", max(1, min(8, tower.max_batch))), ("max", tower.max_batch)):
        parts = []
        for t in tower.inputs:
            dims = [b if d == "batch" else int(d) for d in t.shape]
            parts.append(f"{t.name}:{'x'.join(str(d) for d in dims)}")
        shapes[f"trt_profile_{label}_shapes"] = ",".join(parts)
    opts.update(shapes)
    return opts
