"""The built-in default model: loads with no argument, fits its size budget, finds real photos."""

import sys
from pathlib import Path

import numpy as np
import pytest

import edgeclip
from edgeclip.embedder import default_model_path
from edgeclip.manifest import load_bundle

pytestmark = pytest.mark.skipif(not (default_model_path() / "manifest.json").is_file(),
                                reason="this checkout ships no default model")


def test_loads_with_no_argument_and_is_small():
    emb = edgeclip.Embedder(backend="onnxruntime")
    assert emb.dim == 256 and emb.precision == "int8" and emb.backend == "onnxruntime-cpu"
    manifest, root = load_bundle(default_model_path())
    total = sum((root / f).stat().st_size for f in manifest.files)
    assert total <= 40e6, total
    report = (root / "report.json")
    assert report.is_file()
    for tower in ("image", "text"):
        assert {m.precision for m in manifest.towers[tower].models} == {"fp16", "int8"}


def test_finds_real_photos_by_text():
    skimage = pytest.importorskip("skimage", reason="demo photos need scikit-image")
    data = Path(skimage.__file__).parent / "data"
    # the same queries benchmarks/default_candidates.py checks when it chooses a default model:
    # concepts of its training data (Flickr8k: people, animals, vehicles)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from default_candidates import QUERIES as queries, SEARCH_PHOTOS as names
    emb = edgeclip.Embedder(backend="onnxruntime")
    img = emb.embed_images([data / n for n in names])
    txt = emb.embed_texts(list(queries))
    for row, want in zip(txt @ img.T, queries.values()):
        top2 = [names[i] for i in np.argsort(-row)[:2]]
        assert want in top2, (want, top2)


def test_int8_agrees_with_fp16(flickr_images):
    int8 = edgeclip.Embedder(backend="onnxruntime", precision="int8")
    fp16 = edgeclip.Embedder(backend="onnxruntime", precision="fp16")
    items = flickr_images[:16]
    cos = (int8.embed_images(items) * fp16.embed_images(items)).sum(1)
    assert cos.min() > 0.98, cos.min()
    caps = ["a dog runs through the grass", "two children play on the beach"]
    assert (int8.embed_texts(caps) * fp16.embed_texts(caps)).sum(1).min() > 0.98
