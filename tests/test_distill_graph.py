import math

import pytest
import torch
import torch.nn.functional as F

from edgeclip.distill import losses as L
from edgeclip.distill.config import apply_set, load_config
from edgeclip.distill.graph import FAMILIES, ConaGraph, needs_teacher, resolve_edges
from edgeclip.errors import ConfigError


def test_infonce_equals_direct_formula():
    a = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    b = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0]]), dim=-1)
    s = 10.0
    A, B = a.tolist(), b.tolist()
    sim = [[sum(x * y for x, y in zip(A[i], B[j])) * s for j in range(2)] for i in range(2)]
    row = [-(sim[i][i] - math.log(sum(math.exp(v) for v in sim[i]))) for i in range(2)]
    col = [-(sim[j][j] - math.log(sum(math.exp(sim[i][j]) for i in range(2)))) for j in range(2)]
    want = 0.5 * (sum(row) / 2 + sum(col) / 2)
    assert float(L.infonce(a, b, s)) == pytest.approx(want, rel=1e-5)


def test_sd_gradient_is_comparable_to_infonce():
    """The similarity-distance edge must pull as hard as a contrastive edge: with the T^2 factor
    of logit distillation its gradient on cosine similarities was ~300x smaller (the edge did
    nothing in training)."""
    torch.manual_seed(0)
    s = F.normalize(torch.randn(32, 16), dim=-1)
    t = F.normalize(s + 0.5 * torch.randn(32, 16), dim=-1)
    sims = (s @ s.T).requires_grad_(True)
    L.sd(sims, t @ t.T, 0.05, mask_diagonal=True).backward()
    g_sd = sims.grad.norm()
    logits_in = (s @ t.T).requires_grad_(True)
    target = torch.arange(32)
    (0.5 * (F.cross_entropy(logits_in / 0.07, target)
            + F.cross_entropy(logits_in.T / 0.07, target))).backward()
    ratio = float(g_sd / logits_in.grad.norm())
    assert 0.1 < ratio < 10, ratio


def test_fd_and_sd_zero_when_student_equals_teacher():
    x = F.normalize(torch.randn(6, 8), dim=-1)
    y = F.normalize(torch.randn(6, 8), dim=-1)
    assert float(L.fd(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(L.sd(x @ y.T, x @ y.T, 0.05)) == pytest.approx(0.0, abs=1e-6)
    assert float(L.sd(x @ x.T, x @ x.T, 0.05, mask_diagonal=True)) == pytest.approx(0.0, abs=1e-6)
    assert float(L.fd(x, y)) > 0.1 and float(L.sd(x @ y.T, y @ y.T, 0.05)) > 0
    # the graph's intra-modal and teacher-student fd/sd edges are zero for a perfect student
    edges = resolve_edges({"preset": "fd", "edges": {
        "TI-SI": {"losses": [{"type": "fd"}, {"type": "sd"}]},
        "SI-SI": {"losses": ["sd", "fd"]}, "ST-ST": {"losses": ["sd"]}}})
    g = ConaGraph(edges, 8, 8)
    total, parts = g({"TI": x, "TT": y, "SI": x.clone(), "ST": y.clone()})
    assert float(total) == pytest.approx(0.0, abs=1e-5), parts


def test_gradients_reach_student_never_teacher():
    edges = resolve_edges({"preset": "cona"})
    g = ConaGraph(edges, 8, 12)  # dims differ: learned projections
    student = torch.nn.Linear(5, 8)
    teacher = torch.nn.Linear(5, 12)
    x = torch.randn(6, 5)
    with torch.no_grad():
        t = F.normalize(teacher(x), dim=-1)
    t.requires_grad_(True)  # would collect a gradient if the graph leaked one into it
    si = F.normalize(student(x), dim=-1)
    st = F.normalize(student(x + 1), dim=-1)
    total, parts = g({"SI": si, "ST": st, "TI": t.detach(), "TT": t.detach()})
    total.backward()
    assert set(p.split("/")[0] for p in parts) == {e for f in FAMILIES.values() for e in f}
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert teacher.weight.grad is None and t.grad is None
    assert all(p.grad is not None for p in g.parameters() if p.requires_grad)


def test_presets_drop_and_set():
    assert set(resolve_edges({"preset": "clip"})) == {"SI-ST"}
    assert not needs_teacher(resolve_edges({"preset": "clip"}))
    assert set(resolve_edges({"preset": "fd"})) == {"TI-SI", "TT-ST"}
    cona = resolve_edges({"preset": "cona"})
    assert len(cona) == 7
    for fam, members in FAMILIES.items():
        kept = resolve_edges({"preset": "cona", "drop": fam})
        assert set(kept) == set(cona) - set(members)
    cfg = load_config(None, ["loss.edges.TI-ST.weight=0", "loss.drop=inter_ss",
                             "train.lr=3e-4"])
    e = resolve_edges(cfg["loss"])
    assert "TI-ST" not in e and "SI-ST" not in e and "TT-SI" in e
    assert cfg["train"]["lr"] == 3e-4
    with pytest.raises(ConfigError, match="unknown edge"):
        resolve_edges({"preset": "cona", "edges": {"XX-SI": {"weight": 1}}})
    with pytest.raises(ConfigError, match="not allowed"):
        resolve_edges({"preset": "cona", "edges": {"SI-SI": {"losses": ["infonce"]}}})
    with pytest.raises(ConfigError, match="switched off"):
        resolve_edges({"preset": "clip", "drop": ["inter_ss"]})
    with pytest.raises(ConfigError, match="need a teacher"):
        ConaGraph(resolve_edges({"preset": "fd"}), 8, None)
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_set({}, "novalue")


def _grouped_reference(img, txt, group, s):
    """infonce_grouped written out pair by pair."""
    B, M = img.shape[0], txt.shape[0]
    sim = (img @ txt.T * s).tolist()
    t2i = [-(sim[group[j]][j] - math.log(sum(math.exp(sim[i][j]) for i in range(B))))
           for j in range(M)]
    i2t = []
    for j in range(M):
        i = group[j]
        den = [sim[i][k] for k in range(M) if k == j or group[k] != i]
        i2t.append(-(sim[i][j] - math.log(sum(math.exp(v) for v in den))))
    return 0.5 * (sum(t2i) / M + sum(i2t) / M)


def test_grouped_infonce_is_infonce_with_one_caption_and_matches_reference():
    torch.manual_seed(3)
    img = F.normalize(torch.randn(4, 8), dim=-1)
    txt = F.normalize(torch.randn(4, 8), dim=-1)
    assert float(L.infonce_grouped(img, txt, torch.arange(4), 12.0)) == pytest.approx(
        float(L.infonce(img, txt, 12.0)), rel=1e-6)
    group = [0, 0, 0, 1, 2, 2, 3, 3, 3]  # uneven: image 1 has one caption
    txt = F.normalize(torch.randn(len(group), 8), dim=-1)
    got = float(L.infonce_grouped(img, txt, torch.tensor(group), 12.0))
    assert got == pytest.approx(_grouped_reference(img, txt, group, 12.0), rel=1e-5)


def test_grouped_infonce_does_not_push_an_images_captions_apart():
    """Two identical captions of one image: the image->text term must not treat either as the
    other's negative (the loss is the one-caption loss, and the gradient is symmetric)."""
    torch.manual_seed(4)
    img = F.normalize(torch.randn(3, 8), dim=-1)
    base = F.normalize(torch.randn(3, 8), dim=-1)
    twice = torch.cat([base[:1], base]).requires_grad_(True)  # caption 0 and 1 are equal
    loss = L.infonce_grouped(img, twice, torch.tensor([0, 0, 1, 2]), 10.0)
    loss.backward()
    assert torch.allclose(twice.grad[0], twice.grad[1], atol=1e-7)
    # the same loss as the plain one of the unique pairs, reweighted (image 0 counted twice)
    ref = _grouped_reference(img, twice.detach(), [0, 0, 1, 2], 10.0)
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-5)


def test_captions_per_image_needs_the_clip_edge_only():
    from edgeclip.distill.graph import check_captions_per_image
    check_captions_per_image(resolve_edges({"preset": "clip"}), 5)
    check_captions_per_image(resolve_edges({"preset": "cona"}), 1)
    with pytest.raises(ConfigError, match=r"captions_per_image = 5 .*TI-SI/fd"):
        check_captions_per_image(resolve_edges({"preset": "cona"}), 5)
