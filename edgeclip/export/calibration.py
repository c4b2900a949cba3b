"""Calibration data readers for onnxruntime.quantization, fed through the runtime's own
preprocessing and tokenizer so calibration sees exactly what deployment sees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from ..errors import ConfigError
from ..manifest import PreprocessCfg
from ..preprocess import ImageLoadError, preprocess_image
from ..tokenize import Tokenizer


def image_batches(paths: list[Path], cfg: PreprocessCfg, batch_size: int):
    for start in range(0, len(paths), batch_size):
        arrays = []
        for p in paths[start:start + batch_size]:
            try:
                arrays.append(preprocess_image(p, cfg))
            except ImageLoadError as e:
                raise ConfigError(f"{p}: cannot be used for calibration/verification ({e}). "
                                  f"Remove it from the data folder.") from None
        yield {"pixel_values": np.stack(arrays).astype(np.float32)}


def text_batches(texts: list[str], tokenizer: Tokenizer, batch_size: int):
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenizer(texts[start:start + batch_size])
        yield {"input_ids": ids, "attention_mask": mask}


class _Reader(CalibrationDataReader):
    def __init__(self, make_iter, count: int):
        if count == 0:
            raise ConfigError("calibration needs at least one item; raise --calib-count.")
        self._make = make_iter
        self._it = make_iter()

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = self._make()


def _even(items: list, batch_size: int) -> tuple[list, int]:
    """Whole batches only: ORT's histogram calibrators (entropy, percentile) need equal shapes."""
    batch_size = max(1, min(batch_size, len(items)))
    return items[: len(items) - len(items) % batch_size], batch_size


def image_reader(paths: list[Path], cfg: PreprocessCfg, batch_size: int = 8) -> _Reader:
    paths, batch_size = _even(paths, batch_size)
    return _Reader(lambda: image_batches(paths, cfg, batch_size), len(paths))


def text_reader(texts: list[str], tokenizer_file: str | Path, context_length: int,
                batch_size: int = 32) -> _Reader:
    tok = Tokenizer(tokenizer_file, context_length)
    texts, batch_size = _even(texts, batch_size)
    return _Reader(lambda: text_batches(texts, tok, batch_size), len(texts))
