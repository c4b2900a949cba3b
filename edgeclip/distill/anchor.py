"""Anchors to the pretrained towers: learning without forgetting (``[loss.anchor]``).

Distilling on one dataset pulls a student's towers toward that dataset's view of the world: a
Flickr8k student forgets what its ImageNet backbone knew of coffee cups. An anchor is a loss that
keeps a tower's *function* near its pretrained self while everything else trains, without any
data beyond the training set:

- ``image``: Learning without Forgetting (Li & Hoiem, ECCV 2016, arXiv 1606.09282). The
  pretrained EfficientNet-Lite's own ImageNet classifier (its ``_fc`` weights, frozen) reads the
  student's pooled backbone features; the loss is KL(p_pretrained || p_student) of the 1,000-class
  predictions at temperature T, times T^2 (Hinton's scaling), where p_pretrained comes from a
  frozen copy of the pretrained trainable blocks on the same (possibly augmented) input.
- ``text``: the student's pooled MiniLM features (before the projection) against a frozen copy
  of the pretrained MiniLM layers on the same captions: ||normalize(s) - normalize(p)||^2, mean
  over the captions (0 at the start of training).

Both are 0 at step 0 (the student starts from the same pretrained weights). The frozen copies are
built from the packaged pretrained weights, not from the student, so a resumed run anchors to the
same thing. ``weight`` 0 (the default) switches an anchor off and costs nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

KEYS = {"image": 0.0, "text": 0.0, "temperature": 2.0}


def anchor_config(loss_cfg: dict) -> dict:
    """``loss.anchor`` -> {image, text, temperature} with defaults, checked."""
    raw = loss_cfg.get("anchor") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"loss.anchor must be a table such as {{image = 1.0, text = 1.0}}, "
                          f"got {raw!r}")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(f"loss.anchor: unknown key(s) {unknown} (known: {', '.join(KEYS)})")
    out = dict(KEYS)
    for k, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise ConfigError(f"loss.anchor.{k} must be a number >= 0, got {v!r}")
        out[k] = float(v)
    if out["temperature"] <= 0:
        raise ConfigError(f"loss.anchor.temperature must be > 0, got {out['temperature']}")
    return out


def check_anchor(acfg: dict, model_cfg: dict, student, pretrained: bool = True) -> None:
    """ConfigError unless the anchors that are on can anchor this student (cheap: reads no
    weights, so a trainer runs it before it fills any cache)."""
    if not (acfg["image"] or acfg["text"]):
        return
    from .image_towers import EfficientNetLiteTower
    from .text_towers import TextTower
    if not pretrained:
        raise ConfigError("loss.anchor holds the student near its pretrained weights; this "
                          "student starts from random ones: set model.pretrained = true or "
                          "switch the anchor off (loss.anchor.image = 0, loss.anchor.text = 0)")
    enc = student.image_encoder
    if acfg["image"] and not isinstance(enc, EfficientNetLiteTower):
        raise ConfigError("loss.anchor.image needs an efficientnet_lite image tower (its "
                          f"ImageNet classifier is the anchor); this one is "
                          f"{type(enc).__name__}: set loss.anchor.image = 0")
    kind = model_cfg["text"].get("type", "minilm")
    if acfg["text"] and (not isinstance(student.text_encoder, TextTower) or kind != "minilm"):
        raise ConfigError("loss.anchor.text needs a pretrained MiniLM text tower that "
                          f"trains; this one is '{kind}': set loss.anchor.text = 0")


class PretrainedAnchor(nn.Module):
    """Frozen pretrained copies of what the student trains, and the anchor losses.

    ``model_cfg``: the student's resolved model config (``DualEncoder.config``); ``student``: the
    student (checked: its towers must be the kinds the anchors understand); ``pretrained``:
    whether the student starts from the packaged weights (``model.pretrained``): an anchor to
    weights the student never had is refused."""

    def __init__(self, acfg: dict, model_cfg: dict, student, pretrained: bool = True):
        super().__init__()
        check_anchor(acfg, model_cfg, student, pretrained)
        from .image_towers import lite_weights_path
        from .models import build_student
        self.w_image, self.w_text, self.t = acfg["image"], acfg["text"], acfg["temperature"]
        ref = build_student(model_cfg, pretrained=True)
        self.image_tail = self.text_encoder = self.fc = None
        if self.w_image:
            variant = model_cfg["image"].get("variant", "efficientnet-lite0")
            sd = torch.load(lite_weights_path(variant), map_location="cpu", weights_only=True)
            if "_fc.weight" not in sd:
                raise ConfigError(f"{variant} weights have no ImageNet classifier (_fc): set "
                                  f"loss.anchor.image = 0")
            self.fc = nn.Linear(sd["_fc.weight"].shape[1], sd["_fc.weight"].shape[0])
            self.fc.load_state_dict({"weight": sd["_fc.weight"], "bias": sd["_fc.bias"]})
            r = ref.image_encoder
            self.image_tail = nn.ModuleList(r.blocks[r.freeze_blocks:])
            self.image_pool = r.pool
        if self.w_text:
            self.text_encoder = ref.text_encoder
        del ref
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # always eval: frozen BN statistics, no dropout
        return super().train(False)

    @torch.no_grad()
    def _image_reference(self, h):
        for b in self.image_tail:
            h = b(h)
        return self.fc(self.image_pool(h))

    def forward(self, prefix_out, image_pooled, ids, mask, text_pooled) -> dict:
        """-> {"anchor/image": loss, "anchor/text": loss} for the anchors that are on."""
        out = {}
        if self.w_image:
            t = self.t
            ref = F.log_softmax(self._image_reference(prefix_out).float() / t, dim=-1)
            own = F.log_softmax(self.fc(image_pooled.float()) / t, dim=-1)
            out["anchor/image"] = F.kl_div(own, ref, log_target=True, reduction="batchmean") * t * t
        if self.w_text:
            with torch.no_grad():
                ref = F.normalize(self.text_encoder.pooled(ids, mask).float(), dim=-1)
            out["anchor/text"] = (F.normalize(text_pooled.float(), dim=-1) - ref).pow(2).sum(-1).mean()
        return out

    def weight(self, name: str) -> float:
        return self.w_image if name == "anchor/image" else self.w_text
