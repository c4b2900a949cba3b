"""ONNX Runtime runner: CPU everywhere, CUDA and TensorRT execution providers where present."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, BundleError
from ..manifest import Manifest, ModelFile, TowerSpec
from .base import Runner

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16",
               "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8",
               "tensor(int8)": "int8", "tensor(bool)": "bool"}

PROVIDERS = {
    "onnxruntime-cpu": ["CPUExecutionProvider"],
    "onnxruntime-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "onnxruntime-tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                             "CPUExecutionProvider"],
}


#: the backend name of the provider a session really runs on first
BACKEND_OF_PROVIDER = {"CPUExecutionProvider": "onnxruntime-cpu",
                       "CUDAExecutionProvider": "onnxruntime-cuda",
                       "TensorrtExecutionProvider": "onnxruntime-tensorrt"}


#: Session config of every INT8 graph on ONNX Runtime's CPU provider. x86 CPUs without VNNI
#: (SSE4.1/AVX2/AVX-512 without VNNI) multiply uint8 x int8 with VPMADDUBSW, whose int16 pair sums
#: saturate; ORT's documented ``session.x64quantprecision`` switch makes such CPUs convert the
#: int8 weights to uint8 and use the U8U8 kernels, which do not saturate. ORT applies it only on
#: the affected CPUs (VNNI and ARM run as before). Measured on an AVX2-only CPU, default model's
#: image tower vs its FP32 graph on Flickr8k dev photos: min cosine 0.975 -> 0.997, Flickr8k
#: test mean recall 45.8 -> 46.1 (FP32: 46.0; round 1's default model); speed in benchmarks/results/int8_precision.json.
INT8_CPU_CONFIG = {"session.x64quantprecision": "1"}


def int8_cpu_options(opts, precision: str):
    """Add :data:`INT8_CPU_CONFIG` to ``opts`` for an INT8 graph; return ``opts``."""
    if precision == "int8":
        for key, value in INT8_CPU_CONFIG.items():
            opts.add_session_config_entry(key, value)
    return opts


def available_providers() -> list[str]:
    import onnxruntime as ort
    return list(ort.get_available_providers())


def check_io(session, tower: TowerSpec, path: Path, tower_name: str = "") -> None:
    """Raise BundleError when the graph's inputs/outputs (names, dtypes, shapes) disagree with the
    manifest (see :mod:`edgeclip.backends.checks`)."""
    from .checks import check_io_specs, ort_io
    ins, outs = ort_io(session)
    check_io_specs(ins, outs, tower, path, tower_name)


class OnnxRuntimeRunner(Runner):
    """One tower on ONNX Runtime.

    On the CPU the optimized graph is cached (:mod:`edgeclip.cache`): the first session of a
    graph is optimized (``ORT_ENABLE_ALL``) and saved, later ones load the saved graph with
    optimizations off. ``upcast=True`` runs an FP16 graph as FP32 (:mod:`.fp16_upcast`; CPUs
    without FP16 arithmetic run FP32 faster). ``lazy=True`` creates the session on first use when
    this graph and manifest passed the load checks before (else at once, so a bad bundle still
    fails at load).
    """

    def __init__(self, tower: TowerSpec, model: ModelFile, path: Path,
                 backend: str = "onnxruntime-cpu", threads: int | None = None,
                 provider_options: list[dict] | None = None, manifest: Manifest | None = None,
                 tower_name: str = "", upcast: bool = False, lazy: bool = False):
        super().__init__(tower, model)
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - base dependency
            raise BackendUnavailableError(f"onnxruntime does not import ({e}): "
                                          f"pip install onnxruntime") from None
        providers = PROVIDERS[backend]
        have = ort.get_available_providers()
        if providers[0] not in have:
            raise BackendUnavailableError(
                f"ONNX Runtime here has no {providers[0]} (available: {', '.join(have)}). "
                f"Install onnxruntime-gpu for CUDA/TensorRT providers, or use backend='onnxruntime'.")
        if threads is None:
            env = os.environ.get("EDGECLIP_THREADS")
            threads = int(env) if env else 0
        self._threads = int(threads)
        self._providers, self._provider_options = providers, provider_options
        self._manifest, self._tower_name = manifest, tower_name
        self.path = Path(path)
        self.backend = backend
        self.max_batch = tower.max_batch
        self._out = [tower.outputs[0].name]
        last = tower.outputs[0].shape[-1] if tower.outputs[0].shape else None
        self._dim = last if isinstance(last, int) else None
        self._in = {t.name: t.dtype for t in tower.inputs}
        self.upcast_from = model.precision if upcast else None
        if upcast:
            self.precision = "fp32"
        # INT8 graphs made for TensorRT run with ORT's graph optimizations off on the CPU: ORT's
        # CPU Q/DQ fusions give wrong float16 Q/DQ results and lose accuracy on S8S8 graphs
        # (edgeclip.export.verify.unoptimized); unfused Q/DQ is the graph's reference semantics
        self._qdq_reference = (backend == "onnxruntime-cpu" and model.precision == "int8"
                               and model.target == "tensorrt")
        self._variant = "fp32up" if upcast else ("qdqref" if self._qdq_reference else "all")
        if model.precision == "int8" and not self._qdq_reference:
            self._variant += "-x64prec"  # optimized with INT8_CPU_CONFIG: a distinct cached graph
        self.providers: list[str] = []  # what the session really runs on (get_providers())
        self._session = None
        self._session_lock = threading.Lock()
        self.cache_hit: bool | None = None  # the optimized graph came from the cache
        self.deferred = bool(lazy) and self._checked_before()
        if not self.deferred:
            self._open()

    # -- session creation ------------------------------------------------------------------
    def _source_sha(self) -> str | None:
        if self.backend != "onnxruntime-cpu":
            return None  # GPU providers optimise for their device at every load
        from ..cache import file_sha256
        try:
            return file_sha256(self.path)
        except OSError:
            return None

    def _check_key(self) -> str:
        import hashlib
        import json

        from .. import __version__
        d = {"edgeclip": __version__, "tower": self._tower_name, "backend": self.backend,
             "spec": self.tower.to_dict(),
             "manifest": self._manifest.to_dict() if self._manifest is not None else None}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()

    def _checked_before(self) -> bool:
        from ..cache import cached_graph, checks_passed
        sha = self._source_sha()
        return (sha is not None and cached_graph(sha, self._variant) is not None
                and checks_passed(sha, self._variant, self._check_key()))

    @property
    def session(self):
        """The ``onnxruntime.InferenceSession`` (created here on first use when deferred)."""
        if self._session is None:
            with self._session_lock:
                if self._session is None:
                    self._open()
        return self._session

    def _options(self, optimize: bool):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                         else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        opts.intra_op_num_threads = self._threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        return int8_cpu_options(opts, self.model.precision)

    def _new_session(self, src, opts):
        import onnxruntime as ort
        # a float16 graph on the CPU: see edgeclip.export.verify.FP16_CPU_DISABLED_OPTIMIZERS
        disabled = (["AttentionFusion"] if self.model.precision == "fp16"
                    and self.upcast_from is None else [])
        if self._provider_options is not None:
            return ort.InferenceSession(src, sess_options=opts, providers=self._providers,
                                        provider_options=self._provider_options,
                                        disabled_optimizers=disabled)
        return ort.InferenceSession(src, sess_options=opts, providers=self._providers,
                                    disabled_optimizers=disabled)

    def _open(self) -> None:
        from ..cache import (cached_graph, commit_graph, record_checks_passed, temp_graph_path)
        path = self.path
        sha = self._source_sha()
        cached = cached_graph(sha, self._variant) if sha is not None else None
        session = None
        if cached is not None:
            try:
                session = self._new_session(str(cached), self._options(optimize=False))
                self.cache_hit = True
            except Exception:  # a damaged cache entry: rebuild it from the bundle's graph
                session = None
        if session is None:
            self.cache_hit = False
            src = str(path)
            if self.upcast_from is not None:
                from .fp16_upcast import UpcastError, upcast_fp16_model
                try:
                    src = upcast_fp16_model(path.read_bytes())
                except (UpcastError, IndexError, ValueError) as e:
                    raise BundleError(f"{path}: cannot run this FP16 graph as FP32 ({e}). Use "
                                      f"precision='fp16' or export an FP32 graph.") from None
            opts = self._options(optimize=not self._qdq_reference)
            tmp = temp_graph_path(sha, self._variant) if sha is not None else None
            if tmp is not None:
                opts.optimized_model_filepath = str(tmp)
            try:
                session = self._new_session(src, opts)
            except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
                raise BundleError(f"{path}: ONNX Runtime cannot load this graph "
                                  f"({type(e).__name__}: {str(e).splitlines()[0][:300]}). The "
                                  f"file is corrupt or was made for another target; re-export "
                                  f"the bundle.") from None
            if tmp is not None:
                commit_graph(tmp, sha, self._variant)
        self._verify_providers(session)
        from .checks import check_session
        check_session(session, self._manifest, self.tower, self._tower_name, path)
        if sha is not None:
            record_checks_passed(sha, self._variant, self._check_key())
        self._session = session

    def _verify_providers(self, session) -> None:
        """ONNX Runtime falls back to the CPU when a GPU provider cannot start (missing CUDA,
        cuDNN or TensorRT libraries) and only logs it: check what the session really runs on."""
        active = list(session.get_providers())
        want = self._providers[0]
        if want not in active:
            libs = "libnvinfer (TensorRT)" if want.startswith("Tensorrt") else \
                "the CUDA runtime and cuDNN libraries"
            raise BackendUnavailableError(
                f"{self.path}: ONNX Runtime did not start the {want}; the session would run on "
                f"{', '.join(active) or 'nothing'}. Usually {libs} that this onnxruntime-gpu "
                f"build needs cannot be loaded (match onnxruntime-gpu to the installed CUDA "
                f"major), or there is no usable GPU. Use backend='onnxruntime' for the CPU.")
        self.providers = active
        self.backend = BACKEND_OF_PROVIDER.get(active[0], self.backend)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: np.ascontiguousarray(v, dtype=self._in[k]) for k, v in feeds.items()
                if k in self._in}
        # InferenceSession.run is thread-safe: concurrent calls share one session.
        out = self.session.run(self._out, feed)[0]
        if out.ndim != 2 or (self._dim is not None and out.shape[1] != self._dim):
            # a graph whose output size is symbolic (not checkable at load) gave another size
            raise BundleError(f"{self.path}: the graph returned embeddings of shape "
                              f"{list(out.shape)}; the manifest's output "
                              f"'{self._out[0]}' is {self.tower.outputs[0].shape}. The graph "
                              f"and manifest.json disagree; re-export the bundle with "
                              f"`edgeclip export`.")
        return np.asarray(out, dtype=np.float32)
