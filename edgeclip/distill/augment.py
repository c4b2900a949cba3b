"""Train-time image augmentation that survives the frozen-prefix cache.

The frozen prefix of an image tower is computed once per image and cached (:mod:`.cache`), which
by itself rules out augmentation. Here every training image also gets ``K`` augmented *views*
(random resized crop + horizontal flip, torchvision ``RandomResizedCrop`` semantics), each run
once through the frozen prefix and cached beside the plain view (``augprefix-<key>.npy``, fp16,
shape ``(N, K, C, H, W)``). Each epoch, every image draws one of its views (the plain one
included unless ``plain = false``) from an RNG seeded by ``(run.seed, epoch)``, so a run is a
pure function of its seed, and a resumed run sees the same views. Evaluation never sees a view:
it reads the plain prefix cache.

Config (``[data]``)::

    augment_views = 4                    # K views per training image; 0 (default): off
    augment = {crop_scale = [0.6, 1.0],  # crop area, fraction of the image
               crop_ratio = [0.75, 1.3333333],  # crop aspect ratio (w / h), log-uniform
               flip = true,              # horizontal flip with probability 1/2
               plain = true,             # the plain view is one of the K + 1 choices each epoch
               seed = 0}                 # the views' RNG (the cache); run.seed picks among them

The views are a function of ``(augment.seed, image index, view)`` only, so every run (any
``run.seed``) shares one cache. Needs the prefix cache (``image.freeze_blocks`` > 0 and
``train.cache_prefix = true``) and an indexed dataset (not streamed shards).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..errors import ConfigError
from ..manifest import PreprocessCfg
from ..preprocess import _RESAMPLE, ImageLoadError, Normalizer
from .data import PairDataset

DEFAULTS = {"crop_scale": [0.6, 1.0], "crop_ratio": [0.75, 4.0 / 3.0], "flip": True,
            "plain": True, "seed": 0}


def augment_settings(data_cfg: dict) -> tuple[int, dict]:
    """(views, params) from the ``[data]`` table; views = 0 means off. Bad values: ConfigError."""
    views = data_cfg.get("augment_views", 0) or 0
    if not isinstance(views, int) or isinstance(views, bool) or views < 0:
        raise ConfigError(f"data.augment_views must be a non-negative integer, got {views!r}")
    user = data_cfg.get("augment") or {}
    if not isinstance(user, dict):
        raise ConfigError(f"data.augment must be a table, e.g. {{crop_scale = [0.6, 1.0], "
                          f"flip = true}}; got {user!r}")
    unknown = set(user) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"data.augment: unknown key(s) {sorted(unknown)} (known: "
                          f"{', '.join(DEFAULTS)})")
    p = {**DEFAULTS, **user}
    for k in ("crop_scale", "crop_ratio"):
        v = p[k]
        if (not isinstance(v, (list, tuple)) or len(v) != 2
                or not all(isinstance(x, (int, float)) for x in v) or not 0 < v[0] <= v[1]):
            raise ConfigError(f"data.augment.{k} must be [low, high] with 0 < low <= high, "
                              f"got {v!r}")
        p[k] = [float(v[0]), float(v[1])]
    if p["crop_scale"][1] > 1.0:
        raise ConfigError(f"data.augment.crop_scale must lie in (0, 1], got {p['crop_scale']}")
    p["flip"], p["plain"], p["seed"] = bool(p["flip"]), bool(p["plain"]), int(p["seed"])
    return views, p


def crop_box(w: int, h: int, rng: np.random.Generator, scale, ratio) -> tuple[int, int, int, int]:
    """(left, top, width, height): torchvision ``RandomResizedCrop.get_params`` with a numpy RNG
    (10 tries of area x log-uniform aspect ratio, then a centre crop with the ratio clamped)."""
    area = w * h
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        ar = math.exp(rng.uniform(*log_r))
        cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return left, top, cw, ch
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def augmented_view(img: Image.Image, cfg: PreprocessCfg, params: dict, seed: int, index: int,
                   view: int) -> np.ndarray:
    """One augmented view of an RGB image, float32 (3, H, W) normalised like ``cfg``: a random
    crop resized to ``cfg.size`` (the crop replaces the resize + centre crop), maybe mirrored.
    A pure function of (``seed``, ``index``, ``view``)."""
    rng = np.random.default_rng([seed, index, view])
    w, h = img.size
    left, top, cw, ch = crop_box(w, h, rng, params["crop_scale"], params["crop_ratio"])
    th, tw = cfg.size
    out = img.resize((tw, th), _RESAMPLE[cfg.interpolation], box=(left, top, left + cw, top + ch))
    if params["flip"] and rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return Normalizer(cfg)(np.asarray(out, dtype=np.uint8))


class _ViewSet(torch.utils.data.Dataset):
    def __init__(self, ds: PairDataset, cfg: PreprocessCfg, views: int, params: dict):
        self.ds, self.cfg, self.views, self.params = ds, cfg, views, params

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        try:
            img = self.ds.load_image(i)
        except ImageLoadError:
            return i, None
        return i, np.stack([augmented_view(img, self.cfg, self.params, self.params["seed"], i,
                                           v) for v in range(1, self.views + 1)])


class AugmentedPrefix:
    """The plain prefix cache + ``K`` cached views per image; :meth:`rows` picks one per image
    for an epoch."""

    def __init__(self, plain: np.ndarray, views: np.ndarray, params: dict, path: Path):
        self.plain, self.views, self.params, self.path = plain, views, params, path
        self.k = views.shape[1]
        self._plan: dict = {}

    def choice(self, epoch: int, seed: int) -> np.ndarray:
        """(N,) view of each image in ``epoch``: 0 = plain, 1..K = augmented."""
        if epoch not in self._plan:
            rng = np.random.default_rng([seed, epoch, 0xA06])
            low = 0 if self.params["plain"] else 1
            self._plan = {epoch: rng.integers(low, self.k + 1, size=self.plain.shape[0])}
        return self._plan[epoch]

    def rows(self, idx: np.ndarray, epoch: int, seed: int) -> np.ndarray:
        """fp16 prefix features of images ``idx`` (sorted ascending) as seen in ``epoch``."""
        v = self.choice(epoch, seed)[idx]
        out = np.empty((len(idx),) + self.plain.shape[1:], np.float16)
        p = v == 0
        if p.any():
            out[p] = self.plain[idx[p]]
        for j in range(1, self.k + 1):
            s = v == j
            if s.any():
                out[s] = self.views[idx[s], j - 1]
        return out


def augmented_prefix(tower, preprocess: PreprocessCfg, ds: PairDataset, cache_dir, plain: dict,
                     views: int, params: dict, batch_size: int = 32, workers: int = 0,
                     device: str = "cpu") -> AugmentedPrefix:
    """Fill (or load) the cache of ``views`` augmented views of every image of ``ds`` through
    ``tower``'s frozen prefix. ``plain``: :func:`.cache.prefix_features` of the same data."""
    from .cache import _key, module_digest, prefix_runner

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    frozen = torch.nn.ModuleList(tower.blocks[:tower.freeze_blocks])
    key = _key("augprefix", type(tower).__name__, tower.freeze_blocks, module_digest(frozen),
               preprocess.to_dict(), ds.identity, views, params["crop_scale"],
               params["crop_ratio"], params["flip"], params["seed"])
    path = cache_dir / f"augprefix-{key}.npy"
    if path.is_file():
        return AugmentedPrefix(plain["features"], np.load(path, mmap_mode="r"), params, path)
    was_training = tower.training
    tower.eval()
    run = prefix_runner(tower, preprocess, device)
    shape = plain["features"].shape[1:]
    tmp = str(path) + f".tmp{os.getpid()}.npy"
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                    shape=(len(ds), views) + tuple(shape))
    loader = torch.utils.data.DataLoader(_ViewSet(ds, preprocess, views, params),
                                         batch_size=max(1, batch_size // views), shuffle=False,
                                         num_workers=workers, collate_fn=lambda b: b)
    for items in tqdm(loader, desc=f"augmented views x{views} (prefix cache)", leave=False):
        good = [(i, x) for i, x in items if x is not None]
        for i, x in items:
            if x is None:
                arr[i] = 0  # unreadable: the plain cache's ok mask already drops it
        if good:
            pix = torch.from_numpy(np.concatenate([x for _, x in good]))
            feats = run(pix).reshape((len(good), views) + tuple(shape))
            for j, (i, _) in enumerate(good):
                arr[i] = feats[j]
    arr.flush()
    del arr
    os.replace(tmp, path)
    tower.train(was_training)
    return AugmentedPrefix(plain["features"], np.load(path, mmap_mode="r"), params, path)


def setup_augmentation(cfg: dict, model, ds: PairDataset, cache_dir, plain: dict | None,
                       workers: int = 0, device: str = "cpu") -> AugmentedPrefix | None:
    """What the trainer calls: None when ``data.augment_views`` is 0; a clear ConfigError when
    augmentation cannot apply (no prefix cache, or streamed shards)."""
    views, params = augment_settings(cfg["data"])
    if not views:
        return None
    if ds is None:
        raise ConfigError("data.augment_views: augmentation works on an indexed dataset with the "
                          "frozen-prefix cache, not on streamed tar shards; set "
                          "data.stream = false or data.augment_views = 0")
    if plain is None:
        raise ConfigError("data.augment_views needs the frozen-prefix cache: set the model's "
                          "image.freeze_blocks > 0 and train.cache_prefix = true, or "
                          "data.augment_views = 0")
    return augmented_prefix(model.image_encoder, model.preprocess, ds, cache_dir, plain, views,
                            params, workers=workers, device=device)
