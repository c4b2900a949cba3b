"""Weight-space ensembling of two checkpoints of one architecture (WiSE-FT).

``merged = (1 - alpha) * A + alpha * B``, tensor by tensor (Wortsman et al., "Robust fine-tuning
of zero-shot models", CVPR 2022, arXiv 2109.01903). Both checkpoints must be fine-tuned from the
same starting weights (same pretrained towers, same ``run.seed`` for the new heads): then the
straight line between them stays a good model, and ``alpha`` trades A's behaviour for B's. The
use here: A a general student, B one distilled from a stronger but domain-specialised teacher.

Floating-point tensors are interpolated in float32 and stored in their own dtype; integer buffers
(BatchNorm's ``num_batches_tracked``) are taken from B. Everything that defines the model other
than its weights (config, tokenizer, preprocessing) must be equal in both, or nothing is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import BundleError, ConfigError
from ..paths import expand_path

# config keys that may differ between the two checkpoints (provenance, not architecture)
_FREE_KEYS = {"tokenizer", "merge"}


def _arch(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in _FREE_KEYS}


def _diff(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def merge_checkpoints(a: str | os.PathLike, b: str | os.PathLike, alpha: float,
                      out: str | os.PathLike) -> Path:
    """Write ``(1 - alpha) * a + alpha * b`` as a checkpoint directory ``out`` and return it."""
    import torch

    from .checkpoint import CONFIG, TOKENIZER, WEIGHTS, is_checkpoint, load_dual_encoder, save_dual_encoder
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise ConfigError(f"--alpha {alpha!r} is not a number: give one in [0, 1], "
                          "e.g. --alpha 0.5 (0 = the first checkpoint, 1 = the second).") from None
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"--alpha {alpha} is outside [0, 1]: 0 gives the first checkpoint, "
                          "1 the second; e.g. --alpha 0.5.")
    pa, pb, po = expand_path(a), expand_path(b), expand_path(out)
    for p in (pa, pb):
        if not is_checkpoint(p):
            raise BundleError(f"{p}: not a dual-encoder checkpoint (needs {WEIGHTS} and {CONFIG}); "
                              "merge takes two `edgeclip distill` checkpoints such as runs/x/best.")
    if po.resolve() in (pa.resolve(), pb.resolve()):
        raise ConfigError(f"--out {po} is one of the inputs: write the merge to a new directory.")
    if po.exists() and (not po.is_dir() or any(po.iterdir())):
        raise ConfigError(f"--out {po} already exists and is not empty: give a new directory "
                          "(nothing there is overwritten).")
    ca, cb = {}, {}
    for p, c in ((pa, ca), (pb, cb)):
        try:
            c.update(json.loads((p / CONFIG).read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{p / CONFIG}: not valid JSON ({e}).") from None
    diff = _diff(_arch(ca), _arch(cb))
    if diff:
        raise ConfigError(f"{pa} and {pb} are different models (config differs at "
                          f"{', '.join(diff[:5])}): only checkpoints of one architecture, "
                          "fine-tuned from the same weights, can be merged.")
    # both loaded and checked against their configs (a damaged file is a BundleError);
    # B's modules, config and tokenizer carry the merged weights
    sa = load_dual_encoder(pa).state_dict()
    model = load_dual_encoder(pb)
    sb = model.state_dict()
    if (pa / TOKENIZER).read_bytes() != (pb / TOKENIZER).read_bytes():
        raise ConfigError(f"{pa / TOKENIZER} and {pb / TOKENIZER} differ: the merged model "
                          "would have no single vocabulary; merge checkpoints of one text tower.")
    merged = {}
    for k, vb in sb.items():
        va = sa[k]
        if vb.is_floating_point():
            merged[k] = torch.lerp(va.float(), vb.float(), alpha).to(vb.dtype)
        else:
            merged[k] = vb
    model.load_state_dict(merged, strict=True)
    model.config["merge"] = {"a": str(pa), "b": str(pb), "alpha": alpha,
                             "method": "(1 - alpha) * a + alpha * b (WiSE-FT)"}
    return save_dual_encoder(model, po)


__all__ = ["merge_checkpoints"]
