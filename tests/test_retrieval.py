import numpy as np
import pytest

from edgeclip.errors import InputError
from edgeclip.retrieval import recall_at_k


def _brute(img, txt, owner, k):
    sims = txt @ img.T
    t2i = np.mean([owner[q] in np.argsort(-sims[q], kind="stable")[:k] for q in range(len(txt))])
    isims = img @ txt.T
    hits = []
    for i in range(len(img)):
        top = np.argsort(-isims[i], kind="stable")[:k]
        hits.append(any(owner[t] == i for t in top))
    return 100 * t2i, 100 * np.mean(hits)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_img, per = 40, 5
    img = rng.normal(size=(n_img, 16)).astype(np.float32)
    owner = np.repeat(np.arange(n_img), per)
    txt = (img[owner] * 0.6 + rng.normal(size=(n_img * per, 16))).astype(np.float32)
    m = recall_at_k(img, txt, owner)
    for k in (1, 5, 10):
        t2i, i2t = _brute(img, txt, owner, k)
        assert m[f"t2i_r{k}"] == pytest.approx(t2i)
        assert m[f"i2t_r{k}"] == pytest.approx(i2t)
    assert 0 < m["t2i_r1"] < 100 and m["t2i_r1"] <= m["t2i_r5"] <= m["t2i_r10"]
    assert m["mean_recall"] == pytest.approx(np.mean([m[f"{d}_r{k}"] for d in ("t2i", "i2t")
                                                      for k in (1, 5, 10)]))


def test_recall_chunked_equals_unchunked():
    from edgeclip.retrieval import ranks
    rng = np.random.default_rng(3)
    img = rng.normal(size=(30, 8)).astype(np.float32)
    owner = rng.integers(0, 30, size=70)
    txt = rng.normal(size=(70, 8)).astype(np.float32)
    a = ranks(img, txt, owner, chunk=7)
    b = ranks(img, txt, owner, chunk=1000)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()


def test_recall_rejects_bad_shapes():
    with pytest.raises(InputError, match="same D"):
        recall_at_k(np.zeros((3, 4)), np.zeros((3, 5)), np.arange(3))
    with pytest.raises(InputError, match="outside"):
        recall_at_k(np.zeros((3, 4)), np.zeros((3, 4)), np.array([0, 1, 5]))
