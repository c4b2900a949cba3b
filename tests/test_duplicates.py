"""Near-duplicate groups without chaining: the algorithm (against scipy's complete linkage), and
on real Flickr8k photos with the built-in model: the measured kinds of copies are found, the
hardest measured same-scene negatives are not; `edgeclip duplicates` on a real index."""

from __future__ import annotations

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


def test_default_threshold_is_the_measured_one():
    r = json.loads(RESULT.read_text())
    assert r["chosen_threshold"] == DEFAULT_THRESHOLD == r["default_threshold_in_code"]
    assert r["test_at_chosen"]["precision"] >= 0.99 and r["test_at_chosen"]["recall"] >= 0.7


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
                 ["test_hardest_negatives"]]
    for a, b in negatives:
        for n in (a, b):
            if not (folder / n).exists():
                shutil.copyfile(flickr8k / "images" / n, folder / n)
    return folder, made, negatives


def test_real_photos_found_and_negatives_apart(photo_set, tmp_path):
    from edgeclip.index import ImageIndex
    folder, made, negatives = photo_set
    db = tmp_path / "ix.db"
    with ImageIndex(db) as ix:
        ix.add_folder(folder, progress=False)
        groups = ix.duplicates()
    group_of = {Path(p).name: i for i, g in enumerate(groups) for p in g}
    found = {v: 0 for v in next(iter(made.values()))}
    for orig, variants in made.items():
        assert orig in group_of, f"{orig} has no duplicate found"
        for v, name in variants.items():
            found[v] += group_of.get(name) == group_of[orig]
    # measured on 200 test photos: copies 100%, JPEG q60 96%, 10% crops 92%, rotations 89%,
    # 50% resizes 55% (benchmarks/results/duplicates.json)
    assert found["copy"] == found["jpeg60"] == 6, found
    assert found["crop10"] >= 5 and found["rotate"] >= 4 and sum(found.values()) >= 24, found
    # no group mixes two photos: every group is one original and its own copies
    for g in groups:
        stems = {Path(p).name.split(".")[0] for p in g}
        assert len(stems) == 1, g
    for a, b in negatives:  # the most similar different photos of one scene measured
        assert group_of.get(a, -1) == -1 or group_of.get(a) != group_of.get(b), (a, b)

    r = subprocess.run([sys.executable, "-m", "edgeclip.cli", "duplicates", "--db", str(db),
                        "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["groups"] == groups and out["threshold"] == DEFAULT_THRESHOLD
    r = subprocess.run([sys.executable, "-m", "edgeclip.cli", "duplicates", "--db", str(db),
                        "--threshold", "0.999"], capture_output=True, text=True, timeout=120)
    heads = [ln for ln in r.stdout.splitlines() if ln.startswith("group ")]
    assert r.returncode == 0 and len(heads) == 6, r.stdout  # the byte copies only
    assert all(h.endswith("(2 images)") for h in heads)
    r = subprocess.run([sys.executable, "-m", "edgeclip.cli", "duplicates", "--db",
                        str(tmp_path / "none.db")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "none.db" in r.stderr
