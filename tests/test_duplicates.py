"""Near-duplicate groups without chaining: the algorithm (against scipy's complete linkage), and
on real Flickr8k photos with the built-in model: the measured kinds of copies are found, the
hardest measured same-scene negatives are not; `edgeclip duplicates` on a real index."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeclip.index.duplicates import DEFAULT_THRESHOLD, complete_linkage, duplicate_groups

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "duplicates.json"


def _unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_no_chaining():
    # A-B and B-C are similar (cos 0.95), A-C is not (cos ~0.81): connected components would
    # give {A, B, C}; complete linkage keeps A and C apart
    ang = np.radians([0.0, 18.2, 36.4])
    m = _unit(np.stack([np.cos(ang), np.sin(ang), np.zeros(3)], 1))
    sims = m @ m.T
    assert sims[0, 1] > 0.9 and sims[1, 2] > 0.9 and sims[0, 2] < 0.9
    groups = duplicate_groups(m, 0.9)
    assert len(groups) == 1 and len(groups[0]) == 2 and groups[0] != [0, 2]
    # a chain of nine: no group holds a pair below the threshold
    ang = np.radians(np.arange(9) * 15.0)
    m = _unit(np.stack([np.cos(ang), np.sin(ang), np.zeros(9)], 1))
    for g in duplicate_groups(m, 0.9):
        assert (m[g] @ m[g].T).min() >= 0.9 - 1e-6


def test_matches_scipy_complete_linkage():
    hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
    from scipy.spatial.distance import squareform
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = int(rng.integers(2, 50))
        x = rng.standard_normal((4, 16))[rng.integers(0, 4, m)] + rng.standard_normal((m, 16)) * 0.5
        x = _unit(x).astype(np.float64)
        t = float(rng.uniform(0.5, 0.95))
        sims = x @ x.T
        mine = sorted(sorted(c) for c in complete_linkage(sims, t))
        d = np.clip(1 - sims, 0, None)
        np.fill_diagonal(d, 0)
        labels = hierarchy.fcluster(hierarchy.linkage(squareform((d + d.T) / 2, checks=False),
                                                      "complete"), 1 - t, criterion="distance")
        want = sorted(sorted(np.flatnonzero(labels == k).tolist()) for k in set(labels))
        assert mine == want
    # blocks do not change the result
    x = _unit(rng.standard_normal((40, 8)))
    x[20:] = _unit(x[:20] + 0.05 * rng.standard_normal((20, 8)))
    assert duplicate_groups(x, 0.95, block=3) == duplicate_groups(x, 0.95) != []


#: what `edgeclip duplicates` must find with the built-in model, measured on 200 Flickr8k test
#: photos at its threshold (round 1's default: copies 1.00, JPEG q60 0.96, crops 0.89,
#: rotations 0.84, all 0.76 at 0.88); 50% resizes are the hard case and have no floor
FLOORS = {"copy": 1.0, "jpeg60": 0.9, "crop10": 0.85, "rotate": 0.8, "all": 0.7}


def _shipped():
    from edgeclip.embedder import default_model_path
    from edgeclip.manifest import load_bundle
    if not (default_model_path() / "manifest.json").is_file():
        pytest.skip("this checkout ships no default model")
    return load_bundle(default_model_path())[0]


def test_shipped_threshold_is_the_measured_one():
    """The built-in model carries the threshold benchmarks/duplicates.py chose for it on dev,
    and that benchmark's test-split rates stay within the rule it was chosen by."""
    from edgeclip.index.duplicates import manifest_threshold
    r = json.loads(RESULT.read_text())
    manifest = _shipped()
    assert r["model_identity"] == manifest.identity(), "duplicates.json measures another model"
    assert manifest_threshold(manifest) == r["chosen_threshold"]
    assert r["default_threshold_in_code"] == DEFAULT_THRESHOLD  # for models that record none
    t = r["test_at_chosen"]
    # chosen on dev at precision >= 0.99 and <= 1% of same-scene pairs of different photos
    # grouped on their own; test (200 photos, 726 such pairs) may miss by sampling, not by 2x
    assert t["precision"] >= 0.99 and t["standalone_negative_rate"] <= 0.02, t
    assert t["recall"] >= FLOORS["all"], t
    for kind, floor in FLOORS.items():
        if kind != "all":
            assert t["recall_original_vs_variant"][kind] >= floor, (kind, t)


@pytest.fixture(scope="module")
def photo_set(flickr8k, tmp_path_factory):
    """6 test-split photos with their five near-duplicates (made as the benchmark makes them)
    and the benchmark's hardest same-scene negative pairs, in one folder."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from duplicates import VARIANTS, make_variants
    folder = tmp_path_factory.mktemp("dups") / "photos"
    folder.mkdir()
    names = (flickr8k / "splits" / "test.txt").read_text().split()[:6]
    rng = np.random.default_rng(0)  # the benchmark's seed and order: the same variants
    made = {}
    for n in names:
        shutil.copyfile(flickr8k / "images" / n, folder / n)
        made[n] = {v: p.name for v, p in make_variants(flickr8k / "images" / n, folder / "v",
                                                        rng).items()}
        assert set(made[n]) == set(VARIANTS)
    negatives = [tuple(x["images"]) for x in json.loads(RESULT.read_text())
                 ["test_hardest_negatives"]]  # the benchmark's own test photos, each alone
    for a, b in negatives:
        for n in (a, b):
            if not (folder / n).exists():
                shutil.copyfile(flickr8k / "images" / n, folder / n)
    return folder, made, negatives


def test_real_photos_found_and_negatives_apart(photo_set, tmp_path):
    from edgeclip.index import ImageIndex
    folder, made, negatives = photo_set
    threshold = json.loads(RESULT.read_text())["chosen_threshold"]
    measured = {tuple(x["images"]): x["cosine"] for x in json.loads(RESULT.read_text())
                ["test_hardest_negatives"]}
    db = tmp_path / "ix.db"
    with ImageIndex(db) as ix:
        ix.add_folder(folder, progress=False)
        assert ix.duplicate_threshold == threshold  # the model's own, from its manifest
        groups = ix.duplicates()
    group_of = {Path(p).name: i for i, g in enumerate(groups) for p in g}
    found = {v: 0 for v in next(iter(made.values()))}
    for orig, variants in made.items():
        assert orig in group_of, f"{orig} has no duplicate found"
        for v, name in variants.items():
            found[v] += group_of.get(name) == group_of[orig]
    # six photos are a sample of the benchmark's 200, whose rates test_shipped_threshold_is_the_
    # measured_one bounds (FLOORS); here each kind is held to what a model at those floors
    # gives six photos but for a ~2-10% binomial tail: byte copies always, JPEG q60 >= 5,
    # 10% crops >= 4, rotations >= 4, and 70% of all 30 copies
    assert found["copy"] == 6 and found["jpeg60"] >= 5, found
    assert found["crop10"] >= 4 and found["rotate"] >= 4 and sum(found.values()) >= 21, found
    # the most similar different photos of one scene the benchmark measured (each alone here):
    # apart when their measured cosine is below the threshold (the rule allows <= 1% of such
    # pairs above it; test_shipped_threshold_is_the_measured_one bounds that rate), so the index
    # must reproduce the benchmark; pairs within 0.01 of the threshold may fall either way
    above = set()
    for a, b in negatives:
        together = group_of.get(a, -1) != -1 and group_of.get(a) == group_of.get(b)
        if measured[(a, b)] < threshold - 0.01:
            assert not together, (a, b, measured[(a, b)])
        elif measured[(a, b)] >= threshold + 0.01:
            assert together, (a, b, measured[(a, b)])
        if together:
            above.add(frozenset((a, b)))
    # every other group is one original and its own copies
    for g in groups:
        stems = {Path(p).name.split(".")[0] for p in g}
        names = {Path(p).name for p in g}
        assert len(stems) == 1 or all(frozenset(pr) in above for pr in itertools.combinations(names, 2)), g

    r = subprocess.run([sys.executable, "-m", "edgeclip.cli", "duplicates", "--db", str(db),
                        "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["groups"] == groups and out["threshold"] == threshold
    r = subprocess.run([sys.executable, "-m", "edgeclip.cli", "duplicates", "--db", str(db),
                        "--threshold", "0.999"], capture_output=True, text=True, timeout=120)
    heads = [ln for ln in r.stdout.splitlines() if ln.startswith("group ")]
    assert r.returncode == 0 and len(heads) == 6, r.stdout  # the byte copies only
    assert all(h.endswith("(2 images)") for h in heads)
    r = subprocess.run([sys.executable, "-m", "edgeclip.cli", "duplicates", "--db",
                        str(tmp_path / "none.db")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "none.db" in r.stderr


# -- the model's own threshold: manifest -> index -> `edgeclip duplicates` ------------------------

def _bundle_with_threshold(tiny_bundle, tmp_path, value):
    from edgeclip.index.duplicates import record_threshold
    b = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, b)
    if value is not None:
        record_threshold(b, value, source="test")
    return b


def test_threshold_recorded_in_manifest_keeps_identity(tiny_bundle, tmp_path):
    from edgeclip.errors import BundleError, InputError
    from edgeclip.index.duplicates import manifest_threshold, record_threshold
    from edgeclip.manifest import load_bundle
    before, _ = load_bundle(tiny_bundle)
    assert manifest_threshold(before) is None
    b = _bundle_with_threshold(tiny_bundle, tmp_path, 0.91)
    after, _ = load_bundle(b)  # files still verify
    assert manifest_threshold(after) == 0.91
    assert after.extra["duplicate_threshold_source"] == "test"
    assert after.identity() == before.identity()  # indexes built with the model stay valid
    for bad in (0, 1.5, "high", True, float("nan")):
        with pytest.raises(InputError, match="not a cosine similarity"):
            record_threshold(b, bad)
    after.extra["duplicate_threshold"] = "0.9x"
    with pytest.raises(BundleError, match=r"extra.duplicate_threshold: duplicate threshold '0.9x'.*--write-manifest"):
        manifest_threshold(after)
    # a bundle whose files do not match its manifest is not rewritten
    (b / "image.fp32.onnx").write_bytes(b"damaged")
    text = (b / "manifest.json").read_text()
    with pytest.raises(BundleError):
        record_threshold(b, 0.8)
    assert (b / "manifest.json").read_text() == text


def test_index_uses_the_models_threshold(tiny_bundle, tmp_path):
    from edgeclip import Embedder
    from edgeclip.errors import InputError
    from edgeclip.index import ImageIndex
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_index import make_gallery
    photos = tmp_path / "photos"
    make_gallery(photos, 4)
    first = sorted(p.name for p in photos.iterdir())[0]
    shutil.copyfile(photos / first, photos / "copy.jpg")
    own = _bundle_with_threshold(tiny_bundle, tmp_path, 0.999999)
    with Embedder(own) as e:
        assert e.duplicate_threshold == 0.999999
    with Embedder(tiny_bundle) as e:
        assert e.duplicate_threshold == DEFAULT_THRESHOLD
    db = tmp_path / "ix.db"
    with ImageIndex(db, model=own) as ix:
        ix.add_folder(photos, progress=False)
        assert ix.meta["duplicate_threshold"] == "0.999999"
        assert ix.duplicate_threshold == 0.999999
        assert ix.duplicates() == ix.duplicates(threshold=0.999999)
        assert ix.duplicates(threshold=np.float32(0.999999)) == ix.duplicates()  # numpy scalars
        for bad in (1.5, 0, True, "high"):
            with pytest.raises(InputError, match=r"pass a cosine similarity in \(0, 1\]"):
                ix.duplicates(threshold=bad)
    r = subprocess.run([sys.executable, "-m", "edgeclip.cli", "duplicates", "--db", str(db),
                        "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["threshold"] == 0.999999 and len(out["groups"]) == 1
    assert sorted(Path(p).name for p in out["groups"][0]) == ["copy.jpg", first]
    # an index built before the threshold was recorded: the bundle that built it (same
    # identity) gives it; once the bundle is gone, the built-in default
    import sqlite3
    with sqlite3.connect(db) as c:
        c.execute("DELETE FROM meta WHERE key = 'duplicate_threshold'")
    with ImageIndex(db, read_only=True) as ix:
        assert ix.duplicate_threshold == 0.999999
    shutil.rmtree(own)
    with ImageIndex(db, read_only=True) as ix:
        assert ix.duplicate_threshold == DEFAULT_THRESHOLD
    # an index of a model with no recorded threshold, and --reindex forgets the old one
    with ImageIndex(tmp_path / "plain.db", model=tiny_bundle) as ix:
        ix.add_folder(photos, progress=False)
        assert "duplicate_threshold" not in ix.meta and ix.duplicate_threshold == DEFAULT_THRESHOLD


def test_a_damaged_threshold_in_the_manifest_costs_no_indexing(tiny_bundle, tmp_path):
    from edgeclip.errors import BundleError
    from edgeclip.index import ImageIndex
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_index import make_gallery
    b = _bundle_with_threshold(tiny_bundle, tmp_path, None)
    m = json.loads((b / "manifest.json").read_text())
    m.setdefault("extra", {})["duplicate_threshold"] = "high"
    (b / "manifest.json").write_text(json.dumps(m))
    make_gallery(tmp_path / "photos", 3)
    with ImageIndex(tmp_path / "ix.db", model=b) as ix:
        r = ix.add_folder(tmp_path / "photos", progress=False)
        assert r.embedded == 3 and len(ix) == 3  # the photos are indexed
        assert "duplicate_threshold" not in ix.meta
        with pytest.raises(BundleError, match=r"duplicate threshold 'high' is not a cosine"):
            ix.duplicates()
        assert ix.duplicates(threshold=1.0) == []  # an explicit threshold still works
