"""Image-caption datasets: a captions CSV + image folder + split files (the Flickr8k layout),
Karpathy-style JSON (``dataset_flickr30k.json`` / ``dataset_coco.json``), and webdataset tar
shards (``key.jpg`` + ``key.txt``): training streams them with the ``webdataset`` library
(:func:`stream_pairs`: shard shuffling, split across DDP ranks and DataLoader workers), and
evaluation indexes a (small) split with ``tarfile`` for random access (:func:`load_wds`).

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
from ..paths import expand_path
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


def shard_files(shards, split: str = "") -> list[str]:
    """The tar shards of a split: ``DIR/<split>/*.tar``, else ``DIR/*.tar``, a glob, or a list."""
    if isinstance(shards, (str, os.PathLike)):
        p = Path(shards)
        pattern = str(p / split / "*.tar") if p.is_dir() and split and (p / split).is_dir() else (
            str(p / "*.tar") if p.is_dir() else str(shards))
        files = sorted(glob.glob(pattern))
    else:
        files = [str(s) for s in shards]
    if not files:
        raise ConfigError(f"no tar shards found at {shards}")
    return files


IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def _pair(sample: dict) -> dict | None:
    """A webdataset sample (``__key__``, ``jpg``..., ``txt``) -> {key, image bytes, captions}."""
    image = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
    text = sample.get("txt")
    if image is None or text is None:
        return None
    caps = [c.strip() for c in bytes(text).decode("utf-8", "replace").splitlines() if c.strip()]
    if not caps:
        return None
    return {"key": sample["__key__"], "shard": sample.get("__url__", ""), "image": bytes(image),
            "captions": caps}


def stream_pairs(files: list[str], rank: int = 0, world: int = 1, seed: int = 0,
                 shuffle_shards: bool = True, shuffle_buffer: int = 0):
    """Stream (not scan) tar shards with ``webdataset``: an iterable of
    ``{"key", "shard", "image": bytes, "captions": [str]}``.

    Shards are shuffled with ``seed`` (the same permutation on every rank), then split across
    ranks (``rank::world``) and, inside a DataLoader, across its workers
    (``webdataset.split_by_worker``); ``shuffle_buffer`` > 0 also shuffles samples within that
    window. Each rank reads only its own shards, sequentially, as they are consumed."""
    import random

    import webdataset as wds

    if world > 1 and len(files) < world:
        raise ConfigError(f"{len(files)} tar shard(s) for {world} processes: every process needs "
                          f"at least one shard; write more, smaller shards.")

    def split_nodes(src):
        urls = list(src)
        if shuffle_shards:
            random.Random(seed).shuffle(urls)
        yield from urls[rank::world]

    ds = wds.WebDataset(list(files), shardshuffle=False, nodesplitter=split_nodes,
                        workersplitter=wds.split_by_worker, empty_check=False,
                        handler=wds.warn_and_continue, seed=seed)
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, rng=random.Random(seed))
    return ds.map(_pair).select(lambda x: x is not None)


def shard_sizes(files: list[str]) -> int | None:
    """Samples in ``files`` from a ``sizes.json`` beside them (``{"shard.tar": n, ...}``, the
    webdataset convention), or None when absent or incomplete."""
    total = 0
    for f in files:
        p = Path(f).parent / "sizes.json"
        try:
            sizes = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if Path(f).name not in sizes:
            return None
        total += int(sizes[Path(f).name])
    return total


def write_shards(ds: PairDataset, out_dir: str | os.PathLike, per_shard: int = 1000,
                 prefix: str = "shard") -> list[str]:
    """Write ``ds`` as webdataset tar shards (``key.<ext>`` + ``key.txt``, one caption a line)
    and ``sizes.json``; returns the shard paths."""
    import webdataset as wds

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    with wds.ShardWriter(str(out / f"{prefix}-%05d.tar"), maxcount=per_shard,
                         verbose=0) as sink:
        for s in ds.samples:
            data = s.read()
            data = Path(data).read_bytes() if isinstance(data, str) else data
            ext = Path(s.key).suffix.lower().lstrip(".") or "jpg"
            ext = ext if ext in IMAGE_EXTS else "jpg"
            sink.write({"__key__": Path(s.key).stem.replace(".", "_"), ext: data,
                        "txt": "\n".join(s.captions).encode()})
            name = Path(sink.fname).name
            sizes[name] = sizes.get(name, 0) + 1
    (out / "sizes.json").write_text(json.dumps(sizes, indent=1) + "\n")
    return sorted(str(out / n) for n in sizes)


def load_wds(shards, split: str = "") -> PairDataset:
    """Tar shards (a glob, a directory, or a list), indexed for random access (evaluation).
    Each sample: ``key.jpg|jpeg|png|webp`` + ``key.txt`` (one caption per line). Training reads
    shards as a stream instead (:func:`stream_pairs`)."""
    files = shard_files(shards, split)
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
    root, fmt = detect_format(cfg)
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


def detect_format(cfg: dict) -> tuple[Path, str]:
    """(expanded data.root, format): ``data.format``, or for ``auto`` what the folder holds."""
    if "root" not in cfg:
        raise ConfigError("data.root is not set (a dataset directory)")
    root = expand_path(cfg["root"])
    fmt = cfg.get("format", "auto")
    if fmt == "auto":
        if (root / "captions.csv").is_file():
            fmt = "csv"
        elif cfg.get("karpathy_json") or list(root.glob("dataset_*.json")):
            fmt = "karpathy"
        elif root.suffix == ".tar" or list(root.glob("*.tar")) or list(root.glob("*/*.tar")):
            fmt = "wds"
        elif not root.exists():
            raise ConfigError(f"{root}: dataset directory not found (a relative data.root is "
                              f"relative to the working directory, {Path.cwd()}; pass "
                              f"--set data.root=DIR)")
        else:
            raise ConfigError(f"{root}: cannot tell the dataset format (expected captions.csv, "
                              f"dataset_*.json or *.tar shards); set data.format")
    return root, fmt


def check_readable(ds: PairDataset) -> np.ndarray:
    """Boolean mask of images that decode; used when no cache pass has checked them."""
    ok = np.ones(len(ds), dtype=bool)
    for i in range(len(ds)):
        try:
            ds.load_image(i)
        except ImageLoadError:
            ok[i] = False
    return ok
