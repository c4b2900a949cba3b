"""Dual encoders built from a registry of model configs (JSON package data, open_clip style).

``build_student("lite0-minilm2")`` or ``build_student({...config dict...})``. A config holds
``embed_dim``, ``image`` (tower config), ``text`` (tower config), ``preprocess``
(:class:`PreprocessCfg` dict), ``context_length`` and ``tokenizer`` (``"minilm"`` or a file name
beside the registry JSON).
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path

from torch import nn

from ..errors import ConfigError
from ..manifest import PreprocessCfg
from .image_towers import build_image_tower
from .text_towers import TextTower, minilm_dir


def registry_dir() -> Path:
    return Path(str(resources.files("edgeclip") / "configs" / "models"))


def list_models() -> list[str]:
    return sorted(p.stem for p in registry_dir().glob("*.json")
                  if not p.name.endswith(".tokenizer.json"))


def model_config(name_or_config) -> dict:
    """A registry name, a path to a JSON file, or a dict -> a full config dict (a copy)."""
    if isinstance(name_or_config, dict):
        cfg = copy.deepcopy(name_or_config)
    else:
        name = str(name_or_config)
        path = registry_dir() / f"{name}.json"
        if not path.is_file():
            path = Path(name)
            if not (path.suffix == ".json" and path.is_file()):
                raise ConfigError(f"unknown model '{name}': not in the registry "
                                  f"({', '.join(list_models())}) and not a .json file")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
        cfg.setdefault("name", path.stem)
    for key in ("embed_dim", "image", "text"):
        if key not in cfg:
            raise ConfigError(f"model config '{cfg.get('name', '?')}' lacks '{key}'")
    cfg.setdefault("name", "custom")
    cfg.setdefault("context_length", 32)
    cfg.setdefault("tokenizer", "minilm")
    cfg.setdefault("preprocess", PreprocessCfg().to_dict())
    return cfg


def merge(base: dict, over: dict) -> dict:
    """Deep-merge ``over`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def tokenizer_path(cfg: dict) -> Path:
    tok = cfg.get("tokenizer", "minilm")
    if tok == "minilm":
        return minilm_dir() / "tokenizer.json"
    if tok == "mpnet":  # all-mpnet-base-v2's own (edgeclip.distill.mpnet)
        from .mpnet import mpnet_dir
        return mpnet_dir() / "tokenizer.json"
    p = registry_dir() / tok
    if p.is_file():
        return p
    if Path(tok).is_file():
        return Path(tok)
    raise ConfigError(f"model '{cfg.get('name')}': tokenizer '{tok}' not found")


class DualEncoder(nn.Module):
    """``image_encoder`` (pixel_values -> (B, D)) and ``text_encoder`` (input_ids,
    attention_mask -> (B, D)); both outputs L2-normalised."""

    def __init__(self, config: dict, image_encoder: nn.Module, text_encoder: nn.Module,
                 tokenizer_file: str | Path):
        super().__init__()
        self.config = config
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.embed_dim = int(config["embed_dim"])
        self.name = str(config["name"])
        self.preprocess = PreprocessCfg.from_dict(config["preprocess"], f"{self.name}.preprocess")
        self.context_length = int(config["context_length"])
        self.tokenizer_file = str(tokenizer_file)

    def encode_image(self, pixel_values):
        return self.image_encoder(pixel_values)

    def encode_text(self, input_ids, attention_mask):
        return self.text_encoder(input_ids, attention_mask)

    def forward(self, pixel_values, input_ids, attention_mask):
        return self.encode_image(pixel_values), self.encode_text(input_ids, attention_mask)


def build_student(name_or_config, pretrained: bool = True, overrides: dict | None = None
                  ) -> DualEncoder:
    cfg = model_config(name_or_config)
    if overrides:
        cfg = merge(cfg, overrides)
    dim = int(cfg["embed_dim"])
    if dim < 1:
        raise ConfigError(f"embed_dim must be positive, got {dim}")
    image = build_image_tower(cfg["image"], dim, pretrained)
    if cfg["text"].get("type") == "mpnet_frozen":  # frozen all-mpnet-base-v2 + a trained head
        from .mpnet_tower import MpnetFrozenTower
        text = MpnetFrozenTower(cfg["text"], dim, pretrained)
    else:
        text = TextTower(cfg["text"], dim, pretrained)
    return DualEncoder(cfg, image, text, tokenizer_path(cfg))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
