"""Big photos: JPEG draft decoding (scale choice, no upscaling), EXIF orientations 1-8 on big and
small photos, and the embedding of a drafted 12 MP photo against the full-quality decode.

The real photos here are small (Flickr8k's are 224 px, scikit-image's 300-1000 px): the 12 MP
ones are those photos upscaled and saved as 4032x3024 JPEGs with EXIF orientation tags, not camera
originals (smoother than a phone's, so the embedding check is a floor, not a proof).
"""

import os

import io

import numpy as np
import pytest
from PIL import Image

from edgeclip.manifest import PreprocessCfg
from edgeclip.preprocess import (DRAFT_MARGIN, ORIENTATION_TRANSPOSE, draft_scale, load_image,
                                 preprocess_image, resize_crop)

CFG = PreprocessCfg(size=(224, 224))
# the transform that undoes each orientation (what a camera stores for an upright scene)
_INVERSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_270}


def _jpeg(img: Image.Image, orientation: int | None = None, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    kw = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    img.save(buf, format="JPEG", quality=quality, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo(flickr_images) -> Image.Image:
    """A real photo (Flickr8k), 320x240: landscape, below any draft scale."""
    return Image.open(flickr_images[3]).convert("RGB").resize((320, 240),
                                                               Image.Resampling.BICUBIC)


def test_inverse_table_really_inverts():
    img = Image.fromarray(np.arange(6 * 4 * 3, dtype=np.uint8).reshape(4, 6, 3))
    for o, inv in _INVERSE.items():
        back = img.transpose(inv).transpose(ORIENTATION_TRANSPOSE[o])
        assert np.array_equal(np.asarray(back), np.asarray(img)), o


@pytest.mark.parametrize("short,want", [
    (223, 1), (224, 1), (225, 1),           # around the input size: never a draft
    (335, 1), (670, 1),                     # 1/2 would be 335 < 1.5 x 224 = 336
    (671, 2), (672, 2),                     # ceil(671 / 2) = 336 >= 1.5 x 224
    (1340, 2), (1341, 4),                   # ceil(1341 / 4) = 336
    (2680, 4), (2681, 8), (3024, 8),        # ceil(2681 / 8) = 336; a 12 MP photo: 1/8
    (3024 * 2, 8),
])
def test_draft_scale_boundaries(short, want):
    assert DRAFT_MARGIN == 1.5
    assert draft_scale((short * 4 // 3, short), CFG) == want
    assert draft_scale((short, short * 4 // 3), CFG) == want
    # the drafted image still covers 1.5x the 224-px resize: never an upscale
    s = draft_scale((short * 4 // 3, short), CFG)
    assert -(-short // s) >= 1.5 * 224 or s == 1


def test_draft_scale_other_modes():
    squash = PreprocessCfg(size=(224, 224), resize_mode="squash")
    # squash needs both sides >= 336 after drafting: the short side decides
    assert draft_scale((4032, 900), squash) == 2 and draft_scale((4032, 3024), squash) == 8
    assert draft_scale((4032, 2680), squash) == 4
    longest = PreprocessCfg(size=(224, 224), resize_mode="longest")
    # longest: 4032 / 8 = 504 >= 336 along the long side; the short side shrinks in proportion
    assert draft_scale((4032, 3024), longest) == 8
    assert draft_scale((2680, 2000), longest) == 4  # 2680 / 8 = 335 < 336
    # a rotated (orientation 6) stored 3024x4032 photo is a 4032x3024 upright one
    assert draft_scale((3024, 4032), CFG, orientation=6) == draft_scale((4032, 3024), CFG)


@pytest.mark.parametrize("short,scale", [(225, 1), (447, 1), (896, 2), (1791, 4)])
def test_load_image_decodes_at_the_chosen_scale(photo, short, scale):
    w = short * 4 // 3
    data = _jpeg(photo.resize((w, short), Image.Resampling.BICUBIC))
    img = load_image(data, CFG)
    assert img.size == (-(-w // scale), -(-short // scale))
    assert min(img.size) >= min(1.5 * 224, short)  # never below the margin, never upscaled
    assert load_image(data).size == (w, short)  # no cfg: full decode
    assert load_image(data, CFG, draft=False).size == (w, short)


def test_png_and_webp_are_not_drafted(photo):
    big = photo.resize((1200, 900), Image.Resampling.BILINEAR)
    assert load_image(_jpeg(big), CFG).size == (600, 450)  # the same size as JPEG is drafted
    for fmt, kw in (("PNG", {"compress_level": 1}), ("WEBP", {"method": 0, "quality": 60})):
        buf = io.BytesIO()
        big.save(buf, format=fmt, **kw)
        img = load_image(buf.getvalue(), CFG)
        assert img.size == (1200, 900) and img.mode == "RGB", fmt


def _upright_reference(photo: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(photo.resize(size, Image.Resampling.BICUBIC), dtype=np.float32)


@pytest.mark.parametrize("big", [False, True], ids=["small", "12mp"])
def test_exif_orientations_give_the_upright_image(photo, big):
    upright = photo.resize((4032, 3024), Image.Resampling.BILINEAR) if big else photo
    ref = _upright_reference(upright, (504, 378) if big else upright.size)
    for o in range(1, 9):
        stored = upright if o == 1 else upright.transpose(_INVERSE[o])
        assert stored.size == (upright.size if o < 5 else upright.size[::-1])
        img = load_image(_jpeg(stored, orientation=o, quality=85), CFG)
        assert img.size[0] > img.size[1], (o, img.size)  # landscape again
        if big:
            assert img.size == (504, 378), (o, img.size)  # drafted at 1/8
        got = np.asarray(img, dtype=np.float32)
        err = float(np.abs(got - ref).mean())
        # a wrong orientation (e.g. a mirror) of the same photo is far off
        wrong = np.asarray(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), dtype=np.float32)
        err_wrong = float(np.abs(wrong - ref).mean())
        assert err < 4.0 and err_wrong > 4 * err, (o, err, err_wrong)


def test_loaded_photo_is_not_rotated_twice(photo):
    stored = photo.transpose(_INVERSE[6])
    once = load_image(_jpeg(stored, orientation=6), CFG)
    assert once.size == photo.size
    twice = load_image(once, CFG)  # e.g. preprocess_image(load_image(path), cfg)
    assert twice.size == photo.size
    np.testing.assert_array_equal(np.asarray(twice), np.asarray(once))
    np.testing.assert_array_equal(preprocess_image(once, CFG),
                                  preprocess_image(_jpeg(stored, orientation=6), CFG))


def test_upright_photo_is_not_copied(photo):
    img = Image.open(io.BytesIO(_jpeg(photo, orientation=1)))
    img.load()
    assert load_image(img) is img  # orientation 1, already RGB: no copy


def test_12mp_embedding_matches_full_decode():
    skimage = pytest.importorskip("skimage", reason="the photos come from scikit-image")
    import edgeclip
    from edgeclip.embedder import default_model_path
    if not (default_model_path() / "manifest.json").is_file():
        pytest.skip("this checkout ships no default model")
    emb = edgeclip.Embedder(backend="onnxruntime", towers=("image",), threads=1)
    cfg = emb.manifest.towers["image"].preprocess
    data_dir = os.path.join(os.path.dirname(skimage.__file__), "data")
    names = ["chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg"]
    photos, full = [], []
    for name, o in zip(names, (1, 6, 3, 8)):
        upright = Image.open(os.path.join(data_dir, name)).convert("RGB").resize(
            (4032, 3024), Image.Resampling.BILINEAR)
        data = _jpeg(upright if o == 1 else upright.transpose(_INVERSE[o]), orientation=o)
        photos.append(data)
        ref = load_image(data, cfg, draft=False)  # full-size decode, EXIF applied
        assert ref.size == (4032, 3024)
        full.append(np.asarray(resize_crop(ref, cfg), dtype=np.uint8))
        assert load_image(data, cfg).size == (504, 378)  # 1/8 scale
    a = emb.embed_images(photos)  # drafted decode
    b = emb.embed_images(full)    # the full-quality path
    cos = (a * b).sum(1)
    assert cos.mean() >= 0.995 and cos.min() >= 0.99, cos
