import io
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

import edgeclip
from edgeclip import BundleError, EdgeClipError, Embedder, InputError
from edgeclip.embedder import Skipped


@pytest.fixture(scope="module")
def emb(tiny_bundle):
    return Embedder(tiny_bundle, backend="onnxruntime", threads=1)


def test_properties(emb):
    assert emb.dim == 16 and emb.backend == "onnxruntime-cpu" and emb.precision == "fp32"
    assert emb.towers == ("image", "text")
    assert len(emb.identity) == 64


def test_item_types_agree(emb, flickr_images):
    path = flickr_images[0]
    data = path.read_bytes()
    pil = Image.open(path)
    arr = np.asarray(Image.open(path).convert("RGB"))
    out = emb.embed_images([path, str(path), data, pil, arr])
    assert out.shape == (5, 16) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # files and bytes are JPEG-draft decoded (224 px for a 32-px model: at 1/2 scale); a PIL
    # image or an array the caller decoded is used as given (full size)
    for row in out[1:3]:
        np.testing.assert_allclose(row, out[0], atol=1e-5)
    np.testing.assert_allclose(out[4], out[3], atol=1e-5)
    assert float(out[0] @ out[3]) > 0.99
    from edgeclip.preprocess import load_image
    drafted = np.asarray(load_image(path, emb.manifest.towers["image"].preprocess))
    np.testing.assert_allclose(emb.embed_images([drafted])[0], out[0], atol=1e-5)


def test_batches_larger_than_max_batch_are_split(emb, flickr_images):
    items = flickr_images[:21]  # max_batch is 8
    big = emb.embed_images(items, batch_size=64)
    small = np.concatenate([emb.embed_images([p]) for p in items])
    np.testing.assert_allclose(big, small, atol=1e-5)
    texts = [f"a photo number {i}" for i in range(19)]
    np.testing.assert_allclose(emb.embed_texts(texts, batch_size=100),
                               np.concatenate([emb.embed_texts([t]) for t in texts]), atol=1e-5)


def test_thread_safe(emb, flickr_images):
    items = flickr_images[:40]
    texts = [f"a dog number {i} runs" for i in range(40)]
    want_i, want_t = emb.embed_images(items, batch_size=8), emb.embed_texts(texts)
    results, errors = {}, []

    def work(k):
        try:
            for _ in range(3):
                results[(k, "i")] = emb.embed_images(items, batch_size=8)
                results[(k, "t")] = emb.embed_texts(texts)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k in range(4):
        np.testing.assert_array_equal(results[(k, "i")], want_i)
        np.testing.assert_array_equal(results[(k, "t")], want_t)


def _bad_items(tmp_path, flickr_images):
    zero = tmp_path / "zero.jpg"
    zero.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    trunc = tmp_path / "truncated.jpg"
    trunc.write_bytes(flickr_images[1].read_bytes()[:2000])
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")
    return [flickr_images[0], zero, text, trunc, bomb.getvalue(), tmp_path / "missing.jpg",
            flickr_images[2], tmp_path, 3.5]


def test_bad_images_raise_with_index_and_path(emb, tmp_path, flickr_images):
    items = _bad_items(tmp_path, flickr_images)
    with pytest.raises(InputError, match=r"image 1 \(.*zero\.jpg\): zero-byte file") as e:
        emb.embed_images(items)
    assert e.value.index == 1 and e.value.item.endswith("zero.jpg")


def test_bad_images_skipped(emb, tmp_path, flickr_images):
    items = _bad_items(tmp_path, flickr_images)
    out, skipped = emb.embed_images(items, on_error="skip", batch_size=4)
    assert out.shape == (2, 16)
    np.testing.assert_allclose(out, emb.embed_images([flickr_images[0], flickr_images[2]]),
                               atol=1e-6)
    assert [s.index for s in skipped] == [1, 2, 3, 4, 5, 7, 8]
    reasons = {s.index: s.reason for s in skipped}
    assert "zero-byte" in reasons[1] and "not an image" in reasons[2]
    assert "cannot decode" in reasons[3] and "bomb" in reasons[4].lower()
    assert "not found" in reasons[5] and "directory" in reasons[7]
    assert "unsupported item type float" in reasons[8]
    assert all(isinstance(s, Skipped) for s in skipped)


def test_bad_texts(emb):
    with pytest.raises(InputError, match=r"text 1: not a string \(int\)"):
        emb.embed_texts(["ok", 5])
    with pytest.raises(InputError, match="text 0: empty text"):
        emb.embed_texts(["  "])
    with pytest.raises(InputError, match="not one string"):
        emb.embed_texts("a dog")
    out, skipped = emb.embed_texts(["a dog", None, "", "x" * 10_000, b"bytes"], on_error="skip")
    assert out.shape == (2, 16)
    assert [s.index for s in skipped] == [1, 2, 4]
    np.testing.assert_allclose(out[1], emb.embed_text("x" * 10_000), atol=1e-6)


def test_bad_arguments(emb):
    with pytest.raises(EdgeClipError, match="on_error='ignore'"):
        emb.embed_images([], on_error="ignore")
    with pytest.raises(EdgeClipError, match="batch_size=0"):
        emb.embed_texts(["a"], batch_size=0)
    assert emb.embed_images([]).shape == (0, 16)


def test_unknown_backend_and_precision(tiny_bundle):
    with pytest.raises(EdgeClipError, match="unknown backend 'gpu'"):
        Embedder(tiny_bundle, backend="gpu")
    with pytest.raises(BundleError, match="no int8 model for this backend"):
        Embedder(tiny_bundle, precision="int8")
    with pytest.raises(edgeclip.BackendUnavailableError, match="CUDAExecutionProvider"):
        Embedder(tiny_bundle, backend="onnxruntime-cuda")


def test_default_model_missing_is_clear(monkeypatch, tmp_path):
    import edgeclip.embedder as m
    monkeypatch.delenv("EDGECLIP_MODEL", raising=False)
    monkeypatch.setattr(m, "default_model_path", lambda: tmp_path / "none")
    with pytest.raises(BundleError, match="no built-in default model"):
        Embedder()


def test_env_model(monkeypatch, tiny_bundle):
    monkeypatch.setenv("EDGECLIP_MODEL", str(tiny_bundle))
    assert Embedder(towers=("text",)).towers == ("text",)


def test_corrupt_graph_is_a_bundle_error(tiny_bundle, tmp_path):
    from edgeclip.manifest import read_manifest, write_manifest
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    (b / "image.fp32.onnx").write_bytes(b"garbage" * 10)
    m = read_manifest(b)
    write_manifest(m, b)  # checksums match the garbage: the graph itself must be refused
    with pytest.raises(BundleError, match="ONNX Runtime cannot load this graph"):
        Embedder(b)
