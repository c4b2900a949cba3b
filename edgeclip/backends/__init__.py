"""Backend selection: which runner runs a tower of a bundle.

Backends: ``onnxruntime`` (= ``onnxruntime-cpu``), ``onnxruntime-cuda``, ``onnxruntime-tensorrt``,
``tensorrt``, and ``auto``: TensorRT when the bundle has an engine for the tower and TensorRT and
a GPU are here, else ONNX Runtime with CUDA when present, else ONNX Runtime on the CPU.

``auto`` never settles on something that fails: an engine built for another TensorRT version or
GPU (stale) falls back to the bundle's ONNX graphs, and an ONNX Runtime GPU provider that does
not start (ONNX Runtime silently runs such a session on the CPU; the runner checks
``session.get_providers()``) falls back to the next one, each with one warning line on the
``edgeclip`` logger naming the fix. An explicit backend raises instead.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from ..errors import BackendUnavailableError, BundleError
from ..manifest import ENGINE_SUFFIXES, Manifest, ModelFile
from .base import Runner

BACKENDS = ("auto", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt",
            "tensorrt")

log = logging.getLogger("edgeclip")
_warned: set[str] = set()
_failed_providers: dict[str, str] = {}  # ORT provider -> why it did not start (this process)
_state_lock = threading.Lock()


def warn_once(message: str) -> None:
    """One warning line per distinct message and process (``edgeclip`` logger)."""
    with _state_lock:
        if message in _warned:
            return
        _warned.add(message)
    log.warning("warning: %s", message)


def reset_fallback_state() -> None:
    """Forget failed providers and warnings already given (tests, or after installing drivers)."""
    with _state_lock:
        _warned.clear()
        _failed_providers.clear()

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
    return auto_choice(manifest, tower_name)[0]


def auto_choice(manifest: Manifest, tower_name: str) -> tuple[str, list[str]]:
    """What ``auto`` picks for a tower before trying it, and why (one line per step)."""
    tower = manifest.tower(tower_name)
    has_engine = any(m.format == "tensorrt" for m in tower.models)
    has_onnx = any(m.format == "onnx" for m in tower.models)
    why = []
    if has_engine:
        from .tensorrt import INSTALL_HINT, tensorrt_unavailable_reason
        reason = tensorrt_unavailable_reason()
        if reason is None:
            return "tensorrt", why + ["the bundle has a TensorRT engine and TensorRT + a GPU "
                                      "are here"]
        if not has_onnx:
            raise BackendUnavailableError(
                f"the {tower_name} tower has only TensorRT engines and TensorRT cannot run here "
                f"({reason}). Install: {INSTALL_HINT}; or use a bundle with ONNX graphs.")
        why.append(f"TensorRT engine present but TensorRT cannot run: {reason}")
    else:
        why.append("no TensorRT engine in the bundle (`edgeclip build-engine` makes one)")
    if not has_onnx:
        raise BundleError(f"the {tower_name} tower of bundle '{manifest.model_name}' has no model "
                          f"file. Re-export the bundle.")
    with _state_lock:
        failed = _failed_providers.get("CUDAExecutionProvider")
    if failed:
        why.append(f"ONNX Runtime's CUDA provider failed to start earlier: {failed}")
    elif _ort_has("CUDAExecutionProvider"):
        return "onnxruntime-cuda", why + ["ONNX Runtime has the CUDAExecutionProvider"]
    else:
        why.append("this ONNX Runtime has no CUDAExecutionProvider (CPU build; onnxruntime-gpu "
                   "has it)")
    return "onnxruntime-cpu", why + ["ONNX Runtime on the CPU"]


def make_runner(manifest: Manifest, bundle_dir: Path, tower_name: str, backend: str = "auto",
                precision: str | None = None, model_path: Path | None = None,
                threads: int | None = None, lazy: bool = False) -> Runner:
    """The runner of one tower. On the CPU an FP16-only float graph runs as FP32 (upcast at load,
    cached) for ``precision="fp32"``, and for the default precision when there is no INT8 graph:
    CPUs without FP16 arithmetic run FP32 faster. ``lazy``: see :class:`OnnxRuntimeRunner`."""
    from .checks import check_manifest_tower
    tower = manifest.tower(tower_name)
    check_manifest_tower(manifest, tower_name, bundle_dir)  # the graph is checked by the runner
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
        from .tensorrt import StaleEngineError, rebuild_command
        has_onnx = any(m.format == "onnx" for m in tower.models)
        try:
            return TensorRTRunner(tower, model, _model_file(bundle_dir, tower_name, tower, model),
                                  manifest=manifest)
        except (StaleEngineError, BackendUnavailableError) as e:
            if backend != "auto" or matches is not None or not has_onnx:
                raise
            concrete = auto_choice_onnx()
            if isinstance(e, StaleEngineError):
                warn_once(f"{bundle_dir / model.path}: stale TensorRT engine ({_short(e)}); "
                          f"running the ONNX graphs on {concrete} until you run "
                          f"`{rebuild_command(bundle_dir / model.path, model.precision)}`")
            else:  # TensorRT/CUDA failed to start (out of memory, driver)
                warn_once(f"{bundle_dir / model.path}: TensorRT did not start ({_short(e)}); "
                          f"running the ONNX graphs on {concrete}")
            matches = None
    if backend == "auto" and concrete != "onnxruntime-cpu":
        try:
            return _ort_runner(manifest, bundle_dir, tower_name, tower, concrete, precision,
                               matches, threads, lazy, where)
        except BackendUnavailableError as e:
            provider = _PROVIDER_OF.get(concrete, concrete)
            with _state_lock:
                _failed_providers[provider] = _short(e)
            warn_once(f"ONNX Runtime's {provider} did not start ({_short(e)}); using the CPU")
            concrete = "onnxruntime-cpu"
    return _ort_runner(manifest, bundle_dir, tower_name, tower, concrete, precision, matches,
                       threads, lazy, where)


_PROVIDER_OF = {"onnxruntime-cuda": "CUDAExecutionProvider",
                "onnxruntime-tensorrt": "TensorrtExecutionProvider"}


def _short(e: Exception) -> str:
    """The first sentence of an error, without the file name it starts with."""
    msg = str(e).split(". ")[0]
    head, _, rest = msg.partition(": ")
    if rest and ("/" in head or head.endswith((".plan", ".engine", ".onnx"))):
        return rest
    return msg


def auto_choice_onnx() -> str:
    """``auto`` among ONNX Runtime providers: CUDA when present and not failed, else CPU."""
    with _state_lock:
        failed = "CUDAExecutionProvider" in _failed_providers
    return "onnxruntime-cuda" if not failed and _ort_has("CUDAExecutionProvider") \
        else "onnxruntime-cpu"


def _ort_runner(manifest, bundle_dir, tower_name, tower, concrete, precision, matches, threads,
                lazy, where):
    from .onnxruntime import OnnxRuntimeRunner
    device = "cpu" if concrete == "onnxruntime-cpu" else "gpu"
    upcast = False
    if matches is not None and matches[0].format == "onnx":
        model = matches[0]
        upcast = device == "cpu" and precision == "fp32" and model.precision == "fp16"
    else:
        candidates = _onnx_candidates(tower, device)
        have = {m.precision for m in candidates}
        if (device == "cpu" and "fp16" in have and "fp32" not in have
                and (precision == "fp32" or (precision is None and "int8" not in have))):
            upcast, precision = True, "fp16"
        model = _pick(candidates, _PREFER[device], precision, where)
    provider_options = None
    if concrete == "onnxruntime-tensorrt":
        provider_options = [trt_ep_options(tower, model, bundle_dir), {}, {}]
    return OnnxRuntimeRunner(tower, model, _model_file(bundle_dir, tower_name, tower, model),
                             backend=concrete, threads=threads, provider_options=provider_options,
                             manifest=manifest, tower_name=tower_name, upcast=upcast, lazy=lazy)


def _model_file(bundle_dir: Path, tower_name: str, tower, model: ModelFile) -> Path:
    """The model's path, refused unless it resolves inside the bundle directory."""
    from ..manifest import bundle_file
    i = next((k for k, m in enumerate(tower.models) if m is model), 0)
    return bundle_file(bundle_dir, model.path, f"towers.{tower_name}.models[{i}].path")


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
