"""The one interface every backend runner implements (after Polygraphy's runners)."""

from __future__ import annotations

import abc

import numpy as np

from ..manifest import ModelFile, TowerSpec


class Runner(abc.ABC):
    """Runs one tower's graph. ``run`` takes a feed dict of numpy arrays whose batch size is at
    most ``max_batch`` and returns the tower's first output as float32 ``(B, D)``.

    A runner must be safe to call from several threads at once.
    """

    #: e.g. "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt"
    backend: str = ""
    precision: str = ""
    max_batch: int = 1
    min_batch: int = 1

    def __init__(self, tower: TowerSpec, model: ModelFile):
        self.tower = tower
        self.model = model
        self.precision = model.precision

    @abc.abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        ...

    def close(self) -> None:  # pragma: no cover - default no-op
        pass
