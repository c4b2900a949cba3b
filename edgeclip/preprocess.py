"""Image loading and preprocessing in numpy + Pillow, driven only by the manifest.

The numpy twin of torchvision's ``Resize -> CenterCrop -> ToTensor -> Normalize`` on PIL images
(tested for parity on real photos). Loading applies EXIF orientation and converts every mode
(L, LA, P, RGBA, CMYK, I;16, ...) to RGB; alpha is composited on white.

Big JPEGs (phone photos) are decoded by libjpeg at 1/2, 1/4 or 1/8 scale (``Image.draft``) when
the model's input size allows: the smallest scale whose decoded image still has at least
:data:`DRAFT_MARGIN` source pixels per output pixel on each side, so the resize filter always
downsamples (never an upscale of a too-small draft). EXIF orientation is read from the tag and
applied to the decoded (drafted) pixels; an upright photo is never copied.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps

from .manifest import PreprocessCfg

ImageItem = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]

#: Refuse images above this many pixels (Pillow's own bomb limit is ~89 Mpx with a warning and
#: 179 Mpx as an error; a 16k x 16k photo is already far beyond any edge camera).
MAX_IMAGE_PIXELS = 128_000_000

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


#: JPEG draft decoding keeps at least this many decoded pixels per output pixel on each side of
#: the resize, so the resize filter always downsamples (1.5: a 4032x3024 photo for a 224-px
#: shortest-side resize decodes at 1/8 scale, 504x378). Measured with the default model on real
#: photos upscaled to 12 MP JPEGs (benchmarks/results/photo_e2e.json, "draft_margin"): embedding
#: cosine to the full-size decode, mean / min, Flickr8k 0.99917 / 0.99781 at 1/8 scale vs
#: 0.99944 / 0.99785 at 1/4 (margin 2); scikit-image photos 0.99916 / 0.99816 vs 0.99951 /
#: 0.99914. Both are far above the 0.995 gate; 1/4 costs ~60% more preprocessing CPU per 12 MP
#: photo (decode + resize 36 vs 23 ms), which on two cores is the indexing bottleneck.
DRAFT_MARGIN = 1.5

#: EXIF Orientation tag values -> the transpose that makes the pixels upright (as Pillow's
#: ``ImageOps.exif_transpose``).
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112


class ImageLoadError(ValueError):
    """An item could not be decoded; the message is the reason (the Embedder wraps it)."""


def describe_item(item: Any) -> str:
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"<{len(item)} bytes>"
    if isinstance(item, Image.Image):
        return f"<PIL image {item.mode} {item.size[0]}x{item.size[1]}>"
    if isinstance(item, np.ndarray):
        return f"<array {item.dtype} {item.shape}>"
    return f"<{type(item).__name__}>"


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB. Transparent pixels become white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr8 = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def exif_orientation(img: Image.Image) -> int:
    """The EXIF Orientation tag (1..8) of an opened image; 1 when absent or unreadable."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block must not make a decodable photo unreadable
        return 1
    return value if isinstance(value, int) and value in ORIENTATION_TRANSPOSE else 1


def draft_scale(size: tuple[int, int], cfg: PreprocessCfg, orientation: int = 1,
                margin: float | None = None) -> int:
    """The largest libjpeg scale denominator (8, 4, 2 or 1) for an image of ``size`` (stored
    orientation) such that the decoded image is at least ``margin`` times the resized size on
    each side (default :data:`DRAFT_MARGIN`). 1 means decode at full size."""
    margin = DRAFT_MARGIN if margin is None else margin
    w, h = size
    for s in (8, 4, 2):
        dw, dh = -(-w // s), -(-h // s)  # libjpeg rounds up
        if orientation >= 5:  # 5..8 swap the axes
            dw, dh = dh, dw
        if dw < 1 or dh < 1:
            continue
        nw, nh = _resized_size(dw, dh, cfg)
        if dw >= margin * nw and dh >= margin * nh:
            return s
    return 1


def upright(img: Image.Image, orientation: int, in_place: bool = False) -> Image.Image:
    """Apply an EXIF orientation to the pixels; the same object when there is nothing to do.

    The result carries no orientation tag any more (Pillow's ``exif_transpose`` removes it from
    EXIF and XMP), so loading it again does not rotate it twice. ``in_place``: transpose ``img``
    itself (an image opened here) instead of a new image (a caller's)."""
    if orientation not in ORIENTATION_TRANSPOSE:
        return img
    if in_place:
        ImageOps.exif_transpose(img, in_place=True)
        return img
    return ImageOps.exif_transpose(img)


def load_image(item: ImageItem, cfg: PreprocessCfg | None = None, *,
               draft: bool = True) -> Image.Image:
    """Decode one item to an RGB PIL image with EXIF orientation applied.

    With ``cfg`` (the model's preprocessing) a JPEG opened here is decoded at the smallest
    libjpeg scale that still covers ``cfg``'s resize with :data:`DRAFT_MARGIN` to spare
    (``draft=False``: always full size). Raises :class:`ImageLoadError` with a short reason on
    anything that is not a readable image.
    """
    if isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
            raise ImageLoadError(f"arrays must be HxWx3 uint8 RGB, got {item.dtype} {item.shape}")
        if item.shape[0] == 0 or item.shape[1] == 0:
            raise ImageLoadError("empty array")
        return Image.fromarray(np.ascontiguousarray(item), mode="RGB")
    opened_here = True
    if isinstance(item, Image.Image):
        img = item
        opened_here = False
    elif isinstance(item, (bytes, bytearray, memoryview)):
        if len(item) == 0:
            raise ImageLoadError("zero bytes")
        img = _open(io.BytesIO(bytes(item)))
    elif isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.exists():  # "~/photo.jpg", "$PHOTOS/x.jpg" (a file literally named so wins)
            from .paths import expand_path
            path = expand_path(item)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ImageLoadError("file not found") from None
        except OSError as e:
            raise ImageLoadError(f"cannot read: {e.strerror or e}") from None
        if path.is_dir():
            raise ImageLoadError("is a directory")
        if size == 0:
            raise ImageLoadError("zero-byte file")
        try:
            img = _open(path)
        except PermissionError:
            raise ImageLoadError("permission denied") from None
    else:
        raise ImageLoadError(f"unsupported item type {type(item).__name__}: pass a path, bytes, a "
                             f"PIL image or an HxWx3 uint8 array")
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageLoadError(f"image is {w}x{h} = {w * h / 1e6:.0f} Mpx, above the "
                             f"{MAX_IMAGE_PIXELS / 1e6:.0f} Mpx limit (decompression bomb?)")
    if w == 0 or h == 0:
        raise ImageLoadError("empty image")
    try:
        orientation = exif_orientation(img)
        if opened_here and draft and cfg is not None and img.format == "JPEG":
            s = draft_scale((w, h), cfg, orientation)
            if s > 1:
                img.draft(None, (w // s, h // s))
        img.load()
        return to_rgb(upright(img, orientation, in_place=opened_here))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageLoadError(f"cannot decode image: {e}") from None


def _open(src) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(src)
    except Image.DecompressionBombWarning as e:
        raise ImageLoadError(f"decompression bomb refused: {e}") from None
    except Image.DecompressionBombError as e:
        raise ImageLoadError(f"decompression bomb refused: {e}") from None
    except (Image.UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        msg = "not an image (unrecognised format)" if isinstance(
            e, Image.UnidentifiedImageError) else f"cannot open image: {e}"
        raise ImageLoadError(msg) from None


def _resized_size(w: int, h: int, cfg: PreprocessCfg) -> tuple[int, int]:
    """(new_w, new_h), the same arithmetic as torchvision's ``Resize``."""
    th, tw = cfg.size
    if cfg.resize_mode == "squash":
        return tw, th
    if cfg.resize_mode == "shortest":
        target = min(th, tw)
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = target, int(target * long / short)
        return (new_short, new_long) if w <= h else (new_long, new_short)
    # longest: fit inside, keep aspect, pad later
    target = max(th, tw)
    long, short = (w, h) if w >= h else (h, w)
    new_long, new_short = target, max(1, int(target * short / long))
    return (new_long, new_short) if w >= h else (new_short, new_long)


def resize_crop(img: Image.Image, cfg: PreprocessCfg) -> Image.Image:
    """Resize and crop (or pad) a PIL RGB image to ``cfg.size``."""
    th, tw = cfg.size
    w, h = img.size
    nw, nh = _resized_size(w, h, cfg)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), _RESAMPLE[cfg.interpolation])
    if cfg.resize_mode == "longest":
        canvas = Image.new("RGB", (tw, th), (cfg.fill,) * 3)
        canvas.paste(img, ((tw - nw) // 2, (th - nh) // 2))
        return canvas
    if cfg.crop in ("center", "center_floor") and (nw, nh) != (tw, th):
        if nw < tw or nh < th:  # torchvision pads with zeros, then crops
            canvas = Image.new("RGB", (max(nw, tw), max(nh, th)), (0, 0, 0))
            canvas.paste(img, ((max(nw, tw) - nw) // 2, (max(nh, th) - nh) // 2))
            img, nw, nh = canvas, max(nw, tw), max(nh, th)
        if cfg.crop == "center_floor":  # Hugging Face image processors' offsets
            top, left = (nh - th) // 2, (nw - tw) // 2
        else:  # torchvision's
            top = int(round((nh - th) / 2.0))
            left = int(round((nw - tw) / 2.0))
        img = img.crop((left, top, left + tw, top + th))
    elif cfg.crop == "none" and (nw, nh) != (tw, th):
        img = img.resize((tw, th), _RESAMPLE[cfg.interpolation])
    return img


class Normalizer:
    """uint8 HWC -> normalised float32 CHW: ``x * scale - shift`` with the constants folded once
    (``scale = 1 / (255 * std)``, ``shift = mean / std``): two passes over the pixels."""

    def __init__(self, cfg: PreprocessCfg):
        mean = np.asarray(cfg.mean, dtype=np.float64).reshape(3, 1, 1)
        std = np.asarray(cfg.std, dtype=np.float64).reshape(3, 1, 1)
        self.scale = (1.0 / (255.0 * std)).astype(np.float32)
        self.shift = (mean / std).astype(np.float32)

    def __call__(self, hwc: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        chw = hwc.transpose(2, 0, 1)
        if out is None:
            out = np.empty(chw.shape, dtype=np.float32)
        np.multiply(chw, self.scale, out=out, dtype=np.float32)
        out -= self.shift
        return out


def preprocess_image(item: ImageItem | Image.Image, cfg: PreprocessCfg) -> np.ndarray:
    """Load (if needed), resize, crop and normalise one image: float32 (3, H, W)."""
    img = load_image(item, cfg)
    img = resize_crop(img, cfg)
    return Normalizer(cfg)(np.asarray(img, dtype=np.uint8))
