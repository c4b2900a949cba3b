"""ONNX Runtime runner: CPU everywhere, CUDA and TensorRT execution providers where present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, BundleError
from ..manifest import ModelFile, TowerSpec
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


def available_providers() -> list[str]:
    import onnxruntime as ort
    return list(ort.get_available_providers())


def check_io(session, tower: TowerSpec, path: Path) -> None:
    """Raise BundleError when the graph's inputs/outputs disagree with the manifest."""
    graph_in = {i.name: i for i in session.get_inputs()}
    graph_out = {o.name: o for o in session.get_outputs()}
    fix = "The graph and manifest.json disagree; re-export the bundle with `edgeclip export`."
    want_in = {t.name: t for t in tower.inputs}
    if set(graph_in) != set(want_in):
        raise BundleError(f"{path}: graph inputs {sorted(graph_in)} != manifest inputs "
                          f"{sorted(want_in)}. {fix}")
    for spec in tower.outputs:
        if spec.name not in graph_out:
            raise BundleError(f"{path}: graph has no output '{spec.name}' named in the manifest "
                              f"(graph outputs: {sorted(graph_out)}). {fix}")
    for name, spec in want_in.items():
        node = graph_in[name]
        dtype = _ORT_DTYPES.get(node.type, node.type)
        if dtype != spec.dtype:
            raise BundleError(f"{path}: input '{name}' is {dtype} in the graph, {spec.dtype} in the "
                              f"manifest. {fix}")
        gshape = list(node.shape)
        if len(gshape) != len(spec.shape):
            raise BundleError(f"{path}: input '{name}' has rank {len(gshape)} in the graph, "
                              f"{len(spec.shape)} in the manifest. {fix}")
        for g, m in zip(gshape, spec.shape):
            if isinstance(m, int) and isinstance(g, int) and g != m:
                raise BundleError(f"{path}: input '{name}' has shape {gshape} in the graph, "
                                  f"{spec.shape} in the manifest. {fix}")
            if m == "batch" and isinstance(g, int) and g != 1:
                raise BundleError(f"{path}: input '{name}' has a fixed batch of {g}; the manifest "
                                  f"says it is dynamic. {fix}")


class OnnxRuntimeRunner(Runner):
    def __init__(self, tower: TowerSpec, model: ModelFile, path: Path,
                 backend: str = "onnxruntime-cpu", threads: int | None = None,
                 provider_options: list[dict] | None = None):
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
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is None:
            env = os.environ.get("EDGECLIP_THREADS")
            threads = int(env) if env else 0
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            if provider_options is not None:
                self.session = ort.InferenceSession(str(path), sess_options=opts,
                                                    providers=providers,
                                                    provider_options=provider_options)
            else:
                self.session = ort.InferenceSession(str(path), sess_options=opts,
                                                    providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"{path}: ONNX Runtime cannot load this graph ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:300]}). The file is corrupt or was made "
                              f"for another target; re-export the bundle.") from None
        check_io(self.session, tower, path)
        self.backend = backend
        self.max_batch = tower.max_batch
        self._out = [tower.outputs[0].name]
        self._in = {t.name: t.dtype for t in tower.inputs}

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: np.ascontiguousarray(v, dtype=self._in[k]) for k, v in feeds.items()
                if k in self._in}
        # InferenceSession.run is thread-safe: concurrent calls share one session.
        out = self.session.run(self._out, feed)[0]
        return np.asarray(out, dtype=np.float32)
