"""TensorRT runner: run a tower's ``.plan`` engine with the named-tensor API.

Supports TensorRT 8.6 (JetPack 6.0), 10.x (JetPack 6.1+ and 7) and 11.x; the calls that differ
between them live in the ``_compat`` section below. CUDA memory and streams come from
:mod:`edgeclip.backends.cuda` (cuda-python, else pycuda).

Concurrency: a TensorRT execution context is not thread-safe and, for a dynamic-shape engine, one
optimisation profile serves one context at a time. The runner keeps one *slot* (context, stream,
device buffers, pinned host buffers, all sized for the profile's max shape) per optimisation
profile of the engine; a call takes a free slot and waits when all are busy. An engine built with
``edgeclip build-engine --streams N`` has N identical profiles and so runs N calls at once.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, BundleError, InputError
from ..manifest import Manifest, ModelFile, TowerSpec
from .base import Runner

INSTALL_HINT = ("pip install 'edgeclip[tensorrt-cu12]' (CUDA 12 driver) or "
                "'edgeclip[tensorrt-cu13]' (CUDA 13) on a machine with an NVIDIA GPU; on Jetson "
                "use JetPack's TensorRT (apt python3-libnvinfer) in a venv made with "
                "--system-site-packages, plus pip install 'cuda-python<13' (JetPack 6)")

_reason_lock = threading.Lock()
_reason: list = []  # [] = not computed yet, [value] once computed


def _import_tensorrt():
    try:
        import tensorrt as trt
    except Exception as e:  # ImportError, or a broken install failing to load libnvinfer
        raise BackendUnavailableError(f"tensorrt does not import ({type(e).__name__}: {e}). "
                                      f"Install: {INSTALL_HINT}.") from None
    if not hasattr(trt, "Builder") or not hasattr(trt, "__version__"):
        # e.g. the type stubs alone (package tensorrt-stubs installed with --no-deps): a
        # namespace package without the bindings
        where = ", ".join(getattr(trt, "__path__", []) or [getattr(trt, "__file__", "?")])
        raise BackendUnavailableError(f"tensorrt imports from {where} but has no TensorRT "
                                      f"bindings (type stubs only?). Install: {INSTALL_HINT}.")
    return trt


def tensorrt_unavailable_reason() -> str | None:
    """None when tensorrt imports and a CUDA device is visible, else a short reason (cached)."""
    with _reason_lock:
        if not _reason:
            _reason.append(_compute_reason())
        return _reason[0]


def _compute_reason() -> str | None:
    try:
        _import_tensorrt()
    except BackendUnavailableError as e:
        return str(e)
    from .cuda import get_cuda
    try:
        get_cuda()
    except BackendUnavailableError as e:
        return str(e)
    return None


def reset_cache() -> None:
    """Forget the cached availability (tests, or after installing TensorRT)."""
    with _reason_lock:
        _reason.clear()


# == _compat: every call that differs between TensorRT 8.6, 10.x and 11.x =================
_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32",
               "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "BF16": "bfloat16",
               "FP8": "float8", "INT4": "int4", "FP4": "float4"}
# manifest dtype -> engine dtypes accepted for it. TensorRT 8.6 has no INT64 I/O: its ONNX parser
# turns int64 graph inputs (token ids, attention masks) into INT32; the runner casts the feeds.
_INPUT_OK = {"int64": ("int64", "int32")}
_OUTPUT_OK = {"float32": ("float32", "float16")}


def trt_version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for p in str(version).split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def trt_major(trt) -> int:
    return trt_version_tuple(trt.__version__)[0]


def network_flags(trt) -> int:
    """``create_network`` flags: 8.x explicit batch; 10.x strongly typed; 11.x default (typed)."""
    flag_enum = trt.NetworkDefinitionCreationFlag
    if trt_major(trt) < 10:
        return 1 << int(flag_enum.EXPLICIT_BATCH)
    typed = getattr(flag_enum, "STRONGLY_TYPED", None)
    return (1 << int(typed)) if typed is not None else 0


def builder_precision_flags(trt, precision: str) -> list:
    """Builder flags for a precision. TensorRT >= 10 builds strongly typed networks (precision
    comes from the graph's casts and Q/DQ nodes): none. 8.6 needs FP16/INT8 to allow the same
    graphs' reduced-precision kernels (no calibrator: the Q/DQ scales are in the graph)."""
    if trt_major(trt) >= 10:
        return []
    flags = []
    if precision in ("fp16", "int8"):
        flags.append(trt.BuilderFlag.FP16)
    if precision == "int8":
        flags.append(trt.BuilderFlag.INT8)
    return flags


def dtype_name(trt_dtype) -> str:
    name = getattr(trt_dtype, "name", None) or str(trt_dtype).rsplit(".", 1)[-1]
    return _TRT_DTYPES.get(name, name.lower())


def deserialize(runtime, data: bytes):
    """The engine, or None (8.6 returns None and logs; newer versions may raise)."""
    try:
        return runtime.deserialize_cuda_engine(data)
    except Exception:
        return None


def select_profile(context, index: int, stream_handle: int) -> None:
    if index:
        ok = context.set_optimization_profile_async(index, stream_handle)
        if ok is False:
            raise BackendUnavailableError(f"TensorRT refused optimisation profile {index}.")


def execute(context, stream_handle: int) -> bool:
    return bool(context.execute_async_v3(stream_handle))


def profile_shapes(engine, name: str, index: int) -> tuple[tuple, tuple, tuple]:
    lo, opt, hi = engine.get_tensor_profile_shape(name, index)
    return tuple(lo), tuple(opt), tuple(hi)


def num_profiles(engine) -> int:
    return max(1, int(getattr(engine, "num_optimization_profiles", 1)))


# == checks that need no GPU ================================================================
@dataclass
class IOTensor:
    name: str
    is_input: bool
    dtype: str
    shape: tuple  # -1 for dynamic axes
    profiles: list = field(default_factory=list)  # inputs: [(min, opt, max), ...] per profile


def engine_io(trt, engine) -> list[IOTensor]:
    out = []
    n_prof = num_profiles(engine)
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        t = IOTensor(name, is_input, dtype_name(engine.get_tensor_dtype(name)),
                     tuple(engine.get_tensor_shape(name)))
        if is_input:
            t.profiles = [profile_shapes(engine, name, k) for k in range(n_prof)]
        out.append(t)
    return out


class StaleEngineError(BundleError):
    """The engine was built for another TensorRT version or GPU (or cannot be deserialized here):
    ``auto`` falls back to the bundle's ONNX graphs, ``backend="tensorrt"`` raises it."""


def rebuild_command(path: Path, precision: str | None = None) -> str:
    return f"edgeclip build-engine {path.parent}" + (f" --precision {precision}"
                                                     if precision else "")


def rebuild_hint(path: Path, precision: str | None = None) -> str:
    return (f"TensorRT engines run only on the GPU model and TensorRT version they were built "
            f"with: run `{rebuild_command(path, precision)}` on this device.")


#: total memory may differ a little between boots/JetPack releases of one board; another board
#: model differs by far more (Orin Nano 8 GB vs AGX Orin 32/64 GB)
MEMORY_TOLERANCE = 0.10


def check_engine_compat(model: ModelFile, path: Path, tensorrt_version: str, gpu_name: str,
                        compute_capability: str, multiprocessor_count: int | None = None,
                        total_memory_mib: int | None = None) -> None:
    """StaleEngineError (a BundleError) when the manifest records another TensorRT version, GPU
    name, compute capability, multiprocessor count or total memory than this machine's (every
    Jetson Orin reports the name "Orin": the SM count and memory tell an AGX Orin from an Orin
    Nano). Fields the manifest or the caller lacks are not checked."""
    rec = model.extra or {}
    problems = []
    want = rec.get("tensorrt_version")
    if want and str(want) != str(tensorrt_version):
        problems.append(f"built with TensorRT {want}, this machine has {tensorrt_version}")
    want = rec.get("compute_capability")
    if want and str(want) != str(compute_capability):
        problems.append(f"built for compute capability {want}, this GPU is {compute_capability}")
    want = rec.get("gpu_name")
    if want and str(want).strip() != str(gpu_name).strip():
        problems.append(f"built on '{want}', this GPU is '{gpu_name}'")
    want = rec.get("multiprocessor_count")
    if want and multiprocessor_count and int(want) != int(multiprocessor_count):
        problems.append(f"built on a GPU with {want} multiprocessors, this one has "
                        f"{multiprocessor_count}")
    want = rec.get("total_memory_mib")
    if want and total_memory_mib and abs(int(want) - int(total_memory_mib)) > \
            MEMORY_TOLERANCE * max(int(want), int(total_memory_mib)):
        problems.append(f"built on a device with {want} MiB of GPU memory, this one has "
                        f"{total_memory_mib} MiB")
    if problems:
        raise StaleEngineError(f"{path}: this engine does not fit this machine "
                               f"({'; '.join(problems)}). {rebuild_hint(path, model.precision)}")


def check_engine_io(io: list[IOTensor], tower: TowerSpec, path: Path) -> None:
    """BundleError when the engine's I/O names, dtypes or fixed dims disagree with the manifest."""
    fix = f"The engine does not match manifest.json: {rebuild_hint(path)}"
    ins = {t.name: t for t in io if t.is_input}
    outs = {t.name: t for t in io if not t.is_input}
    want_in = {s.name: s for s in tower.inputs}
    if set(ins) != set(want_in):
        raise BundleError(f"{path}: engine inputs {sorted(ins)} != manifest inputs "
                          f"{sorted(want_in)}. {fix}")
    for spec in tower.outputs:
        if spec.name not in outs:
            raise BundleError(f"{path}: engine has no output '{spec.name}' named in the manifest "
                              f"(engine outputs: {sorted(outs)}). {fix}")
    pairs = [(want_in[n], ins[n], _INPUT_OK) for n in want_in]
    pairs += [(s, outs[s.name], _OUTPUT_OK) for s in tower.outputs]
    for spec, t, ok in pairs:
        if t.dtype not in ok.get(spec.dtype, (spec.dtype,)):
            raise BundleError(f"{path}: tensor '{spec.name}' is {t.dtype} in the engine, "
                              f"{spec.dtype} in the manifest. {fix}")
        if len(t.shape) != len(spec.shape):
            raise BundleError(f"{path}: tensor '{spec.name}' has rank {len(t.shape)} in the engine, "
                              f"{len(spec.shape)} in the manifest. {fix}")
        for e, m in zip(t.shape, spec.shape):
            if isinstance(m, int) and e not in (-1, m):
                raise BundleError(f"{path}: tensor '{spec.name}' has shape {list(t.shape)} in the "
                                  f"engine, {spec.shape} in the manifest. {fix}")


def profile_batch_range(io: list[IOTensor], tower: TowerSpec, path: Path,
                        profile: int = 0) -> tuple[int, int, int]:
    """(min, opt, max) batch that every input of the profile accepts."""
    lo, opt, hi = 1, 1, None
    for spec in tower.inputs:
        t = next(x for x in io if x.name == spec.name)
        ax = spec.batch_axis if spec.batch_axis is not None else 0
        if profile >= len(t.profiles):
            raise BundleError(f"{path}: input '{spec.name}' has no optimisation profile {profile}. "
                              f"{rebuild_hint(path)}")
        pmin, popt, pmax = t.profiles[profile]
        lo, opt = max(lo, int(pmin[ax])), max(opt, int(popt[ax]))
        hi = int(pmax[ax]) if hi is None else min(hi, int(pmax[ax]))
    if hi is None or hi < lo:
        raise BundleError(f"{path}: the engine's optimisation profile {profile} has no batch size "
                          f"that all inputs accept (min {lo}, max {hi}). {rebuild_hint(path)}")
    return lo, min(max(opt, lo), hi), hi


def split_batches(n: int, max_batch: int) -> list[slice]:
    """Slices of at most ``max_batch`` covering ``range(n)`` (what the caller feeds the runner)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    return [slice(i, min(i + max_batch, n)) for i in range(0, n, max_batch)]


def check_batch(n: int, min_batch: int, max_batch: int, path: Path) -> int:
    """How many rows to pad so ``n`` fits the profile; InputError when ``n`` is above its max."""
    if n < 1:
        raise InputError(f"{path}: empty batch: give at least one item.")
    if n > max_batch:
        raise InputError(f"{path}: a batch of {n} is larger than this engine's optimisation "
                         f"profile allows ({min_batch}..{max_batch}). Split it into batches of at "
                         f"most {max_batch} (Embedder does), or rebuild the engine with a larger "
                         f"batch max: `edgeclip build-engine {path.parent} --profile ...`.")
    return max(0, min_batch - n)


def _np_dtype(t: IOTensor, path: Path) -> np.dtype:
    try:
        return np.dtype(t.dtype)
    except TypeError:
        raise BundleError(f"{path}: engine tensor '{t.name}' has type {t.dtype}, which edgeclip "
                          f"cannot feed or read from numpy. {rebuild_hint(path)}") from None


def device_facts(cuda) -> dict:
    """What an engine depends on, as recorded in the manifest: GPU name, compute capability,
    multiprocessor count and total memory (MiB; the last two None when unknown)."""
    major, minor = cuda.compute_capability(0)
    facts = {"gpu_name": cuda.device_name(0), "compute_capability": f"{major}.{minor}",
             "multiprocessor_count": None, "total_memory_mib": None}
    props = getattr(cuda, "device_props", None)
    if props is not None:
        try:
            p = props(0)
        except (AttributeError, BackendUnavailableError):  # an interface without the fields
            p = {}
        facts["multiprocessor_count"] = p.get("multiprocessor_count")
        mem = p.get("total_memory")
        facts["total_memory_mib"] = int(mem) >> 20 if mem else None
    return facts


# == the runner ==============================================================================
_logger = None


def trt_logger(trt):
    global _logger
    if _logger is None:
        _logger = trt.Logger(trt.Logger.WARNING)
    return _logger


class _Slot:
    """One execution context with its stream and buffers (sized for the profile's max shapes)."""

    def __init__(self, runner: "TensorRTRunner", index: int):
        cuda, engine = runner._cuda, runner._engine
        self.index = index
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BackendUnavailableError(f"{runner.path}: TensorRT could not create an execution "
                                          f"context (out of GPU memory?).")
        self.stream = cuda.stream_create()
        self.handle = cuda.stream_handle(self.stream)
        self.device: dict[str, int] = {}
        self.host: dict[str, np.ndarray] = {}
        select_profile(self.context, index, self.handle)
        cuda.stream_synchronize(self.stream)
        for t in runner._io:
            if t.is_input:
                shape = t.profiles[index][2]
                if not self.context.set_input_shape(t.name, shape):
                    raise BundleError(f"{runner.path}: TensorRT rejects the max profile shape "
                                      f"{shape} of '{t.name}'. {rebuild_hint(runner.path)}")
        for t in runner._io:
            shape = t.profiles[index][2] if t.is_input else tuple(self.context.get_tensor_shape(
                t.name))
            if any(int(d) < 0 for d in shape):
                raise BundleError(f"{runner.path}: output '{t.name}' has an unresolved shape "
                                  f"{shape} at the max input shapes. {rebuild_hint(runner.path)}")
            nbytes = max(1, math.prod(int(d) for d in shape) * runner._np[t.name].itemsize)
            self.device[t.name] = cuda.malloc(nbytes)
            self.host[t.name] = cuda.malloc_host(nbytes)
            self.context.set_tensor_address(t.name, self.device[t.name])

    def close(self, cuda) -> None:
        for ptr in self.device.values():
            cuda.free(ptr)
        for arr in self.host.values():
            cuda.free_host(arr)
        self.device, self.host = {}, {}
        cuda.stream_destroy(self.stream)
        self.context = None


class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(self, tower: TowerSpec, model: ModelFile, path: Path,
                 manifest: Manifest | None = None, cuda=None):
        super().__init__(tower, model)
        trt = _import_tensorrt()
        if cuda is None:
            from .cuda import get_cuda
            cuda = get_cuda()
        self.path = Path(path)
        self.manifest = manifest
        self._trt, self._cuda = trt, cuda
        facts = device_facts(cuda)
        check_engine_compat(model, self.path, trt.__version__, facts["gpu_name"],
                            facts["compute_capability"], facts["multiprocessor_count"],
                            facts["total_memory_mib"])
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise BundleError(f"{self.path}: cannot read the engine ({e.strerror or e}).") from None
        self._runtime = trt.Runtime(trt_logger(trt))
        self._engine = deserialize(self._runtime, data)
        if self._engine is None:
            raise StaleEngineError(f"{self.path}: TensorRT {trt.__version__} cannot deserialize "
                                   f"this engine (made by another TensorRT version or GPU, or "
                                   f"corrupt). {rebuild_hint(self.path, model.precision)}")
        self._io = engine_io(trt, self._engine)
        check_engine_io(self._io, tower, self.path)
        self._np = {t.name: _np_dtype(t, self.path) for t in self._io}
        self.min_batch, self.opt_batch, self.max_batch = profile_batch_range(
            self._io, tower, self.path)
        self._inputs = [(s, next(t for t in self._io if t.name == s.name)) for s in tower.inputs]
        self._out = tower.outputs[0].name
        self._n_slots = num_profiles(self._engine)
        self._slots: list[_Slot] = []
        self._free: list[_Slot] = []
        self._cond = threading.Condition()
        self._closed = False
        self._busy = 0  # after close(): slots still running a call
        first = _Slot(self, 0)  # allocate now: a bad engine or too little memory fails here
        self._slots.append(first)
        self._free.append(first)

    # -- slot pool -------------------------------------------------------------------------
    def _acquire(self) -> _Slot:
        with self._cond:
            while True:
                if self._closed:
                    raise BackendUnavailableError(f"{self.path}: the runner is closed.")
                if self._free:
                    return self._free.pop()
                if len(self._slots) < self._n_slots:
                    slot = _Slot(self, len(self._slots))
                    self._slots.append(slot)
                    return slot
                self._cond.wait()
                # (a slot is in use by exactly one call between _acquire and _release)

    def _release(self, slot: _Slot) -> None:
        with self._cond:
            if not self._closed:
                self._free.append(slot)
                self._cond.notify()
                return
            self._busy -= 1
            last = self._busy == 0
        slot.close(self._cuda)  # closed while this call ran: its buffers go now
        if last:
            self._engine = None

    # -- inference -------------------------------------------------------------------------
    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        slot = self._acquire()
        try:
            return self._run(slot, feeds)
        finally:
            self._release(slot)

    def _run(self, slot: _Slot, feeds: dict[str, np.ndarray]) -> np.ndarray:
        cuda, ctx = self._cuda, slot.context
        n = None
        for spec, t in self._inputs:
            if spec.name not in feeds:
                raise InputError(f"{self.path}: missing input '{spec.name}' (the engine takes "
                                 f"{[s.name for s, _ in self._inputs]}).")
            ax = spec.batch_axis if spec.batch_axis is not None else 0
            arr = np.ascontiguousarray(feeds[spec.name], dtype=self._np[t.name])
            n = arr.shape[ax] if n is None else n
            pad = check_batch(arr.shape[ax], self.min_batch, self.max_batch, self.path)
            if pad:
                last = np.take(arr, [arr.shape[ax] - 1], axis=ax)
                arr = np.ascontiguousarray(np.concatenate([arr] + [last] * pad, axis=ax))
            pmin, _, pmax = t.profiles[slot.index]
            if len(arr.shape) != len(pmax) or any(
                    not (lo <= d <= hi) for d, lo, hi in zip(arr.shape, pmin, pmax)):
                raise InputError(f"{self.path}: input '{spec.name}' has shape {list(arr.shape)}; "
                                 f"the engine accepts {list(pmin)} to {list(pmax)}.")
            if not ctx.set_input_shape(spec.name, tuple(arr.shape)):
                raise InputError(f"{self.path}: TensorRT rejects shape {list(arr.shape)} for "
                                 f"'{spec.name}'.")
            host = slot.host[spec.name][:arr.nbytes].view(arr.dtype).reshape(arr.shape)
            host[...] = arr
            cuda.memcpy_htod_async(slot.device[spec.name], host, slot.stream)
        if not execute(ctx, slot.handle):
            cuda.stream_synchronize(slot.stream)
            raise BackendUnavailableError(f"{self.path}: TensorRT execution failed (see the "
                                          f"TensorRT log above).")
        shape = tuple(int(d) for d in ctx.get_tensor_shape(self._out))
        dtype = self._np[self._out]
        out = slot.host[self._out][:math.prod(shape) * dtype.itemsize].view(dtype).reshape(shape)
        cuda.memcpy_dtoh_async(out, slot.device[self._out], slot.stream)
        cuda.stream_synchronize(slot.stream)
        return np.array(out[:n], dtype=np.float32)  # a copy: the pinned buffer is reused

    def close(self) -> None:
        """Free the idle slots now; a slot another thread is running on is freed by that thread
        when its call returns (never under it). Waiting calls get BackendUnavailableError."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            idle = self._free
            self._busy = len(self._slots) - len(idle)
            self._slots, self._free = [], []
            self._cond.notify_all()
            last = self._busy == 0
        for slot in idle:
            slot.close(self._cuda)
        if last:
            self._engine = None


__all__ = ["TensorRTRunner", "tensorrt_unavailable_reason", "reset_cache", "check_engine_compat",
           "StaleEngineError", "rebuild_command",
           "check_engine_io", "profile_batch_range", "split_batches", "check_batch", "engine_io",
           "network_flags", "builder_precision_flags", "device_facts", "IOTensor", "INSTALL_HINT"]
