"""``open_clip:ARCH`` sources: an open_clip architecture plus a local weights file.

``load_open_clip(arch, weights)`` builds the architecture with open_clip itself (no download),
loads the weights (safetensors, or a checkpoint read with ``torch.load(weights_only=True)``) and
wraps open_clip's own ``encode_image`` / ``encode_text`` in a :class:`ForeignDualEncoder`:
pooling (the arg-max end-of-text position, the timm image heads) is exactly the library's.
Re-parameterisable image towers (MobileCLIP's FastViT) are fused with timm's
``reparameterize_model`` first, the inference form their authors deploy.

The tokenizer is the library's CLIP BPE (``open_clip.get_tokenizer(arch)``) rebuilt as a
``tokenizer.json`` for the ``tokenizers`` library from open_clip's bundled vocabulary: the same
merges, byte-level pre-tokenization and regex, ``<start_of_text>``/``<end_of_text>`` around the
text, truncation that keeps the end-of-text token, padding with id 0 to the context length.
Its text cleaning reproduces open_clip's (``ftfy.fix_text``, HTML unescape, whitespace collapse,
lower case) for what captions contain (Unicode NFC, curly quotes, ligatures, full-width forms,
the HTML entities ``&amp; &lt; &gt; &quot; &#39;``); ftfy's repair of mis-decoded text
("mojibake") has no ``tokenizers`` equivalent and is not reproduced.

Needs ``open_clip_torch`` (and ``timm`` for MobileCLIP), which import torchvision; see README.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import shutil
import tempfile
import weakref
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from ...errors import ConfigError
from ...manifest import PreprocessCfg, sha256_file
from . import ForeignDualEncoder

OPENCLIP_INSTALL = ("install them in a venv whose torch and torchvision load together: pip "
                    "install torch==2.14.1 torchvision==0.29.1 'open_clip_torch>=3.3,<4' timm "
                    "(README, 'Use your own CLIP')")

# ftfy.fix_text's character fixes that matter for captions, as tokenizers normalizers.
_QUOTES = {"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
           "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"'}
_LIGATURES = {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
              "\ufb05": "st", "\ufb06": "st", "\u0132": "IJ", "\u0133": "ij", "\u01c7": "LJ",
              "\u01c8": "Lj", "\u01c9": "lj", "\u01ca": "NJ", "\u01cb": "Nj", "\u01cc": "nj"}
# html.unescape applied twice: "&amp;amp;" -> "&" as well.
_ENTITIES = [("&amp;", "&")] * 2 + [("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'),
                                    ("&#39;", "'"), ("&#x27;", "'"), ("&nbsp;", " ")]


def _import_open_clip():
    try:
        import open_clip
    except ImportError as e:
        raise ConfigError(f"open_clip sources need open_clip and timm ({e}): "
                          f"{OPENCLIP_INSTALL}") from None
    return open_clip


def _unknown_arch(open_clip, arch: str) -> ConfigError:
    names = open_clip.list_models()
    close = difflib.get_close_matches(arch, names, n=5, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}" if close else \
        f"known: {', '.join(n for n in names if n.startswith(('ViT-B', 'MobileCLIP')))}, ..."
    if arch.lower() == "mobileclip-s0":
        hint += ("; MobileCLIP-S0's text tower is not in open_clip, MobileCLIP2-S0 has the same "
                 "MCi0 image tower")
    return ConfigError(f"open_clip architecture '{arch}' is unknown to open_clip "
                       f"{open_clip.__version__} ({hint}); pass open_clip:NAME with a name from "
                       f"open_clip.list_models().")


def _read_state_dict(open_clip, weights: Path, arch: str) -> dict:
    from open_clip.factory import load_state_dict
    try:
        return load_state_dict(str(weights), weights_only=True)
    except Exception as e:  # safetensors / pickle errors of every kind
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"{weights}: cannot read open_clip weights for '{arch}' ({first}); pass "
                          f"a .safetensors file or a state-dict checkpoint that "
                          f"torch.load(weights_only=True) accepts.") from None


def _mismatch(model: nn.Module, sd: dict, arch: str, weights: Path) -> ConfigError:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in sd and hasattr(sd[k], "shape") and tuple(sd[k].shape) != tuple(own[k].shape)]
    parts = []
    if shapes:
        parts.append(f"shape mismatch (file vs {arch}): {'; '.join(shapes[:3])}")
    for what, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            shown = [k for k in keys if not k.endswith("num_batches_tracked")][:3] or keys[:3]
            parts.append(f"{len(keys)} {what}: {', '.join(shown)}"
                         + (" ..." if len(keys) > len(shown) else ""))
    return ConfigError(f"{weights}: weights do not fit open_clip architecture '{arch}' "
                       f"({'; '.join(parts) or 'load_state_dict failed'}); pass the architecture "
                       f"these weights were trained with (open_clip:NAME) or weights for {arch}.")


def _load_weights(open_clip, model: nn.Module, weights: Path, arch: str) -> None:
    sd = _read_state_dict(open_clip, weights, arch)
    if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
        raise ConfigError(f"{weights}: not a state dict (a mapping of parameter names to "
                          f"tensors); pass an open_clip checkpoint for '{arch}'.")
    from open_clip.factory import load_checkpoint
    try:
        # open_clip's own loader: third-party key conversions, position-embedding resizing.
        load_checkpoint(model, str(weights), strict=True, weights_only=True)
    except (RuntimeError, KeyError, ValueError, IndexError):
        raise _mismatch(model, sd, arch, weights) from None


def tokenizer_json(open_clip_tokenizer, context_length: int):
    """A ``tokenizers.Tokenizer`` reproducing open_clip's ``SimpleTokenizer`` ids."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

    tok = open_clip_tokenizer
    enc = dict(tok.encoder)
    merges = [pair for pair, _ in sorted(tok.bpe_ranks.items(), key=lambda kv: kv[1])]
    special = [tok.decoder[i] for i in tok.all_special_ids]
    bpe = models.BPE(vocab=enc, merges=merges, end_of_word_suffix="</w>",
                     continuing_subword_prefix="", fuse_unk=False)
    t = Tokenizer(bpe)
    replace = [normalizers.Replace(a, b) for a, b in
               list(_QUOTES.items()) + list(_LIGATURES.items())]
    # full-width ASCII forms (ftfy's fix_character_width) -> ASCII
    width = [normalizers.Replace(chr(c), chr(c - 0xFEE0)) for c in range(0xFF01, 0xFF5F)]
    t.normalizer = normalizers.Sequence(
        [normalizers.NFC(), *replace, *width,
         *[normalizers.Replace(a, b) for a, b in _ENTITIES],
         normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()])
    pattern = "|".join(special) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    t.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    sot, eot = special[0], special[1]
    t.add_special_tokens(special)
    t.post_processor = processors.TemplateProcessing(
        single=f"{sot} $A {eot}", pair=f"{sot} $A {eot} $B {eot}",
        special_tokens=[(sot, tok.sot_token_id), (eot, tok.eot_token_id)])
    t.enable_truncation(max_length=int(context_length))
    t.enable_padding(length=int(context_length), pad_id=0, pad_token=tok.decoder[0])
    return t


def _preprocess(model) -> PreprocessCfg:
    vc = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = vc.get("size", getattr(model.visual, "image_size", 224))
    size = [int(size), int(size)] if isinstance(size, int) else [int(s) for s in size]
    interp = vc.get("interpolation", "bicubic")
    if interp not in ("bicubic", "bilinear", "nearest"):
        raise ConfigError(f"open_clip preprocess interpolation '{interp}' has no inference form; "
                          f"pass image_interpolation bicubic or bilinear.")
    return PreprocessCfg.from_dict(
        {"size": size, "mean": [float(x) for x in vc.get("mean", (0.48145466, 0.4578275,
                                                                   0.40821073))],
         "std": [float(x) for x in vc.get("std", (0.26862954, 0.26130258, 0.27577711))],
         "interpolation": interp, "resize_mode": vc.get("resize_mode", "shortest"),
         "crop": "center", "fill": int(vc.get("fill_color", 0))}, where="open_clip preprocess")


@contextlib.contextmanager
def _mha_slow_path():
    """``nn.MultiheadAttention``'s inference fast path (``_native_multi_head_attention``, the
    same math) has no ONNX export; the module's regular path is used while a tower runs."""
    prev = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(prev)


class OpenCLIPImageEncoder(nn.Module):
    """``pixel_values`` -> open_clip's ``encode_image`` (unnormalised)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        with _mha_slow_path():
            return self.model.encode_image(pixel_values, normalize=False)


class OpenCLIPTextEncoder(nn.Module):
    """``(input_ids, attention_mask)`` -> open_clip's ``encode_text`` (unnormalised).

    open_clip takes no mask: it sees the ids padded with 0 to the context length. Masked positions
    are set to the pad id 0 (``input_ids * attention_mask``), which is what open_clip's tokenizer
    puts there, so the result is the library's and the graph keeps its ``attention_mask`` input.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        with _mha_slow_path():
            return self.model.encode_text(input_ids * attention_mask.to(input_ids.dtype),
                                          normalize=False)


def _has_reparam(model: nn.Module) -> bool:
    return any(hasattr(m, "reparameterize") for m in model.modules())


def load_open_clip(arch: str, weights: str | Path | None, *, context_length: int | None = None,
                   reparameterize: bool = True) -> ForeignDualEncoder:
    """Build open_clip ``arch`` with ``weights`` (None: random init, recorded as such)."""
    open_clip = _import_open_clip()
    arch = str(arch)
    if open_clip.get_model_config(arch) is None:
        raise _unknown_arch(open_clip, arch)
    wpath = None
    if weights is not None:
        wpath = Path(weights).expanduser()
        if not wpath.is_file():
            raise ConfigError(f"{wpath}: open_clip weights file not found; pass --weights FILE "
                              f"(.safetensors or a state-dict checkpoint) for '{arch}'.")
    kwargs = {"force_context_length": int(context_length)} if context_length else {}
    prev = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip's "initialized randomly": weights load below
    try:
        model = open_clip.create_model(arch, pretrained=None, load_weights=False,
                                       pretrained_image=False, pretrained_text=False, **kwargs)
    finally:
        logging.disable(prev)
    if wpath is not None:
        _load_weights(open_clip, model, wpath, arch)
    model = model.eval().requires_grad_(False)
    reparam = False
    if reparameterize and _has_reparam(model):
        from timm.utils.model import reparameterize_model
        model = reparameterize_model(model).eval()
        reparam = True
    try:
        oc_tok = open_clip.get_tokenizer(arch, context_length=context_length)
    except Exception as e:  # e.g. a Hugging Face tokenizer that is not on this disk
        raise ConfigError(f"open_clip '{arch}': its tokenizer does not load here ({e}).") from None
    if not hasattr(oc_tok, "bpe_ranks"):
        raise ConfigError(f"open_clip '{arch}' uses {type(oc_tok).__name__}; edgeclip exports "
                          f"open_clip models with the CLIP BPE tokenizer (ViT-*, MobileCLIP*).")
    ctx = int(context_length or oc_tok.context_length or model.context_length)
    tmp = Path(tempfile.mkdtemp(prefix="edgeclip-open_clip-"))
    tok_file = tmp / "tokenizer.json"
    tokenizer_json(oc_tok, ctx).save(str(tok_file))
    with torch.no_grad():
        probe = model.encode_text(torch.zeros(1, ctx, dtype=torch.long))
    try:
        version = metadata.version("open_clip_torch")
    except metadata.PackageNotFoundError:
        version = getattr(open_clip, "__version__", "?")
    provenance = {"source": f"open_clip:{arch}", "library": "open_clip", "library_version": version,
                  "architecture": arch,
                  "weights": str(wpath) if wpath else None,
                  "weights_sha256": sha256_file(wpath) if wpath else "random",
                  "reparameterized": reparam}
    fde = ForeignDualEncoder(
        OpenCLIPImageEncoder(model), OpenCLIPTextEncoder(model), embed_dim=int(probe.shape[-1]),
        name=f"open_clip-{arch}", preprocess=_preprocess(model), context_length=ctx,
        tokenizer_file=tok_file, provenance=provenance,
        logit_scale=float(model.logit_scale.exp()) if hasattr(model, "logit_scale") else None)
    object.__setattr__(fde, "open_clip_model", model)  # the library's module (not a submodule)
    weakref.finalize(fde, shutil.rmtree, str(tmp), True)
    return fde


def open_clip_config(arch: str) -> dict:
    """open_clip's registered config of ``arch`` (a copy), or ConfigError listing close names."""
    open_clip = _import_open_clip()
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise _unknown_arch(open_clip, arch)
    return json.loads(json.dumps(cfg))


__all__ = ["load_open_clip", "tokenizer_json", "open_clip_config", "OpenCLIPImageEncoder",
           "OpenCLIPTextEncoder"]
