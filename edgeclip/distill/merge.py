"""Weight-space ensembling of checkpoints of one architecture (WiSE-FT, model soups).

Two checkpoints: ``merged = (1 - alpha) * A + alpha * B``, tensor by tensor (Wortsman et al.,
"Robust fine-tuning of zero-shot models", CVPR 2022, arXiv 2109.01903). ``text_alpha`` gives the
text tower its own alpha (``alpha`` then weights the image tower): the two towers may trade A's
behaviour for B's at different rates. Two or more checkpoints without an alpha: their uniform
mean, a *model soup* (Wortsman et al., ICML 2022, arXiv 2203.05482).

All checkpoints must be fine-tuned from the same starting weights (same pretrained towers, same
``run.seed`` for the new heads): then the straight lines between them stay good models. The use
here: A a general student, B one distilled from a stronger but domain-specialised teacher; or
several students of one teacher trained with different settings.

Floating-point tensors are combined in float32 and stored in their own dtype; integer buffers
(BatchNorm's ``num_batches_tracked``) are taken from the last checkpoint. Everything that defines
the model other than its weights (config, tokenizer, preprocessing) must be equal in all, or
nothing is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import BundleError, ConfigError
from ..paths import expand_path

# config keys that may differ between the checkpoints (provenance, not architecture)
_FREE_KEYS = {"tokenizer", "merge"}
# state-dict keys of the text tower (the rest is the image tower)
TEXT_PREFIX = "text_encoder."


def _arch(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in _FREE_KEYS}


def _diff(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _alpha(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} {value!r} is not a number: give one in [0, 1], "
                          f"e.g. {name} 0.5 (0 = the first checkpoint, 1 = the second).") from None
    if not 0.0 <= v <= 1.0:
        raise ConfigError(f"{name} {v} is outside [0, 1]: 0 gives the first checkpoint, "
                          f"1 the second; e.g. {name} 0.5.")
    return v


def _load(paths: list[Path], out: Path):
    """Check every input and ``out``; return the state dicts and the last input's model."""
    from .checkpoint import CONFIG, TOKENIZER, WEIGHTS, is_checkpoint, load_dual_encoder
    for p in paths:
        if not is_checkpoint(p):
            raise BundleError(f"{p}: not a dual-encoder checkpoint (needs {WEIGHTS} and {CONFIG}); "
                              "merge takes `edgeclip distill` checkpoints such as runs/x/best.")
    if out.resolve() in {p.resolve() for p in paths}:
        raise ConfigError(f"--out {out} is one of the inputs: write the merge to a new directory.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} already exists and is not empty: give a new directory "
                          "(nothing there is overwritten).")
    configs = []
    for p in paths:
        try:
            configs.append(json.loads((p / CONFIG).read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{p / CONFIG}: not valid JSON ({e}).") from None
    for p, c in zip(paths[1:], configs[1:]):
        diff = _diff(_arch(configs[0]), _arch(c))
        if diff:
            raise ConfigError(f"{paths[0]} and {p} are different models (config differs at "
                              f"{', '.join(diff[:5])}): only checkpoints of one architecture, "
                              "fine-tuned from the same weights, can be merged.")
    # each loaded and checked against its config (a damaged file is a BundleError); the last
    # one's modules, config and tokenizer carry the merged weights
    states = [load_dual_encoder(p).state_dict() for p in paths[:-1]]
    model = load_dual_encoder(paths[-1])
    states.append(model.state_dict())
    tok = (paths[-1] / TOKENIZER).read_bytes()
    for p in paths[:-1]:
        if (p / TOKENIZER).read_bytes() != tok:
            raise ConfigError(f"{p / TOKENIZER} and {paths[-1] / TOKENIZER} differ: the merged "
                              "model would have no single vocabulary; merge checkpoints of one "
                              "text tower.")
    return states, model


def merge_checkpoints(a: str | os.PathLike, b: str | os.PathLike, alpha: float,
                      out: str | os.PathLike, text_alpha: float | None = None) -> Path:
    """Write ``(1 - alpha) * a + alpha * b`` as a checkpoint directory ``out`` and return it.
    With ``text_alpha``, the text tower is ``(1 - text_alpha) * a + text_alpha * b``."""
    import torch

    from .checkpoint import save_dual_encoder
    alpha = _alpha(alpha, "--alpha")
    t_alpha = alpha if text_alpha is None else _alpha(text_alpha, "--text-alpha")
    pa, pb, po = expand_path(a), expand_path(b), expand_path(out)
    (sa, sb), model = _load([pa, pb], po)
    merged = {}
    for k, vb in sb.items():
        w = t_alpha if k.startswith(TEXT_PREFIX) else alpha
        merged[k] = torch.lerp(sa[k].float(), vb.float(), w).to(vb.dtype) if vb.is_floating_point() else vb
    model.load_state_dict(merged, strict=True)
    model.config["merge"] = {"a": str(pa), "b": str(pb), "alpha": alpha,
                             "method": "(1 - alpha) * a + alpha * b (WiSE-FT)"}
    if text_alpha is not None:
        model.config["merge"].update(image_alpha=alpha, text_alpha=t_alpha)
    return save_dual_encoder(model, po)


def soup_checkpoints(paths: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Write the uniform mean of two or more checkpoints (a model soup) to ``out``."""
    import torch

    from .checkpoint import save_dual_encoder
    ps = [expand_path(p) for p in paths]
    if len(ps) < 2:
        raise ConfigError("a soup needs two or more checkpoints.")
    if len({p.resolve() for p in ps}) < len(ps):
        raise ConfigError("the same checkpoint is given twice: list each once (a repeated one "
                          "would count double).")
    po = expand_path(out)
    states, model = _load(ps, po)
    merged = {}
    for k, v in states[-1].items():
        merged[k] = (torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype)
                     if v.is_floating_point() else v)
    model.load_state_dict(merged, strict=True)
    model.config["merge"] = {"inputs": [str(p) for p in ps],
                             "method": "uniform mean of the inputs (model soup)"}
    return save_dual_encoder(model, po)


__all__ = ["merge_checkpoints", "soup_checkpoints"]
