"""Zero-shot classification: Embedder.classify and `edgeclip classify` on real photos."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeclip import Embedder
from edgeclip.errors import InputError
from edgeclip.zeroshot import (DEFAULT_LOGIT_SCALE, DEFAULT_TEMPLATES, classifier_weights,
                               parse_labels)

pytest.importorskip("skimage", reason="the demo photos come with scikit-image (edgeclip[demo])")
from edgeclip.index.scan import demo_photos_dir  # noqa: E402

# scikit-image photo -> its obvious label: the same gate benchmarks/default_candidates.py applies
# when it chooses a default model
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from default_candidates import DEMO  # noqa: E402


@pytest.fixture(scope="module")
def default_embedder():
    with Embedder(threads=1) as e:
        yield e


@pytest.fixture(scope="module")
def photos():
    d = demo_photos_dir()
    return [str(d / n) for n in DEMO]


def test_demo_photos_obvious_label_first(default_embedder, photos):
    labels = list(DEMO.values())
    probs = default_embedder.classify(photos, labels)
    assert probs.shape == (len(photos), len(labels)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (probs >= 0).all()
    got = dict(zip(DEMO, (labels[i] for i in probs.argmax(1))))
    # The default model (distilled on Flickr8k only, whose 40,455 captions never mention an
    # astronaut or a space suit) ranks "cup of coffee" first for astronaut.png at every
    # precision (FP32 0.74, INT8 0.89): a known miss, recorded in README and the results.
    # Every other photo's label comes first, clearly.
    assert got["astronaut.png"] == "cup of coffee", got
    hit = [i for i, name in enumerate(DEMO) if name != "astronaut.png"]
    assert all(got[name] == DEMO[name] for name in DEMO if name != "astronaut.png"), got
    assert (probs[hit, hit] > 0.5).all()


def test_templates_are_averaged_like_open_clip(default_embedder, photos):
    labels, templates = ["cat", "rocket"], ["a photo of a {}.", "a drawing of the {}."]
    w = classifier_weights(default_embedder.embed_texts, labels, templates)
    # by hand: normalise each prompt embedding, mean per label, renormalise
    t = default_embedder.embed_texts([tp.format(c) for c in labels for tp in templates])
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    want = t.reshape(2, 2, -1).mean(1)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(w, want, atol=1e-6)
    img = default_embedder.embed_images(photos[:1])
    logits = DEFAULT_LOGIT_SCALE * img @ want.T
    e = np.exp(logits - logits.max())
    got = default_embedder.classify(photos[:1], labels, templates=templates)
    np.testing.assert_allclose(got, e / e.sum(), atol=1e-5)
    assert default_embedder.logit_scale == DEFAULT_LOGIT_SCALE  # the default model records none
    assert len(DEFAULT_TEMPLATES) >= 5 and all(t.count("{}") == 1 for t in DEFAULT_TEMPLATES)


def test_logit_scale_from_the_manifest(tiny_bundle, tmp_path, photos):
    b = tmp_path / "scaled"
    shutil.copytree(tiny_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m.setdefault("extra", {})["logit_scale"] = 7.5  # extra is outside the checksummed identity
    (b / "manifest.json").write_text(json.dumps(m))
    with Embedder(b) as e, Embedder(tiny_bundle) as e0:
        assert e.logit_scale == 7.5 and e0.logit_scale == DEFAULT_LOGIT_SCALE
        p7, p100 = e.classify(photos[:2], "cat,dog"), e0.classify(photos[:2], "cat,dog")
        w = classifier_weights(e.embed_texts, ["cat", "dog"])
        cos = e.embed_images(photos[:2]) @ w.T
        for scale, p in ((7.5, p7), (100.0, p100)):
            z = np.exp(scale * (cos - cos.max(1, keepdims=True)))
            np.testing.assert_allclose(p, z / z.sum(1, keepdims=True), atol=1e-5)


def test_bad_labels_templates_and_images(default_embedder, photos, tmp_path):
    with pytest.raises(InputError, match="at least two labels"):
        parse_labels("cat")
    with pytest.raises(InputError, match="twice"):
        parse_labels("cat, dog,cat")
    assert parse_labels(" cat , dog,,car ") == ["cat", "dog", "car"]
    with pytest.raises(InputError, match="exactly one"):
        default_embedder.classify(photos[:1], ["cat", "dog"], templates=["a photo"])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    probs, skipped = default_embedder.classify([photos[0], str(bad), photos[2]],
                                               ["cat", "rocket"], on_error="skip")
    assert probs.shape == (2, 2) and [s.index for s in skipped] == [1]
    assert probs[0].argmax() == 0 and probs[1].argmax() == 1


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "edgeclip.cli", "classify", *args],
                          capture_output=True, text=True, timeout=120, env=env)


def test_cli_classify(photos, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"nope")
    r = _cli(photos[0], photos[2], str(bad), "--labels", "cat,rocket,dog", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [x["label"] for x in out["results"]] == ["cat", "rocket"]
    assert out["results"][0]["probs"]["cat"] > 0.5
    assert out["skipped"][0]["image"] == str(bad) and "broken.jpg" in r.stderr
    assert out["labels"] == ["cat", "rocket", "dog"] and out["logit_scale"] == 100.0
    r = _cli(photos[0], "--labels", "cat,rocket", "-k", "1")
    assert r.returncode == 0, r.stderr
    path, shown = r.stdout.strip().split("\t")
    assert path == photos[0] and shown.split()[0] == "cat" and len(shown.split()) == 2  # -k 1
    r = _cli(photos[0], "--labels", "cat")
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "two labels" in r.stderr
    r = _cli(str(bad), "--labels", "cat,dog")
    assert r.returncode == 1 and "no image could be read" in r.stderr
