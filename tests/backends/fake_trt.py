"""Faithful fakes of the TensorRT Python API and of a CUDA device, for the runner and builder
logic that needs no GPU.

Only names of the real API are used (checked against the TensorRT 10.x stubs by
tests/backends/test_trt_conformance.py): ``Runtime.deserialize_cuda_engine`` returns None for
bytes it cannot read, enums are real ``enum.Enum`` members with TensorRT's names, shapes come back
as tuple-like ``Dims``, ``get_tensor_profile_shape`` returns three of them,
``set_input_shape``/``execute_async_v3``/``set_timing_cache`` return bools,
``add_optimization_profile`` returns the profile index or -1, and ``create_timing_cache`` returns
None for a blob it rejects. The "device" memory is host memory behind integer pointers, so a use
after free raises.
"""

from __future__ import annotations

import enum
import itertools
import threading
import types

import numpy as np

from edgeclip.backends.cuda import Cuda

ENGINE_MAGIC = b"fake-trt-engine"
CACHE_MAGIC = b"fake-trt-timing-cache"


class Dims(tuple):
    """tensorrt.Dims: iterable, indexable, len()."""


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (_Severity.INTERNAL_ERROR, _Severity.ERROR,
                                                     _Severity.WARNING, _Severity.INFO,
                                                     _Severity.VERBOSE)

    def __init__(self, min_severity=_Severity.WARNING):
        self.min_severity = min_severity


class FakeEngine:
    """A text-tower engine: input_ids/attention_mask (B, seq) -> text_embeds (B, dim)."""

    def __init__(self, seq=16, dim=16, ids_dtype=DataType.INT32, profiles=1, batch=(1, 4, 8),
                 gate: threading.Event | None = None):
        self.seq, self.dim, self.batch = seq, dim, batch
        self.num_optimization_profiles = profiles
        self.gate = gate  # execute_async_v3 waits on it (a call in flight)
        self.entered = threading.Event()
        self._io = [("input_ids", TensorIOMode.INPUT, ids_dtype),
                    ("attention_mask", TensorIOMode.INPUT, ids_dtype),
                    ("text_embeds", TensorIOMode.OUTPUT, DataType.FLOAT)]
        self.contexts = []

    @property
    def num_io_tensors(self):
        return len(self._io)

    def get_tensor_name(self, i):
        return self._io[i][0]

    def get_tensor_mode(self, name):
        return next(m for n, m, _ in self._io if n == name)

    def get_tensor_dtype(self, name):
        return next(d for n, _, d in self._io if n == name)

    def get_tensor_shape(self, name):
        return Dims((-1, self.seq) if name != "text_embeds" else (-1, self.dim))

    def get_tensor_profile_shape(self, name, profile_index):
        lo, opt, hi = self.batch
        return [Dims((lo, self.seq)), Dims((opt, self.seq)), Dims((hi, self.seq))]

    def create_execution_context(self):
        ctx = FakeContext(self)
        self.contexts.append(ctx)
        return ctx


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine = engine
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.profile = 0
        self.cuda: "FakeCuda | None" = None  # set by FakeCuda.attach

    def set_optimization_profile_async(self, profile_index, stream_handle):
        self.profile = profile_index
        return True

    def set_input_shape(self, name, shape):
        shape = tuple(int(d) for d in shape)
        if shape[1] != self.engine.seq:
            return False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name):
        if name == "text_embeds":
            return Dims((self.shapes["input_ids"][0], self.engine.dim))
        return Dims(self.shapes[name])

    def set_tensor_address(self, name, memory):
        self.addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle):
        eng = self.engine
        eng.entered.set()
        if eng.gate is not None:
            eng.gate.wait(10)
        cuda = FakeCuda.instance
        b = self.shapes["input_ids"][0]
        dt = np.int32 if eng.get_tensor_dtype("input_ids") == DataType.INT32 else np.int64
        ids = cuda.view(self.addresses["input_ids"], dt, (b, eng.seq))
        mask = cuda.view(self.addresses["attention_mask"], dt, (b, eng.seq))
        out = cuda.view(self.addresses["text_embeds"], np.float32, (b, eng.dim))
        out[...] = expected_embeds(ids, mask, eng.dim)
        return True


def expected_embeds(ids: np.ndarray, mask: np.ndarray, dim: int) -> np.ndarray:
    """What the fake engine computes: masked id sums spread over ``dim`` (not normalised)."""
    s = (ids.astype(np.float64) * mask).sum(axis=1, keepdims=True)
    return (s + np.arange(dim)[None, :]).astype(np.float32)


class Runtime:
    def __init__(self, logger):
        self.logger = logger
        self.engine_factory = FakeEngine

    def deserialize_cuda_engine(self, serialized_engine):
        data = bytes(serialized_engine)
        if not data.startswith(ENGINE_MAGIC):
            return None  # TensorRT logs "magic tag does not match" and returns None
        return FAKE.engine if FAKE.engine is not None else FakeEngine()


class ITimingCache:
    def __init__(self, data: bytes):
        self.data = data

    def serialize(self):
        return memoryview(CACHE_MAGIC + self.data[len(CACHE_MAGIC):])


class IBuilderConfig:
    """The timing-cache and optimisation-profile calls of the builder config."""

    def __init__(self, accept_profiles=True, fresh_cache_none=False):
        self.accept_profiles = accept_profiles
        self.fresh_cache_none = fresh_cache_none
        self.profiles = []
        self.cache = None

    def create_timing_cache(self, serialized_timing_cache):
        data = bytes(serialized_timing_cache)
        if data and not data.startswith(CACHE_MAGIC):
            return None  # corrupt or foreign blob
        if not data and self.fresh_cache_none:
            return None
        return ITimingCache(data or CACHE_MAGIC)

    def set_timing_cache(self, cache, ignore_mismatch):
        if not isinstance(cache, ITimingCache):
            raise TypeError("set_timing_cache(): incompatible function arguments")
        self.cache = cache
        return True

    def add_optimization_profile(self, profile):
        if not self.accept_profiles:
            return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1


class _Fake:
    engine: FakeEngine | None = None


FAKE = _Fake()


def make_module(version: str = "10.13.0.35") -> types.ModuleType:
    """A ``tensorrt`` module with the names the runner uses."""
    m = types.ModuleType("tensorrt")
    m.__version__ = version
    m.__file__ = "/fake/tensorrt/__init__.py"
    m.Logger, m.Runtime, m.TensorIOMode, m.DataType = Logger, Runtime, TensorIOMode, DataType
    m.Dims = Dims

    class Builder:  # present so the module passes edgeclip's "real bindings" check
        def __init__(self, logger):
            self.logger = logger
    m.Builder = Builder
    return m


class FakeCuda(Cuda):
    """Host memory behind integer "device pointers"; a freed pointer raises on use."""

    name = "fake-cuda"
    instance: "FakeCuda"

    def __init__(self, gpu_name="Orin", cc=(8, 7), sms=16, memory_mib=62000):
        self.gpu_name, self.cc, self.sms, self.mem = gpu_name, cc, sms, memory_mib
        self._mem: dict[int, np.ndarray] = {}
        self._next = itertools.count(0x1000, 0x1000)
        self.freed: list[int] = []
        self.host_freed = 0
        self.lock = threading.Lock()
        FakeCuda.instance = self

    def device_count(self):
        return 1

    def device_name(self, device=0):
        return self.gpu_name

    def compute_capability(self, device=0):
        return self.cc

    def device_props(self, device=0):
        return {"multiprocessor_count": self.sms, "total_memory": self.mem << 20}

    def versions(self):
        return {"runtime": "12.6", "driver": "12.6"}

    def malloc(self, nbytes):
        with self.lock:
            ptr = next(self._next)
            self._mem[ptr] = np.zeros(int(nbytes), np.uint8)
        return ptr

    def free(self, ptr):
        with self.lock:
            del self._mem[ptr]  # KeyError on a double free
            self.freed.append(ptr)

    def malloc_host(self, nbytes):
        return np.zeros(int(nbytes), np.uint8)

    def free_host(self, array):
        self.host_freed += 1

    def view(self, ptr, dtype, shape):
        with self.lock:
            buf = self._mem[ptr]  # KeyError: use after free
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return buf[:n].view(dtype).reshape(shape)

    def memcpy_htod_async(self, dst, src, stream):
        self.view(dst, np.uint8, (src.nbytes,))[...] = src.reshape(-1).view(np.uint8)

    def memcpy_dtoh_async(self, dst, src, stream):
        dst.reshape(-1).view(np.uint8)[...] = self.view(src, np.uint8, (dst.nbytes,))

    def stream_create(self):
        return 7

    def stream_handle(self, stream):
        return int(stream)

    def stream_synchronize(self, stream):
        pass

    def stream_destroy(self, stream):
        pass
