"""Phone-sized test photos for ``edgeclip-bench --photo-size``: real images upscaled to a camera's
size and saved as JPEG, every third one stored rotated with an EXIF orientation tag (as phones
store portrait shots), so the end-to-end figure includes big-photo decoding and orientation."""

from __future__ import annotations

import io
import os
from pathlib import Path

from ..errors import ConfigError

#: orientation tag -> the transpose a camera applies before storing (undone by the tag)
_STORE = {6: "ROTATE_90", 8: "ROTATE_270", 3: "ROTATE_180"}


def parse_photo_size(text: str) -> tuple[int, int]:
    """``"4032x3024"`` -> (4032, 3024)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--photo-size {text!r}: use WIDTHxHEIGHT, e.g. 4032x3024.") from None
    if not (16 <= w <= 20000 and 16 <= h <= 20000):
        raise ConfigError(f"--photo-size {text!r}: each side must be 16..20000 pixels.")
    return w, h


def write_photos(sources: list, n: int, size: tuple[int, int], folder: Path,
                 quality: int = 90) -> list[Path]:
    """Write ``n`` JPEGs of ``size`` (width, height) into ``folder`` from ``sources`` (paths or
    encoded bytes, reused in turn); every third carries EXIF orientation 6, 3 or 8."""
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        img = Image.open(src if isinstance(src, (str, os.PathLike)) else io.BytesIO(bytes(src)))
        upright = img.convert("RGB").resize(size, Image.Resampling.BILINEAR)
        kw = {}
        if i % 3 == 2:
            o = (6, 3, 8)[(i // 3) % 3]
            upright = upright.transpose(getattr(Image.Transpose, _STORE[o]))
            exif = Image.Exif()
            exif[0x0112] = o
            kw["exif"] = exif.tobytes()
        path = folder / f"photo{i:04d}.jpg"
        upright.save(path, format="JPEG", quality=quality, **kw)
        out.append(path)
    return out
