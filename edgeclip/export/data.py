"""Real images and captions for calibration and verification, from a dataset folder.

Layout (Flickr8k's): ``images/`` (or image files directly in the folder), optional
``captions.csv`` (columns ``image,caption``) or ``captions.txt`` (one caption a line), optional
``splits/<split>.txt`` (image file names, one a line).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..paths import expand_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class SplitData:
    images: list[Path]
    captions: list[str]
    txt_to_img: np.ndarray  # int64 (len(captions),): index into images, -1 when unknown


def _image_dir(root: Path) -> Path:
    return root / "images" if (root / "images").is_dir() else root


def load_split(root: str | Path, split: str | None = None) -> SplitData:
    """Images of ``split`` (all when the folder has no splits) and their captions."""
    root = expand_path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such data directory. Pass a folder of images (e.g. "
                          f"flickr8k/ with images/ and captions.csv).")
    img_dir = _image_dir(root)
    split_file = root / "splits" / f"{split}.txt" if split else None
    if split_file is not None and split_file.is_file():
        names = [ln.strip() for ln in split_file.read_text().splitlines() if ln.strip()]
        images = [img_dir / n for n in names]
        missing = [p for p in images if not p.is_file()]
        if missing:
            raise ConfigError(f"{split_file}: {len(missing)} listed images are missing, e.g. "
                              f"{missing[0]}.")
    elif split and (root / "splits").is_dir():
        have = sorted(p.stem for p in (root / "splits").glob("*.txt"))
        raise ConfigError(f"{root}: no split '{split}' (have: {', '.join(have) or 'none'}).")
    else:
        images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ConfigError(f"{img_dir}: no images ({', '.join(IMAGE_SUFFIXES)}).")
    captions, owners = _captions(root, {p.name: i for i, p in enumerate(images)})
    return SplitData(images, captions, np.asarray(owners, dtype=np.int64))


def _captions(root: Path, index: dict[str, int]) -> tuple[list[str], list[int]]:
    csv_path, txt_path = root / "captions.csv", root / "captions.txt"
    caps: list[str] = []
    owners: list[int] = []
    if csv_path.is_file():
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "caption" not in reader.fieldnames:
                raise ConfigError(f"{csv_path}: needs a 'caption' column (and 'image').")
            for row in reader:
                i = index.get(row.get("image") or "", -1)
                if i >= 0 or "image" not in reader.fieldnames:
                    caps.append(row["caption"])
                    owners.append(i)
    elif txt_path.is_file():
        caps = [ln.strip() for ln in txt_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        owners = [-1] * len(caps)
    return caps, owners


def sample(items: list, count: int, seed: int = 0) -> list:
    """A fixed random sample of ``count`` items (all when there are fewer), order kept stable."""
    if count >= len(items):
        return list(items)
    pick = np.sort(np.random.default_rng(seed).choice(len(items), size=count, replace=False))
    return [items[i] for i in pick]


#: Real photographs inside scikit-image's wheel, with a caption each: verification data when no
#: dataset folder is given.
BUILTIN_PHOTOS = {
    "astronaut.png": "an astronaut in a white space suit in front of a flag",
    "chelsea.png": "a tabby cat looking at the camera",
    "coffee.png": "a cup of coffee on a saucer",
    "rocket.jpg": "a rocket standing on its launch pad",
    "motorcycle_left.png": "a motorcycle parked in a garage",
    "hubble_deep_field.jpg": "many galaxies in deep space",
    "horse.png": "the silhouette of a horse",
    "coins.png": "old coins on a table",
    "moon.png": "the surface of the moon",
    "grass.png": "a patch of green grass",
    "gravel.png": "a close view of gravel",
    "brick.png": "a brick wall",
    "camera.png": "a man with a camera on a tripod",
    "retina.jpg": "a photograph of the retina of an eye",
}


def builtin_samples() -> SplitData:
    """scikit-image's photographs and their captions (ConfigError when it is not installed)."""
    try:
        import skimage
    except ImportError:
        raise ConfigError("no verification data: pass --eval-data or --calib-data (a folder of "
                          "images with captions.csv), or pip install scikit-image for its "
                          "built-in photographs.") from None
    root = Path(skimage.__file__).parent / "data"
    names = [n for n in BUILTIN_PHOTOS if (root / n).is_file()]
    if not names:
        raise ConfigError(f"{root}: scikit-image ships no photographs here; pass --eval-data.")
    return SplitData([root / n for n in names], [BUILTIN_PHOTOS[n] for n in names],
                     np.arange(len(names), dtype=np.int64))
