"""Frozen teachers behind one interface: ``encode_image(pixel_values)``,
``encode_text(input_ids, attention_mask)`` (both L2-normalised), ``tokenize(texts)``,
``preprocess`` (:class:`PreprocessCfg`), ``embed_dim`` and ``identity`` (a weights checksum that
keys the embedding cache).

- :class:`DualEncoderTeacher`: an edgeclip checkpoint (e.g. the composite EfficientNet-Lite2 +
  MiniLM teacher trained with ``edgeclip distill --config configs/teacher.toml``).
- :class:`HFCLIPTeacher`: a Hugging Face ``CLIPModel`` directory.
- :class:`OpenCLIPTeacher`: an open_clip model name + local checkpoint (needs open_clip).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..manifest import PreprocessCfg, sha256_file
from .tokens import load_tokenizer, tokenize


def _files_digest(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(map(str, paths)):
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def _features(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    for key in ("image_embeds", "text_embeds", "pooler_output"):
        v = getattr(out, key, None)
        if v is not None:
            return v
    raise TypeError(f"unexpected output {type(out).__name__}")


class Teacher:
    name: str = "teacher"
    identity: str = ""
    embed_dim: int = 0
    preprocess: PreprocessCfg
    device: str = "cpu"

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class DualEncoderTeacher(Teacher):
    def __init__(self, path, device="cpu"):
        from .checkpoint import WEIGHTS, load_dual_encoder
        self.model = load_dual_encoder(path).to(device).eval().requires_grad_(False)
        self.name = self.model.name
        self.identity = sha256_file(Path(path) / WEIGHTS)
        self.embed_dim = self.model.embed_dim
        self.preprocess = self.model.preprocess
        self.device = device
        self._tok = load_tokenizer(self.model.tokenizer_file, self.model.context_length)

    @torch.no_grad()
    def encode_image(self, pixel_values):
        return self.model.encode_image(pixel_values)

    @torch.no_grad()
    def encode_text(self, input_ids, attention_mask):
        return self.model.encode_text(input_ids, attention_mask)

    def tokenize(self, texts):
        return tokenize(self._tok, texts)


class HFCLIPTeacher(Teacher):
    def __init__(self, path, device="cpu", context_length: int | None = None):
        from transformers import CLIPModel
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path}: not a Hugging Face model directory (no config.json)")
        self.model = CLIPModel.from_pretrained(str(path)).to(device).eval().requires_grad_(False)
        weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        self.identity = _files_digest(weights + [path / "config.json"])
        self.name = path.name
        self.embed_dim = int(self.model.config.projection_dim)
        self.device = device
        ctx = int(context_length or self.model.config.text_config.max_position_embeddings)
        tok_file = path / "tokenizer.json"
        if tok_file.is_file():
            self._tok = load_tokenizer(tok_file, ctx)
        else:
            from transformers import AutoTokenizer
            self._tok = AutoTokenizer.from_pretrained(str(path)).backend_tokenizer
            self._tok.enable_truncation(ctx)
            self._tok.enable_padding(length=ctx, pad_id=self._tok.padding["pad_id"]
                                     if self._tok.padding else 0)
        self.preprocess = self._preprocess_cfg(path)

    def _preprocess_cfg(self, path: Path) -> PreprocessCfg:
        size = int(self.model.config.vision_config.image_size)
        cfg = {"size": [size, size], "mean": [0.48145466, 0.4578275, 0.40821073],
               "std": [0.26862954, 0.26130258, 0.27577711]}
        pp = path / "preprocessor_config.json"
        if pp.is_file():
            d = json.loads(pp.read_text())
            cfg["mean"] = list(d.get("image_mean", cfg["mean"]))
            cfg["std"] = list(d.get("image_std", cfg["std"]))
        return PreprocessCfg.from_dict(cfg)

    @torch.no_grad()
    def encode_image(self, pixel_values):
        return F.normalize(_features(self.model.get_image_features(pixel_values=pixel_values)),
                           dim=-1)

    @torch.no_grad()
    def encode_text(self, input_ids, attention_mask):
        out = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(_features(out), dim=-1)

    def tokenize(self, texts):
        return tokenize(self._tok, texts)


class OpenCLIPTeacher(Teacher):
    def __init__(self, model_name: str, checkpoint: str | None, device="cpu"):
        try:
            import open_clip
        except ImportError:
            raise ConfigError("an open_clip teacher needs open_clip: pip install open_clip_torch "
                              "(or use a Hugging Face CLIP directory / an edgeclip checkpoint)"
                              ) from None
        if checkpoint and not Path(checkpoint).is_file():
            raise ConfigError(f"{checkpoint}: open_clip checkpoint not found")
        model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=checkpoint)
        self.model = model.to(device).eval().requires_grad_(False)
        self._tok = open_clip.get_tokenizer(model_name)
        self.name = model_name
        self.identity = _files_digest([checkpoint]) if checkpoint else f"open_clip:{model_name}"
        self.embed_dim = int(getattr(model, "embed_dim", 0) or model.text_projection.shape[1])
        self.device = device
        vc = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = vc.get("size", model.visual.image_size)
        size = [size, size] if isinstance(size, int) else list(size)
        self.preprocess = PreprocessCfg.from_dict(
            {"size": size, "mean": list(vc.get("mean", (0.48145466, 0.4578275, 0.40821073))),
             "std": list(vc.get("std", (0.26862954, 0.26130258, 0.27577711))),
             "interpolation": vc.get("interpolation", "bicubic"),
             "resize_mode": vc.get("resize_mode", "shortest")})

    @torch.no_grad()
    def encode_image(self, pixel_values):
        return F.normalize(self.model.encode_image(pixel_values), dim=-1)

    @torch.no_grad()
    def encode_text(self, input_ids, attention_mask):
        return F.normalize(self.model.encode_text(input_ids), dim=-1)

    def tokenize(self, texts):
        ids = self._tok(list(texts)).numpy().astype(np.int64)
        return ids, (ids != 0).astype(np.int64)


def load_teacher(cfg: dict, device: str = "cpu") -> Teacher:
    """``cfg``: ``{type: checkpoint|hf_clip|open_clip, path, model?, checkpoint?}``."""
    kind = cfg.get("type", "checkpoint")
    if kind == "checkpoint":
        if "path" not in cfg:
            raise ConfigError("teacher.path is not set (a checkpoint directory)")
        return DualEncoderTeacher(cfg["path"], device)
    if kind == "hf_clip":
        return HFCLIPTeacher(cfg["path"], device, cfg.get("context_length"))
    if kind == "open_clip":
        return OpenCLIPTeacher(cfg["model"], cfg.get("checkpoint"), device)
    raise ConfigError(f"teacher.type '{kind}' is unknown (known: checkpoint, hf_clip, open_clip)")
