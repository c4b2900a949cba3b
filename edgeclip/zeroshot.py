"""Zero-shot classification, CLIP's other headline use (no torch).

Each label becomes a set of prompts (``templates``, e.g. ``"a photo of a {}."``); as in open_clip's
``build_zero_shot_classifier``, every prompt embedding is L2-normalised, the prompts of a label are
averaged and the mean is L2-normalised again. An image's probabilities are
``softmax(logit_scale * image @ classifier.T)``.

``logit_scale`` comes from the bundle's manifest when it records one (``extra.logit_scale``, the
exp'd scale a CLIP-style model was trained with); otherwise :data:`DEFAULT_LOGIT_SCALE` = 100,
CLIP's trained (and clamped) value. The scale changes how peaked the probabilities are, never
their order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import InputError

DEFAULT_LOGIT_SCALE = 100.0

# A short, general subset of the 80 ImageNet prompts of the CLIP paper (open_clip's
# ``OPENAI_IMAGENET_TEMPLATES``), chosen to suit photographs.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a good photo of a {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a cropped photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a blurry photo of a {}.",
    "a picture of a {}.",
)


def parse_labels(text: str | Sequence[str]) -> list[str]:
    """``"cat, dog,car"`` or a list -> ``["cat", "dog", "car"]``; at least two distinct labels."""
    if isinstance(text, str):
        labels = [s.strip() for s in text.split(",")]
    else:
        labels = [str(s).strip() for s in text]
    labels = [s for s in labels if s]
    if len(labels) < 2:
        raise InputError(f"labels {text!r}: give at least two labels, e.g. --labels "
                         f"\"cat,dog,car\".")
    dup = sorted({s for s in labels if labels.count(s) > 1})
    if dup:
        raise InputError(f"labels {text!r}: {', '.join(dup)} given twice; each label once.")
    return labels


def check_templates(templates: Sequence[str] | None) -> tuple[str, ...]:
    if templates is None:
        return DEFAULT_TEMPLATES
    if isinstance(templates, str):
        templates = [templates]
    templates = tuple(templates)
    bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
    if not templates or bad:
        raise InputError(f"templates {bad or templates!r}: each template needs exactly one "
                         f"'{{}}' where the label goes, e.g. 'a photo of a {{}}.'.")
    return templates


def manifest_logit_scale(manifest) -> float | None:
    """The exp'd logit scale recorded in a manifest's ``extra`` (``logit_scale``, also looked for
    under ``extra.source``), or None."""
    extra = getattr(manifest, "extra", None) or {}
    for d in (extra, extra.get("source") if isinstance(extra.get("source"), dict) else {}):
        v = d.get("logit_scale")
        if isinstance(v, (int, float)) and v > 0:
            return float(v)
    return None


def classifier_weights(embed_texts, labels: Sequence[str],
                       templates: Sequence[str] | None = None) -> np.ndarray:
    """(len(labels), D) float32: per label, the renormalised mean of its normalised prompt
    embeddings. ``embed_texts`` maps a list of strings to L2-normalised rows."""
    templates = check_templates(templates)
    prompts = [t.format(label) for label in labels for t in templates]
    emb = np.asarray(embed_texts(prompts), dtype=np.float32)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    w = emb.reshape(len(labels), len(templates), -1).mean(axis=1)
    w /= np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    return w


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def probabilities(image_emb: np.ndarray, weights: np.ndarray, logit_scale: float) -> np.ndarray:
    return softmax(float(logit_scale) * (np.asarray(image_emb, np.float32) @ weights.T))
