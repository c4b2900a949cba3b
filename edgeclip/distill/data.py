"""Image-caption datasets: a captions CSV + image folder + split files (the Flickr8k layout),
Karpathy-style JSON (``dataset_flickr30k.json`` / ``dataset_coco.json``), and webdataset tar
shards (``key.jpg`` + ``key.txt``, read with ``tarfile``).

A dataset is a list of :class:`Sample` (an image source and its captions) plus an ``identity``
string used to key caches. Images are decoded with the runtime's loader
(:mod:`edgeclip.preprocess`), so training and deployment preprocess alike.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..manifest import PreprocessCfg
from ..preprocess import ImageLoadError, load_image, preprocess_image

KARPATHY_SPLITS = {"train": ("train", "restval"), "dev": ("val",), "val": ("val",),
                   "test": ("test",), "restval": ("restval",)}


@dataclass
class Sample:
    key: str
    captions: list
    path: str | None = None  # a file, or the tar shard holding the image
    offset: int = -1  # byte offset of the image inside the tar shard
    size: int = 0

    def read(self):
        if self.offset < 0:
            return self.path
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


class PairDataset:
    def __init__(self, samples: list[Sample], identity: str, description: str):
        self.samples = samples
        self.identity = identity
        self.description = description
        caps, owner = [], []
        for i, s in enumerate(samples):
            caps.extend(s.captions)
            owner.extend([i] * len(s.captions))
        self.captions: list[str] = caps
        self.caption_image = np.asarray(owner, dtype=np.int64)
        self.caption_offsets = np.cumsum([0] + [len(s.captions) for s in samples])

    def __len__(self):
        return len(self.samples)

    def load_image(self, i: int):
        return load_image(self.samples[i].read())

    def pixels(self, i: int, cfg: PreprocessCfg) -> np.ndarray:
        """float32 (3, H, W); raises ImageLoadError for an unreadable image."""
        return preprocess_image(self.load_image(i), cfg)

    def subset(self, keep: np.ndarray) -> "PairDataset":
        idx = np.nonzero(keep)[0]
        return PairDataset([self.samples[i] for i in idx],
                           _digest(self.identity, *map(str, idx)), self.description)


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def _identity(kind, root, split, samples) -> str:
    parts = [kind, str(Path(root).resolve()), split]
    for s in samples:
        parts.append(s.key)
        parts.append(str(s.size))
        parts.extend(s.captions)
    return _digest(*parts)


def load_csv(root: str | os.PathLike, split: str, captions: str = "captions.csv",
             images: str = "images", splits: str = "splits") -> PairDataset:
    root = Path(root)
    cap_path = root / captions
    if not cap_path.is_file():
        raise ConfigError(f"{cap_path}: no captions file (expected a CSV with columns image,caption)")
    by_image: dict[str, list[str]] = {}
    with open(cap_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
            raise ConfigError(f"{cap_path}: needs the header 'image,caption', got "
                              f"{reader.fieldnames}")
        for row in reader:
            by_image.setdefault(row["image"], []).append(row["caption"].strip())
    split_file = root / splits / f"{split}.txt"
    if split_file.is_file():
        names = [ln.strip() for ln in split_file.read_text().splitlines() if ln.strip()]
    elif split in ("all", ""):
        names = sorted(by_image)
    else:
        raise ConfigError(f"{split_file}: no such split file (splits present: "
                          f"{sorted(p.stem for p in (root / splits).glob('*.txt'))})")
    missing = [n for n in names if n not in by_image]
    if missing:
        raise ConfigError(f"{split_file}: {len(missing)} images have no caption in {cap_path} "
                          f"(first: {missing[0]})")
    samples = []
    for n in names:
        p = root / images / n
        samples.append(Sample(n, by_image[n], str(p), size=p.stat().st_size if p.exists() else 0))
    return PairDataset(samples, _identity("csv", root, split, samples), f"{root} [{split}]")


def load_karpathy(json_path: str | os.PathLike, image_root: str | os.PathLike, split: str
                  ) -> PairDataset:
    json_path = Path(json_path)
    try:
        d = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{json_path}: cannot read Karpathy JSON ({e})") from None
    want = KARPATHY_SPLITS.get(split, (split,))
    samples = []
    for img in d.get("images", []):
        if img.get("split") not in want:
            continue
        rel = os.path.join(img.get("filepath", ""), img["filename"])
        caps = [s.get("raw") or " ".join(s.get("tokens", [])) for s in img.get("sentences", [])]
        p = Path(image_root) / rel
        samples.append(Sample(rel, [c.strip() for c in caps if c.strip()], str(p),
                              size=p.stat().st_size if p.exists() else 0))
    if not samples:
        raise ConfigError(f"{json_path}: no image in split '{split}' (Karpathy splits: "
                          f"train(+restval), val/dev, test)")
    return PairDataset(samples, _identity("karpathy", json_path, split, samples),
                       f"{json_path} [{split}]")


def load_wds(shards, split: str = "") -> PairDataset:
    """Tar shards (a glob, a directory, or a list). Each sample: ``key.jpg|jpeg|png|webp`` +
    ``key.txt`` (one caption per line)."""
    if isinstance(shards, (str, os.PathLike)):
        p = Path(shards)
        pattern = str(p / split / "*.tar") if p.is_dir() and (p / split).is_dir() else (
            str(p / "*.tar") if p.is_dir() else str(shards))
        files = sorted(glob.glob(pattern))
    else:
        files = [str(s) for s in shards]
    if not files:
        raise ConfigError(f"no tar shards found at {shards}")
    samples = []
    for shard in files:
        imgs, txts = {}, {}
        with tarfile.open(shard, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, _, ext = m.name.rpartition(".")
                ext = ext.lower()
                if ext in ("jpg", "jpeg", "png", "webp"):
                    imgs[key] = (m.offset_data, m.size)
                elif ext == "txt":
                    txts[key] = tf.extractfile(m).read().decode("utf-8", "replace")
        for key in sorted(imgs):
            caps = [c.strip() for c in txts.get(key, "").splitlines() if c.strip()]
            if caps:
                off, size = imgs[key]
                samples.append(Sample(f"{Path(shard).name}/{key}", caps, shard, off, size))
    return PairDataset(samples, _identity("wds", files[0], split, samples),
                       f"{len(files)} shards [{split}]")


def open_dataset(cfg: dict, split: str) -> PairDataset:
    """``cfg``: ``{root, format: auto|csv|karpathy|wds, karpathy_json?, image_root?}``."""
    if "root" not in cfg:
        raise ConfigError("data.root is not set (a dataset directory)")
    root = Path(os.path.expandvars(str(cfg["root"]))).expanduser()
    fmt = cfg.get("format", "auto")
    if fmt == "auto":
        if (root / "captions.csv").is_file():
            fmt = "csv"
        elif cfg.get("karpathy_json") or list(root.glob("dataset_*.json")):
            fmt = "karpathy"
        elif root.suffix == ".tar" or list(root.glob("*.tar")) or list(root.glob("*/*.tar")):
            fmt = "wds"
        elif not root.exists():
            raise ConfigError(f"{root}: dataset directory not found")
        else:
            raise ConfigError(f"{root}: cannot tell the dataset format (expected captions.csv, "
                              f"dataset_*.json or *.tar shards); set data.format")
    if fmt == "csv":
        return load_csv(root, split)
    if fmt == "karpathy":
        js = cfg.get("karpathy_json") or sorted(root.glob("dataset_*.json"))[0]
        img_root = cfg.get("image_root") or (root / "images" if (root / "images").is_dir()
                                             else root)
        return load_karpathy(js, img_root, split)
    if fmt == "wds":
        return load_wds(root, split)
    raise ConfigError(f"data.format '{fmt}' is unknown (known: auto, csv, karpathy, wds)")


def check_readable(ds: PairDataset) -> np.ndarray:
    """Boolean mask of images that decode; used when no cache pass has checked them."""
    ok = np.ones(len(ds), dtype=bool)
    for i in range(len(ds)):
        try:
            ds.load_image(i)
        except ImageLoadError:
            ok[i] = False
    return ok
