"""Checkpoint directory of a dual encoder (the contract ``edgeclip export`` reads).

``model.safetensors`` (all weights), ``config.json`` (registry config + ``name``, ``embed_dim``,
``preprocess``, ``context_length``), ``tokenizer.json``; optionally ``train_state.safetensors`` +
``train_state.json`` (written by the trainer, for resume).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from ..errors import BundleError
from ..paths import expand_path
from .models import DualEncoder, build_student

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"


def save_dual_encoder(model: DualEncoder, path: str | os.PathLike) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(sd, str(out / WEIGHTS), metadata={"format": "pt", "name": model.name})
    cfg = dict(model.config)
    cfg.update(name=model.name, embed_dim=model.embed_dim, preprocess=model.preprocess.to_dict(),
               context_length=model.context_length, tokenizer=TOKENIZER)
    (out / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    src = Path(model.tokenizer_file)
    if src.resolve() != (out / TOKENIZER).resolve():
        shutil.copyfile(src, out / TOKENIZER)
    return out


def is_checkpoint(path: str | os.PathLike) -> bool:
    p = expand_path(path)
    return (p / WEIGHTS).is_file() and (p / CONFIG).is_file()


def load_dual_encoder(path: str | os.PathLike, map_location: str = "cpu") -> DualEncoder:
    p = expand_path(path)
    if not is_checkpoint(p):
        raise BundleError(f"{p}: not a dual-encoder checkpoint (needs {WEIGHTS} and {CONFIG}; "
                          f"train one with `edgeclip distill`).")
    try:
        cfg = json.loads((p / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{p / CONFIG}: not valid JSON ({e.msg}).") from None
    if not (p / TOKENIZER).is_file():
        raise BundleError(f"{p}: {TOKENIZER} is missing; copy the whole checkpoint directory.")
    cfg["tokenizer"] = str(p / TOKENIZER)
    model = build_student(cfg, pretrained=False)
    model.config["tokenizer"] = TOKENIZER
    try:
        sd = load_file(str(p / WEIGHTS), device=map_location)
    except Exception as e:  # safetensors raises its own error type for a damaged file
        raise BundleError(f"{p / WEIGHTS}: not a readable safetensors file ({e}); the checkpoint "
                          "is damaged or incomplete: copy it again or retrain.") from None
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise BundleError(f"{p / WEIGHTS}: weights do not match {CONFIG}: "
                          f"{str(e).splitlines()[0]}") from None
    return model.eval()


def weights_digest(path: str | os.PathLike) -> str:
    from ..manifest import sha256_file
    return sha256_file(Path(path) / WEIGHTS)


__all__ = ["save_dual_encoder", "load_dual_encoder", "is_checkpoint", "weights_digest"]
