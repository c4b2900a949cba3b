"""The Cona knowledge-interaction graph: nodes TI, TT (teacher image/text), SI, ST (student).

Edges and their families::

    intra_ts  TI-SI, TT-ST     intra-modal teacher-student
    inter_ts  TI-ST, TT-SI     inter-modal teacher-student
    inter_ss  SI-ST            inter-modal student-student
    intra_ss  SI-SI, ST-ST     the student's in-batch similarity structure vs the teacher's

Each edge has a ``weight`` and a list of losses ``{type: infonce|fd|sd, weight, ...}``.
For a teacher-student edge (X, Y): ``infonce`` contrasts Y against X; ``fd`` pulls Y onto X;
``sd`` matches softmax(Y X^T / T) to the teacher's own softmax(T_m X^T / T), T_m the teacher
node of Y's modality. SI-ST: ``infonce`` is the CLIP loss, ``fd`` pulls the pair together,
``sd`` matches SI ST^T to TI TT^T. SI-SI / ST-ST: ``sd`` matches the student's in-batch
similarities (diagonal left out) to the teacher's, ``fd`` their squared difference.
Student features go through a learned projection where the teacher's dimension differs.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..errors import ConfigError
from . import losses as L

FAMILIES = {"intra_ts": ("TI-SI", "TT-ST"), "inter_ts": ("TI-ST", "TT-SI"),
            "inter_ss": ("SI-ST",), "intra_ss": ("SI-SI", "ST-ST")}
EDGES = tuple(e for fam in FAMILIES.values() for e in fam)
LOSS_TYPES = ("infonce", "fd", "sd")
ALLOWED = {e: LOSS_TYPES for e in EDGES}
ALLOWED["SI-SI"] = ALLOWED["ST-ST"] = ("fd", "sd")

PRESETS: dict[str, dict] = {
    "clip": {"SI-ST": {"weight": 1.0, "losses": [{"type": "infonce"}]}},
    "fd": {"TI-SI": {"weight": 1.0, "losses": [{"type": "fd"}]},
           "TT-ST": {"weight": 1.0, "losses": [{"type": "fd"}]}},
    # cona's weights and losses were chosen on Flickr8k dev (benchmarks/flickr8k_pilots.sh):
    # fd weighted 10 against the similarity losses, and the inter-modal teacher-student edges
    # matching the teacher's cross-modal similarity distribution (sd) rather than hard InfoNCE.
    "cona": {"TI-SI": {"weight": 10.0, "losses": [{"type": "fd"}]},
             "TT-ST": {"weight": 10.0, "losses": [{"type": "fd"}]},
             "TI-ST": {"weight": 1.0, "losses": [{"type": "sd"}]},
             "TT-SI": {"weight": 1.0, "losses": [{"type": "sd"}]},
             "SI-ST": {"weight": 1.0, "losses": [{"type": "infonce"}, {"type": "sd"}]},
             "SI-SI": {"weight": 1.0, "losses": [{"type": "sd"}]},
             "ST-ST": {"weight": 1.0, "losses": [{"type": "sd"}]}},
}
DEFAULTS = {"infonce": {"weight": 1.0, "temperature": 0.07, "learn_temperature": True},
            "fd": {"weight": 1.0}, "sd": {"weight": 1.0, "temperature": 0.05}}


def resolve_edges(loss_cfg: dict) -> dict:
    """``{preset, edges, drop}`` -> {edge: {"weight", "losses": [full loss dicts]}} with
    switched-off edges removed."""
    preset = loss_cfg.get("preset", "cona")
    if preset not in PRESETS:
        raise ConfigError(f"loss.preset '{preset}' is unknown (known: {', '.join(PRESETS)})")
    edges = copy.deepcopy(PRESETS[preset])
    for name, over in (loss_cfg.get("edges") or {}).items():
        if name not in EDGES:
            raise ConfigError(f"loss.edges: unknown edge '{name}' (known: {', '.join(EDGES)})")
        if not isinstance(over, dict):
            raise ConfigError(f"loss.edges.{name} must be a table with weight/losses")
        base = edges.get(name, {"weight": 1.0, "losses": []})
        base.update(copy.deepcopy(over))
        edges[name] = base
    drop = loss_cfg.get("drop") or []
    for fam in [drop] if isinstance(drop, str) else drop:
        if fam in FAMILIES:
            for e in FAMILIES[fam]:
                edges.pop(e, None)
        elif fam in EDGES:
            edges.pop(fam, None)
        else:
            raise ConfigError(f"loss.drop: '{fam}' is neither an edge family "
                              f"({', '.join(FAMILIES)}) nor an edge")
    out = {}
    for name, e in edges.items():
        w = float(e.get("weight", 1.0))
        ls = []
        for item in e.get("losses", []):
            item = {"type": item} if isinstance(item, str) else dict(item)
            t = item.get("type")
            if t not in ALLOWED[name]:
                raise ConfigError(f"loss.edges.{name}: loss type {t!r} not allowed here "
                                  f"(allowed: {', '.join(ALLOWED[name])})")
            full = {**DEFAULTS[t], **item}
            if float(full["weight"]) != 0.0:
                ls.append(full)
        if w != 0.0 and ls:
            out[name] = {"weight": w, "losses": ls}
    if not out:
        raise ConfigError("every loss edge is switched off: nothing to train")
    return out


def needs_teacher(edges: dict) -> bool:
    return any(name != "SI-ST" or any(x["type"] == "sd" for x in e["losses"])
               for name, e in edges.items())


def check_captions_per_image(edges: dict, k: int) -> None:
    """Several captions per image in a step (``data.captions_per_image`` > 1) give the student
    text node more rows than the image nodes; only the SI-ST InfoNCE edge (the ``clip`` preset,
    how a teacher is trained) is defined for that. Anything else: one clear ConfigError."""
    if k <= 1:
        return
    other = [f"{n}/{x['type']}" for n, e in edges.items() for x in e["losses"]
             if (n, x["type"]) != ("SI-ST", "infonce")]
    if other:
        raise ConfigError(f"data.captions_per_image = {k} works with the SI-ST InfoNCE edge only "
                          f"(loss.preset = 'clip'); these edges need one caption per image: "
                          f"{', '.join(other)}. Set data.captions_per_image = 1")


class ConaGraph(nn.Module):
    """Holds learnable temperatures and projections; ``forward(feats)`` -> (total, parts)."""

    def __init__(self, edges: dict, student_dim: int, teacher_dim: int | None):
        super().__init__()
        self.edges = edges
        self.scales = nn.ParameterDict()
        for name, e in edges.items():
            for i, x in enumerate(e["losses"]):
                if x["type"] == "infonce":
                    p = nn.Parameter(torch.tensor(math.log(1.0 / float(x["temperature"]))),
                                     requires_grad=bool(x["learn_temperature"]))
                    self.scales[f"{name}_{i}".replace("-", "_")] = p
        self.to_teacher = nn.ModuleDict()
        if needs_teacher(edges) and teacher_dim is None:
            raise ConfigError("these loss edges need a teacher; set [teacher] in the config or "
                              "use loss.preset = 'clip'")
        if teacher_dim is not None and teacher_dim != student_dim:
            self.to_teacher["SI"] = nn.Linear(student_dim, teacher_dim, bias=False)
            self.to_teacher["ST"] = nn.Linear(student_dim, teacher_dim, bias=False)

    def _up(self, node: str, x: torch.Tensor) -> torch.Tensor:
        if node in self.to_teacher:
            return torch.nn.functional.normalize(self.to_teacher[node](x), dim=-1)
        return x

    def forward(self, f: dict) -> tuple[torch.Tensor, dict]:
        """``f`` maps node -> (B, D) features (TI/TT may be absent for 'clip'); with several
        captions per image, ST is (M, D) and ``f["group"]`` (M,) maps each caption to its image
        row (see :func:`check_captions_per_image`)."""
        parts: dict[str, torch.Tensor] = {}
        total = None
        for name, e in self.edges.items():
            a, b = name.split("-")
            for i, x in enumerate(e["losses"]):
                v = self._edge_loss(name, a, b, i, x, f)
                parts[f"{name}/{x['type']}"] = v.detach()
                term = e["weight"] * float(x["weight"]) * v
                total = term if total is None else total + term
        return total, parts

    def _edge_loss(self, name, a, b, i, x, f):
        t = x["type"]
        if a[0] == "T":  # teacher-student edge: a teacher, b student
            X = f[a]
            Y = self._up(b, f[b])
            if t == "infonce":
                return L.infonce(Y, X, self._scale(name, i))
            if t == "fd":
                return L.fd(Y, X)
            Tm = f["T" + b[1]]
            return L.sd(Y @ X.T, Tm @ X.T, float(x["temperature"]))
        if a != b:  # SI-ST
            if t == "infonce":
                if f.get("group") is not None:
                    return L.infonce_grouped(f["SI"], f["ST"], f["group"], self._scale(name, i))
                return L.infonce(f["SI"], f["ST"], self._scale(name, i))
            if t == "fd":
                return L.fd(f["SI"], f["ST"])
            return L.sd(f["SI"] @ f["ST"].T, f["TI"] @ f["TT"].T, float(x["temperature"]))
        S, T = f[a], f["T" + a[1]]
        s_sim, t_sim = S @ S.T, T @ T.T
        if t == "fd":
            eye = torch.eye(S.shape[0], dtype=torch.bool, device=S.device)
            return (s_sim - t_sim).masked_fill(eye, 0.0).pow(2).mean()
        return L.sd(s_sim, t_sim, float(x["temperature"]), mask_diagonal=True)

    def _scale(self, name, i):
        return self.scales[f"{name}_{i}".replace("-", "_")].exp().clamp(max=100.0)
