"""Real inputs for the benchmark, and the timing of preprocessing and tokenization.

Images: the ``--e2e`` folder, else Flickr8k (``$EDGECLIP_FLICKR8K`` or ``../shared/data/flickr8k``
from the working directory), else synthetic photographs encoded as JPEG in memory. Texts: the
captions of a ``captions.csv`` (``caption`` column) beside the images, else fixed sentences.
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

import numpy as np

from ..manifest import PreprocessCfg, TensorSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
FIXED_SENTENCES = [
    "a dog running on the beach",
    "two children playing football in a park",
    "a red car parked in front of an old house",
    "a man riding a bicycle down a busy city street at night",
    "a plate of pasta with tomatoes and basil on a wooden table",
    "a group of people hiking up a snowy mountain trail",
    "a cat sleeping on a windowsill in the afternoon sun",
    "an aerial view of a harbour full of small boats",
]


def _flickr8k_dir() -> Path | None:
    env = os.environ.get("EDGECLIP_FLICKR8K")
    for cand in ([Path(env)] if env else []) + [Path.cwd().parent / "shared/data/flickr8k"]:
        if (cand / "images").is_dir():
            return cand
    return None


def list_images(folder: Path, limit: int | None = None) -> list[Path]:
    files = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            files.append(p)
            if limit is not None and len(files) >= limit:
                break
    return files


def synthetic_jpegs(n: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> list[bytes]:
    """Smooth gradients plus noise, JPEG quality 90: decoding cost close to a real photo's."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(n):
        base = np.stack([(xx / w) * 255, (yy / h) * 255, ((xx + yy + 37 * i) % 256)], axis=-1)
        img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def image_items(n: int, folder: Path | None = None) -> tuple[list, str]:
    """``n`` image items (paths, or JPEG bytes) and where they came from."""
    if folder is not None:
        files = list_images(folder, limit=n)
        if files:
            return [files[i % len(files)] for i in range(n)], str(folder)
    flickr = _flickr8k_dir()
    if flickr is not None:
        files = list_images(flickr / "images", limit=n)
        if files:
            return files, "flickr8k"
    return synthetic_jpegs(n), "synthetic-jpeg"


def texts(n: int, folder: Path | None = None) -> tuple[list[str], str]:
    """``n`` strings: captions from a captions.csv (in or above ``folder``, or Flickr8k), else
    fixed sentences."""
    cands = []
    if folder is not None:
        cands += [folder / "captions.csv", folder.parent / "captions.csv"]
    flickr = _flickr8k_dir()
    if flickr is not None:
        cands.append(flickr / "captions.csv")
    for path in cands:
        if not path.is_file():
            continue
        caps = []
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            for row in csv.DictReader(f):
                if row.get("caption"):
                    caps.append(row["caption"])
                if len(caps) >= n:
                    break
        if caps:
            return [caps[i % len(caps)] for i in range(n)], str(path)
    return [FIXED_SENTENCES[i % len(FIXED_SENTENCES)] for i in range(n)], "fixed-sentences"


def preprocess_cfg_for(target) -> PreprocessCfg:
    if target.preprocess is not None:
        return PreprocessCfg.from_dict(target.preprocess)
    spec = next(t for t in target.inputs if len(t.shape) == 4)
    return PreprocessCfg(size=(int(spec.shape[2]), int(spec.shape[3])))


def tokenizer_for(target):
    if target.tokenizer is None:
        return None
    from ..tokenize import Tokenizer
    return Tokenizer(target.tokenizer["file"], target.tokenizer["context_length"])


def _concrete(spec: TensorSpec, batch: int) -> list[int]:
    return [batch if ax == "batch" else int(ax) for ax in spec.shape]


def build_feeds(inputs: list[TensorSpec], batch: int, pixels: np.ndarray | None = None,
                ids: np.ndarray | None = None, mask: np.ndarray | None = None,
                seed: int = 0) -> dict[str, np.ndarray]:
    """A feed for every graph input at ``batch``: given pixels / token ids where they fit, else
    standard-normal pixels, token ids in [1, 100) (valid in any vocabulary of 100 or more: the
    cold-start probe feeds them to models with small vocabularies too) and all-ones masks."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in inputs:
        shape = _concrete(spec, batch)
        name = spec.name.lower()
        if spec.dtype.startswith("float"):
            arr = pixels[:batch] if pixels is not None and list(pixels[:batch].shape) == shape \
                else rng.standard_normal(shape, dtype=np.float32)
        elif "mask" in name:
            arr = mask[:batch] if mask is not None and list(mask[:batch].shape) == shape \
                else np.ones(shape, dtype=np.int64)
        elif "type" in name or "position" in name:
            arr = np.zeros(shape, dtype=np.int64)
        else:
            arr = ids[:batch] if ids is not None and list(ids[:batch].shape) == shape \
                else rng.integers(1, 100, size=shape, dtype=np.int64)
        feeds[spec.name] = np.ascontiguousarray(arr, dtype=spec.dtype)
    return feeds


def real_feeds(target, batch: int, items: list, strings: list[str]) -> dict[str, np.ndarray]:
    """Feeds made from real data: preprocessed images, or tokenized strings."""
    if target.tower == "image":
        from ..preprocess import preprocess_image
        cfg = preprocess_cfg_for(target)
        pixels = np.stack([preprocess_image(it if isinstance(it, (str, os.PathLike))
                                            else bytes(it), cfg) for it in items[:batch]])
        return build_feeds(target.inputs, batch, pixels=pixels)
    tok = tokenizer_for(target)
    if tok is None:
        return build_feeds(target.inputs, batch)
    ids, mask = tok(strings[:batch])
    return build_feeds(target.inputs, batch, ids=ids, mask=mask)


def _median_ms(fn, budget_s: float, min_reps: int = 3, max_reps: int = 50) -> float:
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget_s
                                    and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def time_preprocess(target, items: list, batch: int, budget_s: float = 0.5) -> float:
    """Median ms to load + resize + normalise ``batch`` images on one thread."""
    from ..preprocess import preprocess_image
    cfg = preprocess_cfg_for(target)
    chosen = [it if isinstance(it, (str, os.PathLike)) else bytes(it) for it in items[:batch]]
    return _median_ms(lambda: [preprocess_image(it, cfg) for it in chosen], budget_s)


def time_tokenize(target, strings: list[str], batch: int, budget_s: float = 0.3) -> float | None:
    """Median ms to tokenize ``batch`` strings; None for a graph without a tokenizer."""
    tok = tokenizer_for(target)
    if tok is None:
        return None
    chosen = strings[:batch]
    return _median_ms(lambda: tok(chosen), budget_s)
