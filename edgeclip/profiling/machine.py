"""What the benchmark ran on: CPU, cores, memory, GPU, library versions; device memory probes."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD features that decide INT8/FP16 speed on a CPU (x86 flags, Arm features)."""
    wanted = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "f16c",
              "asimd", "asimddp", "asimdhp", "i8mm", "sve", "fphp"}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("flags", "features")):
                    return sorted(wanted & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return []


def memory_total_mb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def gpus() -> list[dict]:
    """GPUs seen by nvidia-smi (name, memory, driver); [] where there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            rows.append({"name": parts[0], "memory_mb": float(parts[1]) if parts[1].replace(
                ".", "", 1).isdigit() else None, "driver": parts[2]})
    return rows


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on the machine skews the timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info() -> dict:
    from .. import __version__
    try:
        import onnxruntime as ort
        providers = list(ort.get_available_providers())
    except ImportError:  # pragma: no cover - base dependency
        providers = []
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores_logical": os.cpu_count(),
        "cores_usable": affinity,
        "memory_total_mb": memory_total_mb(),
        "gpus": gpus(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {"edgeclip": __version__, "onnxruntime": _version("onnxruntime")
                     or _version("onnxruntime-gpu"), "tensorrt": _version("tensorrt"),
                     "numpy": _version("numpy"), "pillow": _version("pillow"),
                     "tokenizers": _version("tokenizers")},
        "onnxruntime_providers": providers,
        "load_average": load_average(),
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mb() -> float | None:
    """This process's RSS high-water mark in MiB: ``VmHWM`` of /proc/self/status on Linux (it
    starts afresh at exec; ``getrusage``'s ru_maxrss inherits the parent's RSS at fork), else
    ``getrusage``; None where neither exists."""
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


class DeviceMemory:
    """GPU memory used by this process, through NVML (per process) or the CUDA runtime
    (``cudaMemGetInfo``, device-wide, as a delta from construction). All values None without
    a GPU. CUDA allocators (ORT's arena, TensorRT's activations) keep what they reserved, so
    the value read after the runs is the peak of the run."""

    def __init__(self):
        self._nvml = None
        self._cudart = None
        self._base = None
        try:
            import pynvml
            pynvml.nvmlInit()
            if pynvml.nvmlDeviceGetCount() > 0:
                self._nvml = pynvml
        except Exception:  # absent library, no driver, no GPU
            self._nvml = None
        if self._nvml is None:
            try:
                from cuda.bindings import runtime as cudart
            except ImportError:
                try:
                    from cuda import cudart  # cuda-python 12.x
                except ImportError:
                    cudart = None
            if cudart is not None:
                self._cudart = cudart
                self._base = self._cuda_used()

    def _cuda_used(self) -> float | None:
        try:
            err, free, total = self._cudart.cudaMemGetInfo()
        except Exception:
            return None
        if int(err) != 0:
            return None
        return (total - free) / 2**20

    def used_mb(self) -> float | None:
        if self._nvml is not None:
            pid = os.getpid()
            used = 0
            try:
                for i in range(self._nvml.nvmlDeviceGetCount()):
                    handle = self._nvml.nvmlDeviceGetHandleByIndex(i)
                    for proc in self._nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                        if proc.pid == pid and proc.usedGpuMemory:
                            used += proc.usedGpuMemory
            except Exception:
                return None
            return used / 2**20
        if self._cudart is not None and self._base is not None:
            now = self._cuda_used()
            return None if now is None else max(0.0, now - self._base)
        return None
