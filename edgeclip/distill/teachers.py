"""Frozen teachers behind one interface: ``encode_image(pixel_values)``,
``encode_text(input_ids, attention_mask)`` (both L2-normalised), ``tokenize(texts)``,
``preprocess`` (:class:`PreprocessCfg`), ``embed_dim`` and ``identity`` (a weights checksum that
keys the embedding cache).

- :class:`DualEncoderTeacher`: an edgeclip checkpoint (e.g. the composite EfficientNet-Lite2 +
  MiniLM teacher trained with ``edgeclip distill --config configs/teacher.toml``).
- :class:`SourceTeacher`: any other model source (:mod:`edgeclip.model_source`): a Hugging Face
  ``CLIPModel`` / ``SiglipModel`` directory or ``open_clip:ARCH`` + weights file, through the
  same loader as ``edgeclip export`` (:func:`edgeclip.export.sources.load_source`).
"""

from __future__ import annotations

import hashlib
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


class SourceTeacher(Teacher):
    """A foreign model (Hugging Face CLIPModel / SiglipModel directory, ``open_clip:ARCH``) from
    :func:`edgeclip.export.sources.load_source`: the library's own forward, the tokenizer.json and
    preprocessing its export would ship (so the student learns from exactly what the exported
    teacher computes)."""

    def __init__(self, source, weights=None, device="cpu", context_length: int | None = None):
        from ..export.sources import load_source, weights_identity
        from ..model_source import ModelSource, parse_source
        src = source if isinstance(source, ModelSource) else parse_source(source, weights,
                                                                          allow_bundle=False)
        self.model = load_source(src, context_length=context_length).to(device).eval()
        self.model.requires_grad_(False)
        self.source = src
        self.name = self.model.name
        self.embed_dim = int(self.model.embed_dim)
        self.preprocess = self.model.preprocess
        self.device = device
        self.context_length = int(self.model.context_length)
        self.identity = (f"{src.kind}:{weights_identity(self.model)}:ctx{self.context_length}:"
                         f"{_files_digest([self.model.tokenizer_file])}")
        self._tok = load_tokenizer(self.model.tokenizer_file, self.context_length)

    @torch.no_grad()
    def encode_image(self, pixel_values):
        return F.normalize(self.model.encode_image(pixel_values).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, input_ids, attention_mask):
        return F.normalize(self.model.encode_text(input_ids, attention_mask).float(), dim=-1)

    def tokenize(self, texts):
        return tokenize(self._tok, texts)


TEACHER_TYPES = ("checkpoint", "hf", "hf_clip", "hf_siglip", "open_clip", "source")


def load_teacher(cfg: dict, device: str = "cpu") -> Teacher:
    """``cfg`` (the ``[teacher]`` table): ``path`` = any model source (an edgeclip checkpoint
    directory, a Hugging Face CLIPModel/SiglipModel directory, ``open_clip:ARCH``) with optional
    ``weights`` (open_clip) and ``context_length``; ``type`` may name what ``path`` must be
    (``checkpoint``, ``hf`` / ``hf_clip`` / ``hf_siglip``, ``open_clip``; ``source`` = any).
    The older ``type = "open_clip"`` with ``model`` (+ ``checkpoint``) keeps working."""
    from ..model_source import parse_source
    kind = cfg.get("type", "checkpoint")
    if kind not in TEACHER_TYPES:
        raise ConfigError(f"teacher.type '{kind}' is unknown (known: {', '.join(TEACHER_TYPES)})")
    path = cfg.get("path")
    weights = cfg.get("weights", cfg.get("checkpoint"))
    if kind == "open_clip" and not path:
        if not cfg.get("model"):
            raise ConfigError("teacher.type = 'open_clip' needs teacher.path = 'open_clip:ARCH' "
                              "(or teacher.model = 'ARCH'), and teacher.weights = FILE")
        path = f"open_clip:{cfg['model']}"
    if not path:
        raise ConfigError("teacher.path is not set: an edgeclip checkpoint directory, a Hugging "
                          "Face CLIPModel/SiglipModel directory, or open_clip:ARCH (with "
                          "teacher.weights)")
    src = parse_source(path, weights, allow_bundle=False)
    want = {"checkpoint": ("checkpoint", "hf", "open_clip"),  # the default type: any source
            "hf": ("hf",), "hf_clip": ("hf",), "hf_siglip": ("hf",),
            "open_clip": ("open_clip",), "source": ("checkpoint", "hf", "open_clip")}[kind]
    arch = {"hf_clip": "CLIPModel", "hf_siglip": "SiglipModel"}.get(kind)
    if src.kind not in want or (arch and src.architecture != arch):
        raise ConfigError(f"teacher.type = '{kind}' but teacher.path {path!r} is a "
                          f"{src.describe()}; fix teacher.type or teacher.path")
    if src.kind == "checkpoint":
        return DualEncoderTeacher(src.path, device)
    return SourceTeacher(src, device=device, context_length=cfg.get("context_length"))
