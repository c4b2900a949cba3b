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
