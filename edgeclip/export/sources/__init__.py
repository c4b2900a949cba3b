"""Model sources: one grammar for every model a user can hand to ``edgeclip export``,
``edgeclip eval --model``, ``edgeclip-bench`` and a distillation teacher.

A source string is one of:

- an edgeclip checkpoint directory (``model.safetensors`` + ``config.json`` + ``tokenizer.json``);
- an edgeclip bundle (a directory with ``manifest.json``; only where a bundle makes sense, e.g.
  ``eval`` and ``bench``);
- a Hugging Face directory on local disk whose ``config.json`` declares ``CLIPModel`` or
  ``SiglipModel`` (any size), with its tokenizer and ``preprocessor_config.json``;
- ``open_clip:ARCH`` with a weights file (``--weights FILE``; safetensors, or a checkpoint
  loaded with ``weights_only=True``).

The foreign models (Hugging Face, open_clip) load as :class:`ForeignDualEncoder`.
"""

from __future__ import annotations

import os

from torch import nn

from ...errors import ConfigError
from ...manifest import PreprocessCfg
from ...model_source import ModelSource, parse_source


class ForeignDualEncoder(nn.Module):
    """A model from another library, shaped like :class:`edgeclip.distill.models.DualEncoder`.

    CONTRACT (what the export pipeline, verification, eval and the teacher wrapper rely on):

    - ``image_encoder``: a module, ``pixel_values`` float32 (B, 3, H, W) -> (B, D) float
      features (need not be L2-normalised; the exported graph normalises);
    - ``text_encoder``: a module, ``(input_ids int64 (B, L), attention_mask int64 (B, L))``
      -> (B, D) features. A model that takes no attention mask must still accept (and may
      ignore) it;
    - both encoders WRAP the library's own forward (Hugging Face ``get_image_features`` /
      ``get_text_features``, open_clip ``encode_image`` / ``encode_text``); they never
      re-implement it, so pooling (EOS position, SigLIP's attention-pooling head) is the library's;
    - ``embed_dim`` (int), ``name`` (str), ``preprocess`` (:class:`PreprocessCfg`, reproducing the
      library's image transform), ``context_length`` (int), ``tokenizer_file`` (path to a
      ``tokenizer.json`` for the ``tokenizers`` library whose ids — padded to
      ``context_length`` with the model's pad id — equal the library's own tokenizer's);
    - ``provenance``: dict with ``source`` (the source string), ``library``, ``library_version``,
      ``architecture`` and ``weights_sha256`` (sha256 of the weights file(s), or ``"random"``);
    - ``logit_scale``: float (the exp'd scale) or None;
    - ``encode_image`` / ``encode_text``: the encoders' outputs (unnormalised), like DualEncoder.
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, *, embed_dim: int,
                 name: str, preprocess: PreprocessCfg, context_length: int,
                 tokenizer_file: str | os.PathLike, provenance: dict,
                 logit_scale: float | None = None):
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.embed_dim = int(embed_dim)
        self.name = str(name)
        self.preprocess = preprocess
        self.context_length = int(context_length)
        self.tokenizer_file = str(tokenizer_file)
        self.provenance = dict(provenance)
        self.logit_scale = None if logit_scale is None else float(logit_scale)

    def encode_image(self, pixel_values):
        return self.image_encoder(pixel_values)

    def encode_text(self, input_ids, attention_mask):
        return self.text_encoder(input_ids, attention_mask)

    def forward(self, pixel_values, input_ids, attention_mask):
        return self.encode_image(pixel_values), self.encode_text(input_ids, attention_mask)


def load_source(source: str | os.PathLike | ModelSource, weights: str | os.PathLike | None = None,
                *, context_length: int | None = None, allow_bundle: bool = False):
    """A source (see :mod:`edgeclip.model_source`) -> a torch dual encoder:
    :class:`~edgeclip.distill.models.DualEncoder` for an edgeclip checkpoint,
    :class:`ForeignDualEncoder` for a Hugging Face directory or ``open_clip:ARCH``.
    A bundle is refused (it has no torch model) unless ``allow_bundle``, then None comes back."""
    src = source if isinstance(source, ModelSource) else parse_source(
        source, weights, allow_bundle=allow_bundle)
    if src.kind == "bundle":
        return None
    if src.kind == "checkpoint":
        from ... import __version__
        from ...distill.checkpoint import WEIGHTS, load_dual_encoder
        from ...manifest import sha256_file
        model = load_dual_encoder(src.path)
        model.provenance = {"source": src.text, "library": "edgeclip",
                            "library_version": __version__, "architecture": model.name,
                            "weights_sha256": sha256_file(src.path / WEIGHTS)}
        return model
    if src.kind == "hf":
        from .hf import load_hf
        return load_hf(src.path, source=src.text, context_length=context_length)
    if src.kind == "open_clip":
        loader = _open_clip_loader()
        model = loader(src.architecture, None if src.weights is None else str(src.weights),
                       context_length=context_length)
        model.provenance.setdefault("source", src.text)
        return model
    raise ConfigError(f"{src.text}: unknown source kind {src.kind!r}.")


def _open_clip_loader():
    how = ("open_clip:ARCH sources need open_clip: pip install open_clip_torch (see the README's "
           "'Use your own CLIP' section), or pass a Hugging Face CLIPModel directory.")
    try:
        from . import open_clip as mod
    except ModuleNotFoundError as e:
        raise ConfigError(f"{how} ({e})") from None
    loader = getattr(mod, "load_open_clip", None)
    if loader is None:
        raise ConfigError(how)
    return loader


def weights_identity(model) -> str:
    """A stable id of a loaded model's weights (keys the teacher-embedding cache)."""
    prov = getattr(model, "provenance", None)
    if prov and prov.get("weights_sha256") not in (None, "random"):
        return f"{prov.get('architecture')}:{prov['weights_sha256']}"
    import hashlib
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


__all__ = ["ForeignDualEncoder", "load_source", "parse_source", "ModelSource", "weights_identity"]
