"""CUDA memory and streams for the TensorRT runner, behind one small interface.

Two implementations: cuda-python (``cuda.bindings.runtime`` in cuda-python >= 12.x/13, or the old
``cuda.cudart`` module of early 12.x) and pycuda (often preinstalled on JetPack images).
:func:`get_cuda` picks the first that imports and sees a GPU. Device pointers are plain ints;
pinned host buffers are numpy arrays over page-locked memory.
"""

from __future__ import annotations

import abc
import ctypes
import importlib
import threading
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError

INSTALL_HINT = ("pip install 'edgeclip[tensorrt-cu12]' or 'edgeclip[tensorrt-cu13]' (TensorRT + "
                "cuda-python for that CUDA major), or pip install cuda-python matching your CUDA "
                "driver; on Jetson (JetPack 6, CUDA 12) pip install 'cuda-python<13'")
IMPLEMENTATIONS = ("cuda-python", "pycuda")


class CudaError(BackendUnavailableError):
    """A CUDA call failed; the message names the call and the CUDA error."""


class Cuda(abc.ABC):
    """Device memory, pinned host memory, streams and device facts of one GPU (device 0)."""

    name: str = ""

    @abc.abstractmethod
    def device_count(self) -> int: ...

    @abc.abstractmethod
    def device_name(self, device: int = 0) -> str: ...

    @abc.abstractmethod
    def compute_capability(self, device: int = 0) -> tuple[int, int]: ...

    def device_props(self, device: int = 0) -> dict:
        """``multiprocessor_count`` and ``total_memory`` (bytes) where known."""
        return {}

    def versions(self) -> dict:
        """``runtime`` and ``driver`` CUDA versions as "major.minor" strings where known."""
        return {}

    @abc.abstractmethod
    def malloc(self, nbytes: int) -> int: ...

    @abc.abstractmethod
    def free(self, ptr: int) -> None: ...

    @abc.abstractmethod
    def malloc_host(self, nbytes: int) -> np.ndarray:
        """Page-locked host memory as a uint8 numpy array of ``nbytes``."""

    @abc.abstractmethod
    def free_host(self, array: np.ndarray) -> None: ...

    @abc.abstractmethod
    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None: ...

    @abc.abstractmethod
    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None: ...

    @abc.abstractmethod
    def stream_create(self) -> Any: ...

    @abc.abstractmethod
    def stream_handle(self, stream: Any) -> int:
        """The ``cudaStream_t`` as an int (what ``execute_async_v3`` takes)."""

    @abc.abstractmethod
    def stream_synchronize(self, stream: Any) -> None: ...

    @abc.abstractmethod
    def stream_destroy(self, stream: Any) -> None: ...


# -- cuda-python ---------------------------------------------------------------------------
def _import_cudart():
    """``cuda.bindings.runtime`` (cuda-python >= 12.6 and 13), else ``cuda.cudart`` (old 12.x)."""
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        return importlib.import_module("cuda.cudart")


class CudaPython(Cuda):
    """cuda-python's runtime API: every call returns a tuple whose first item is the error."""

    name = "cuda-python"

    def __init__(self, cudart=None):
        self.rt = cudart if cudart is not None else _import_cudart()
        self._h2d = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._d2h = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._host: dict[int, int] = {}  # id(array) -> pinned pointer

    def _check(self, call: str, result) -> Any:
        if not isinstance(result, tuple):
            result = (result,)
        err, rest = result[0], result[1:]
        if err != self.rt.cudaError_t.cudaSuccess:
            raise CudaError(f"CUDA call {call} failed: {self._err_name(err)}. Check that the NVIDIA "
                            f"driver works (nvidia-smi / tegrastats) and that cuda-python matches "
                            f"the installed CUDA version.")
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else rest

    def _err_name(self, err) -> str:
        try:
            res = self.rt.cudaGetErrorName(err)
            name = res[1] if isinstance(res, tuple) else res
            return name.decode() if isinstance(name, bytes) else str(name)
        except Exception:  # the name is only for the message
            return getattr(err, "name", str(err))

    def device_count(self) -> int:
        return int(self._check("cudaGetDeviceCount", self.rt.cudaGetDeviceCount()))

    def _props(self, device: int):
        return self._check("cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties(device))

    def device_name(self, device: int = 0) -> str:
        name = self._props(device).name
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
        return str(name).strip()

    def compute_capability(self, device: int = 0) -> tuple[int, int]:
        p = self._props(device)
        return int(p.major), int(p.minor)

    def device_props(self, device: int = 0) -> dict:
        p = self._props(device)
        return {"multiprocessor_count": int(p.multiProcessorCount),
                "total_memory": int(p.totalGlobalMem)}

    def versions(self) -> dict:
        return cuda_python_versions(self.rt)

    def malloc(self, nbytes: int) -> int:
        return int(self._check("cudaMalloc", self.rt.cudaMalloc(int(nbytes))))

    def free(self, ptr: int) -> None:
        self._check("cudaFree", self.rt.cudaFree(ptr))

    def malloc_host(self, nbytes: int) -> np.ndarray:
        ptr = int(self._check("cudaMallocHost", self.rt.cudaMallocHost(int(nbytes))))
        buf = (ctypes.c_uint8 * int(nbytes)).from_address(ptr)
        arr = np.frombuffer(buf, dtype=np.uint8)
        self._host[id(arr)] = ptr
        return arr

    def free_host(self, array: np.ndarray) -> None:
        ptr = self._host.pop(id(array), None)
        if ptr is not None:
            self._check("cudaFreeHost", self.rt.cudaFreeHost(ptr))

    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self._check("cudaMemcpyAsync(HostToDevice)", self.rt.cudaMemcpyAsync(
            dst, src.ctypes.data, src.nbytes, self._h2d, stream))

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self._check("cudaMemcpyAsync(DeviceToHost)", self.rt.cudaMemcpyAsync(
            dst.ctypes.data, src, dst.nbytes, self._d2h, stream))

    def stream_create(self) -> Any:
        return self._check("cudaStreamCreate", self.rt.cudaStreamCreate())

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def stream_synchronize(self, stream: Any) -> None:
        self._check("cudaStreamSynchronize", self.rt.cudaStreamSynchronize(stream))

    def stream_destroy(self, stream: Any) -> None:
        self._check("cudaStreamDestroy", self.rt.cudaStreamDestroy(stream))


def _version_str(v: int) -> str:
    """CUDA's integer versions: 12020 -> "12.2"."""
    v = int(v)
    return f"{v // 1000}.{(v % 1000) // 10}"


def cuda_python_versions(rt) -> dict:
    """CUDA runtime and driver versions through cuda-python (no device needed); a failing call
    gives its error name instead (e.g. ``cudaErrorInsufficientDriver``)."""
    out = {}
    for key, call in (("runtime", "cudaRuntimeGetVersion"), ("driver", "cudaDriverGetVersion")):
        try:
            res = getattr(rt, call)()
            ok = rt.cudaError_t.cudaSuccess
            err, value = (res[0], res[1]) if isinstance(res, tuple) else (ok, res)
            if err != rt.cudaError_t.cudaSuccess:
                out[key] = f"unavailable ({getattr(err, 'name', err)})"
            elif key == "driver" and int(value) == 0:
                out[key] = "none (no NVIDIA driver)"
            else:
                out[key] = _version_str(value)
        except Exception as e:  # only for the report
            out[key] = f"unavailable ({type(e).__name__}: {e})"
    return out


# -- pycuda --------------------------------------------------------------------------------
class PyCuda(Cuda):
    """pycuda on the device's primary context (the one TensorRT's runtime API uses), pushed
    around every call so any thread may use it."""

    name = "pycuda"

    def __init__(self, driver=None):
        self.drv = driver if driver is not None else importlib.import_module("pycuda.driver")
        self.drv.init()
        if self.drv.Device.count() < 1:
            raise BackendUnavailableError("pycuda sees no CUDA device.")
        self._ctx = self.drv.Device(0).retain_primary_context()
        self._alloc: dict[int, Any] = {}  # pointer -> DeviceAllocation (kept alive)
        self._lock = threading.Lock()

    def _call(self, fn, *args):
        self._ctx.push()
        try:
            return fn(*args)
        except self.drv.Error as e:
            raise CudaError(f"pycuda call {getattr(fn, '__name__', fn)} failed: {e}. Check the "
                            f"NVIDIA driver (nvidia-smi / tegrastats).") from None
        finally:
            self.drv.Context.pop()

    def device_count(self) -> int:
        return int(self.drv.Device.count())

    def device_name(self, device: int = 0) -> str:
        return str(self.drv.Device(device).name()).strip()

    def compute_capability(self, device: int = 0) -> tuple[int, int]:
        major, minor = self.drv.Device(device).compute_capability()
        return int(major), int(minor)

    def device_props(self, device: int = 0) -> dict:
        d = self.drv.Device(device)
        return {"multiprocessor_count": int(d.get_attribute(
            self.drv.device_attribute.MULTIPROCESSOR_COUNT)), "total_memory": int(d.total_memory())}

    def versions(self) -> dict:
        out = {}
        v = self.drv.get_version()  # the CUDA version pycuda was built against: (12, 2, 0)
        out["runtime"] = ".".join(str(x) for x in tuple(v)[:2])
        out["driver"] = _version_str(self.drv.get_driver_version())
        return out

    def malloc(self, nbytes: int) -> int:
        alloc = self._call(self.drv.mem_alloc, int(nbytes))
        ptr = int(alloc)
        with self._lock:
            self._alloc[ptr] = alloc
        return ptr

    def free(self, ptr: int) -> None:
        with self._lock:
            alloc = self._alloc.pop(int(ptr), None)
        if alloc is not None:
            self._call(alloc.free)

    def malloc_host(self, nbytes: int) -> np.ndarray:
        return self._call(self.drv.pagelocked_empty, (int(nbytes),), np.uint8)

    def free_host(self, array: np.ndarray) -> None:
        base = getattr(array, "base", None)
        if base is not None and hasattr(base, "free"):
            self._call(base.free)

    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self._call(self.drv.memcpy_htod_async, dst, src, stream)

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self._call(self.drv.memcpy_dtoh_async, dst, src, stream)

    def stream_create(self) -> Any:
        return self._call(self.drv.Stream)

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def stream_synchronize(self, stream: Any) -> None:
        self._call(stream.synchronize)

    def stream_destroy(self, stream: Any) -> None:
        pass  # pycuda frees the stream with the Python object


# -- selection -----------------------------------------------------------------------------
_cache: dict[str, Cuda] = {}
_cache_lock = threading.Lock()


def _make(name: str) -> Cuda:
    impl: Cuda = CudaPython() if name == "cuda-python" else PyCuda()
    if impl.device_count() < 1:
        raise BackendUnavailableError(f"{name} sees no CUDA device.")
    return impl


def get_cuda(prefer: str | None = None) -> Cuda:
    """The CUDA interface: cuda-python if it imports and sees a GPU, else pycuda.

    ``prefer`` ("cuda-python" or "pycuda") tries that one only. Raises
    :class:`BackendUnavailableError` naming why each failed and how to install one.
    """
    if prefer is not None and prefer not in IMPLEMENTATIONS:
        raise BackendUnavailableError(f"unknown CUDA interface '{prefer}' (known: "
                                      f"{', '.join(IMPLEMENTATIONS)}).")
    order = (prefer,) if prefer else IMPLEMENTATIONS
    with _cache_lock:
        for name in order:
            if name in _cache:
                return _cache[name]
        reasons = []
        for name in order:
            try:
                impl = _make(name)
            except ImportError as e:
                reasons.append(f"{name} is not installed ({e})")
                continue
            except BackendUnavailableError as e:
                reasons.append(str(e))
                continue
            except Exception as e:  # a driver without a GPU raises its own error types
                reasons.append(f"{name} cannot reach a GPU ({type(e).__name__}: {e})")
                continue
            _cache[name] = impl
            return impl
    raise BackendUnavailableError(
        f"no usable CUDA device from Python: {'; '.join(reasons)}. Install: {INSTALL_HINT}.")


def reset_cache() -> None:
    """Forget the chosen interface (tests, or after installing a package)."""
    with _cache_lock:
        _cache.clear()


__all__ = ["Cuda", "CudaPython", "PyCuda", "CudaError", "get_cuda", "reset_cache",
           "cuda_python_versions",
           "INSTALL_HINT", "IMPLEMENTATIONS"]
