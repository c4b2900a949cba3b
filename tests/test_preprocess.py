"""Preprocessing: parity with torchvision's transform, image modes, EXIF, bad files."""

import io
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeclip.manifest import PreprocessCfg
from edgeclip.preprocess import ImageLoadError, load_image, preprocess_image


def _torchvision_transforms():
    """torchvision's own transforms code, loaded from a reference copy without its C extension
    (PyPI's torchvision binary does not load beside the CPU build of torch; PIL transforms do
    not need it). .ci/run installs it to $EDGECLIP_TORCHVISION_REF."""
    root = os.environ.get("EDGECLIP_TORCHVISION_REF")
    if not root or not (Path(root) / "torchvision").is_dir():
        pytest.skip("torchvision reference copy not found: set EDGECLIP_TORCHVISION_REF to a "
                    "`pip install --no-deps --target DIR torchvision` directory (.ci/run does)")
    pytest.importorskip("torch")
    saved = {k: v for k, v in sys.modules.items() if k == "torchvision" or
             k.startswith("torchvision.")}
    stub = types.ModuleType("torchvision")
    stub.__path__ = [str(Path(root) / "torchvision")]
    sys.modules["torchvision"] = stub
    try:
        import torchvision.transforms as T
        return T
    finally:  # leave no trace: other libraries probe for torchvision
        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def _reference(T, cfg: PreprocessCfg):
    interp = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
              "nearest": T.InterpolationMode.NEAREST}[cfg.interpolation]
    if cfg.resize_mode == "shortest":
        resize = [T.Resize(cfg.size[0], interpolation=interp), T.CenterCrop(cfg.size)]
    else:
        resize = [T.Resize(cfg.size, interpolation=interp)]
    return T.Compose(resize + [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])


@pytest.mark.parametrize("mode,interp", [("shortest", "bicubic"), ("squash", "bilinear"),
                                         ("shortest", "bilinear")])
def test_parity_with_torchvision_on_real_photos(flickr_images, mode, interp):
    T = _torchvision_transforms()
    cfg = PreprocessCfg(size=(224, 224), resize_mode=mode, interpolation=interp,
                        mean=(0.48145466, 0.4578275, 0.40821073),
                        std=(0.26862954, 0.26130258, 0.27577711))
    ref = _reference(T, cfg)
    rng = np.random.default_rng(0)
    worst = 0.0
    images = flickr_images[::97][:60]
    assert len(images) >= 50
    for i, path in enumerate(images):
        img = Image.open(path).convert("RGB")
        if i % 3:  # non-square and up/down-scaled copies exercise resize and crop
            w, h = int(rng.integers(120, 640)), int(rng.integers(120, 640))
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        want = ref(img).numpy()
        got = preprocess_image(img, cfg)
        assert got.shape == want.shape == (3, 224, 224)
        worst = max(worst, float(np.abs(got - want).max()))
    assert worst <= 1e-5, worst


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1", "RGB"])
def test_modes_become_rgb(mode):
    base = Image.new("RGB", (40, 30), (200, 100, 50))
    if mode == "I;16":
        arr = (np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50)
        img = Image.fromarray(arr)
        assert img.mode == "I;16"
    else:
        img = base.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    out = load_image(_png(img, format=fmt))
    assert out.mode == "RGB" and out.size == (40, 30)
    x = preprocess_image(out, PreprocessCfg(size=(16, 16)))
    assert x.shape == (3, 16, 16) and np.isfinite(x).all()


def test_transparent_pixels_are_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(load_image(_png(img)))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (60, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = _png(img, format="JPEG", exif=exif.tobytes())
    assert load_image(data).size == (20, 60)


@pytest.mark.parametrize("data,reason", [
    (b"", "zero bytes"),
    (b"this is not an image", "not an image"),
])
def test_bad_bytes(data, reason):
    with pytest.raises(ImageLoadError, match=reason):
        load_image(data)


def test_truncated_jpeg(flickr_images):
    data = flickr_images[0].read_bytes()
    with pytest.raises(ImageLoadError, match="cannot decode"):
        load_image(data[: len(data) // 3])


def test_decompression_bomb_refused():
    # a 20000x20000 1-bit PNG compresses to a few KB
    img = Image.new("1", (20000, 20000))
    data = _png(img)
    assert len(data) < 200_000
    with pytest.raises(ImageLoadError, match="(?i)decompression bomb|Mpx"):
        load_image(data)


def test_bad_arrays():
    with pytest.raises(ImageLoadError, match="HxWx3 uint8"):
        load_image(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ImageLoadError, match="HxWx3 uint8"):
        load_image(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(ImageLoadError, match="unsupported item type int"):
        load_image(42)


def test_longest_mode_pads():
    img = Image.new("RGB", (100, 50), (255, 255, 255))
    cfg = PreprocessCfg(size=(32, 32), resize_mode="longest", mean=(0, 0, 0), std=(1, 1, 1))
    x = preprocess_image(img, cfg)
    assert x[:, 0, :].max() == 0.0 and x[:, 16, :].min() == pytest.approx(1.0)
