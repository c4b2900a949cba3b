"""The CUDA interface selection (cuda-python vs pycuda) and its error messages.

No GPU and neither package runs here, so the modules are fakes injected into ``sys.modules``:
they stand in for cuda-python's and pycuda's documented call shapes (tuples whose first item is
the error; pycuda's Device/Context objects). What runs for real is edgeclip's selection logic.
"""

from __future__ import annotations

import enum
import sys
import types

import numpy as np
import pytest

from edgeclip.backends import cuda as cu
from edgeclip.errors import BackendUnavailableError


class _Err(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorNoDevice = 100


class _Kind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


def fake_cudart(devices: int = 1, name: bytes = b"Orin\x00\x00junk", cc=(8, 7), malloc_err=None):
    rt = types.ModuleType("fake_cudart")
    rt.cudaError_t = _Err
    rt.cudaMemcpyKind = _Kind
    rt.calls = []
    rt.cudaGetErrorName = lambda e: (_Err.cudaSuccess, _Err(e).name.encode())
    rt.cudaGetDeviceCount = lambda: ((_Err.cudaSuccess, devices) if devices
                                     else (_Err.cudaErrorNoDevice, 0))
    props = types.SimpleNamespace(name=name, major=cc[0], minor=cc[1], multiProcessorCount=16,
                                  totalGlobalMem=64 * 2**30)  # cudaDeviceProp fields
    rt.cudaGetDeviceProperties = lambda d: (_Err.cudaSuccess, props)
    rt.cudaMalloc = lambda n: (malloc_err or _Err.cudaSuccess, 4096)
    rt.cudaFree = lambda p: (_Err.cudaSuccess,)

    def memcpy(dst, src, n, kind, stream):
        rt.calls.append(("memcpy", kind, n, stream))
        return (_Err.cudaSuccess,)
    rt.cudaMemcpyAsync = memcpy
    rt.cudaStreamCreate = lambda: (_Err.cudaSuccess, 77)
    rt.cudaStreamSynchronize = lambda s: (_Err.cudaSuccess,)
    rt.cudaStreamDestroy = lambda s: (_Err.cudaSuccess,)
    return rt


def install_cuda_python(monkeypatch, rt, new_layout: bool = True):
    cuda_pkg = types.ModuleType("cuda")
    monkeypatch.setitem(sys.modules, "cuda", cuda_pkg)
    if new_layout:  # cuda-python >= 12.6 / 13: cuda.bindings.runtime
        bindings = types.ModuleType("cuda.bindings")
        bindings.runtime = rt
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
        monkeypatch.setitem(sys.modules, "cuda.cudart", None)
    else:  # early 12.x: only cuda.cudart
        monkeypatch.setitem(sys.modules, "cuda.bindings", None)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
        monkeypatch.setitem(sys.modules, "cuda.cudart", rt)


def block_cuda_python(monkeypatch):
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)


def install_pycuda(monkeypatch, devices: int = 1):
    drv = types.ModuleType("pycuda.driver")

    class Error(Exception):
        pass

    class Ctx:
        pushed = 0

        def push(self):
            Ctx.pushed += 1

    class Context:
        @staticmethod
        def pop():
            Ctx.pushed -= 1

    class Device:
        def __init__(self, i):
            self.i = i

        @staticmethod
        def count():
            return devices

        def name(self):
            return "NVIDIA Jetson AGX Orin"

        def compute_capability(self):
            return (8, 7)

        def retain_primary_context(self):
            return Ctx()

    drv.Error, drv.Context, drv.Device, drv.init = Error, Context, Device, lambda: None
    drv.pagelocked_empty = lambda shape, dtype: np.zeros(shape, dtype)
    pkg = types.ModuleType("pycuda")
    pkg.driver = drv
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
    return drv, Ctx


def block_pycuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)


@pytest.fixture(autouse=True)
def _fresh():
    cu.reset_cache()
    yield
    cu.reset_cache()


def test_prefers_cuda_python_new_layout(monkeypatch):
    install_cuda_python(monkeypatch, fake_cudart())
    install_pycuda(monkeypatch)
    c = cu.get_cuda()
    assert c.name == "cuda-python"
    assert c.device_name() == "Orin"  # NUL-terminated char[256] decoded
    assert c.compute_capability() == (8, 7)
    assert c.device_props() == {"multiprocessor_count": 16, "total_memory": 64 * 2**30}
    from edgeclip.backends.tensorrt import device_facts
    assert device_facts(c) == {"gpu_name": "Orin", "compute_capability": "8.7",
                               "multiprocessor_count": 16, "total_memory_mib": 65536}
    assert cu.get_cuda() is c  # cached


def test_old_cuda_cudart_layout(monkeypatch):
    install_cuda_python(monkeypatch, fake_cudart(), new_layout=False)
    block_pycuda(monkeypatch)
    assert cu.get_cuda().name == "cuda-python"


def test_falls_back_to_pycuda(monkeypatch):
    block_cuda_python(monkeypatch)
    _, ctx = install_pycuda(monkeypatch)
    c = cu.get_cuda()
    assert c.name == "pycuda"
    assert c.device_name() == "NVIDIA Jetson AGX Orin"
    assert c.compute_capability() == (8, 7)
    buf = c.malloc_host(64)
    assert buf.dtype == np.uint8 and buf.nbytes == 64
    assert ctx.pushed == 0  # every push is popped


def test_cuda_python_without_gpu_falls_back_then_explains(monkeypatch):
    install_cuda_python(monkeypatch, fake_cudart(devices=0))
    block_pycuda(monkeypatch)
    with pytest.raises(BackendUnavailableError) as e:
        cu.get_cuda()
    msg = str(e.value)
    assert "cudaGetDeviceCount" in msg and "cudaErrorNoDevice" in msg
    assert "pycuda is not installed" in msg
    assert "pip install 'edgeclip[tensorrt-cu12]'" in msg


def test_neither_installed(monkeypatch):
    block_cuda_python(monkeypatch)
    block_pycuda(monkeypatch)
    with pytest.raises(BackendUnavailableError) as e:
        cu.get_cuda()
    msg = str(e.value)
    assert "cuda-python is not installed" in msg and "pycuda is not installed" in msg
    assert "cuda-python" in cu.INSTALL_HINT and "edgeclip[tensorrt-cu12]" in msg


def test_pycuda_without_device(monkeypatch):
    block_cuda_python(monkeypatch)
    install_pycuda(monkeypatch, devices=0)
    with pytest.raises(BackendUnavailableError, match="pycuda sees no CUDA device"):
        cu.get_cuda()


def test_prefer(monkeypatch):
    install_cuda_python(monkeypatch, fake_cudart())
    install_pycuda(monkeypatch)
    assert cu.get_cuda(prefer="pycuda").name == "pycuda"
    with pytest.raises(BackendUnavailableError, match="unknown CUDA interface 'cupy'"):
        cu.get_cuda(prefer="cupy")


def test_cuda_python_error_names_call_and_code(monkeypatch):
    rt = fake_cudart(malloc_err=_Err.cudaErrorMemoryAllocation)
    c = cu.CudaPython(rt)
    with pytest.raises(cu.CudaError) as e:
        c.malloc(1 << 20)
    assert "cudaMalloc" in str(e.value) and "cudaErrorMemoryAllocation" in str(e.value)
    assert isinstance(e.value, BackendUnavailableError)


def test_cuda_python_copies_pass_kind_and_stream():
    rt = fake_cudart()
    c = cu.CudaPython(rt)
    s = c.stream_create()
    assert c.stream_handle(s) == 77
    host = np.arange(6, dtype=np.float32)
    c.memcpy_htod_async(c.malloc(24), host, s)
    c.memcpy_dtoh_async(host, 4096, s)
    c.stream_synchronize(s)
    assert rt.calls == [("memcpy", _Kind.cudaMemcpyHostToDevice, 24, 77),
                        ("memcpy", _Kind.cudaMemcpyDeviceToHost, 24, 77)]
