"""Hugging Face ``CLIPModel`` / ``SiglipModel`` directories as :class:`ForeignDualEncoder`.

The encoders call the library's own ``get_image_features`` / ``get_text_features`` (CLIP's EOS
pooling by ``eos_token_id`` or arg-max, SigLIP's attention-pooling head: exactly as transformers
computes them). The directory's own files drive the rest:

- tokenizer: ``AutoTokenizer`` on the directory (its ``tokenizer.json``, or ``vocab.json`` +
  ``merges.txt``), saved as a ``tokenizer.json`` that pads to the context length with the
  model's pad id. Checked at load: the saved file's ids equal the library tokenizer's
  (``padding="max_length", truncation=True``) on real captions, or a ConfigError says so.
- context length: the text config's ``max_position_embeddings`` (CLIP 77, SigLIP 64).
- preprocessing: ``preprocessor_config.json`` mapped onto :class:`PreprocessCfg` (CLIP:
  shortest-side resize, center crop with Hugging Face's offsets, CLIP mean/std; SigLIP: squash
  resize, mean/std 0.5), with the resampling filter it declares.
- SigLIP text: padded to ``max_length`` and run with no attention mask, as the model was trained
  (and as the SigLIP model card's usage does); the mask input of the exported graph is accepted
  and has no effect on the result.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from ...errors import ConfigError
from ...manifest import PreprocessCfg, sha256_file
from ...model_source import HF_ARCHITECTURES, hf_architecture
from ...paths import expand_path
from . import ForeignDualEncoder

#: PIL resampling codes as stored in ``preprocessor_config.json`` (``resample``).
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
PREPROCESSOR = "preprocessor_config.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "spiece.model",
                   "sentencepiece.bpe.model")
#: Captions the saved tokenizer.json is checked on against the library's tokenizer.
CHECK_TEXTS = ["a photo of a cat", "A Dog running on the BEACH!", "two people, one bicycle.",
               "  extra   spaces\tand\nnewlines ", "café naïve résumé", "",
               "1234 5678 #tag @user",
               "a very long caption " * 40]


def _features(out) -> torch.Tensor:
    """transformers 4.x returns the features; 5.x a model output whose ``pooler_output`` they
    are."""
    if isinstance(out, torch.Tensor):
        return out
    v = getattr(out, "pooler_output", None)
    if v is None:
        raise TypeError(f"unexpected get_*_features output {type(out).__name__}")
    return v


class HFImageEncoder(nn.Module):
    """``pixel_values -> model.get_image_features(pixel_values)``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return _features(self.model.get_image_features(pixel_values=pixel_values))


class HFTextEncoder(nn.Module):
    """``(input_ids, attention_mask) -> model.get_text_features(...)``; with ``use_mask=False``
    (SigLIP) the mask is not given to the model, only kept as a graph input."""

    def __init__(self, model, use_mask: bool = True):
        super().__init__()
        self.model = model
        self.use_mask = use_mask

    def forward(self, input_ids, attention_mask):
        if self.use_mask:
            return _features(self.model.get_text_features(input_ids=input_ids,
                                                          attention_mask=attention_mask))
        # ids + 0 * mask: the same ids, and the exported graph keeps its attention_mask input
        ids = input_ids + attention_mask * 0
        return _features(self.model.get_text_features(input_ids=ids))


def _digest(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.name):
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it as JSON ({e}).") from None


def preprocess_from(path: Path, arch: str, image_size: int) -> PreprocessCfg:
    """``preprocessor_config.json`` -> :class:`PreprocessCfg` (ConfigError when edgeclip's
    preprocessing cannot reproduce it)."""
    pp = path / PREPROCESSOR
    if not pp.is_file():
        raise ConfigError(f"{path}: {PREPROCESSOR} is missing (the image preprocessing). Copy it "
                          f"from the original model, or save it with "
                          f"`AutoProcessor.from_pretrained(...).save_pretrained('{path}')`.")
    d = _read_json(pp)
    where = f"{pp}"
    if d.get("do_rescale", True) and abs(float(d.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise ConfigError(f"{where}: rescale_factor {d.get('rescale_factor')} is not 1/255; "
                          f"edgeclip's preprocessing scales pixels by 1/255.")
    if not d.get("do_rescale", True):
        raise ConfigError(f"{where}: do_rescale is false (pixels left in 0..255); edgeclip's "
                          f"preprocessing always scales pixels to 0..1.")
    resample = d.get("resample", 3)
    interp = PIL_RESAMPLE.get(resample) if isinstance(resample, int) else str(resample).lower()
    if interp not in PIL_RESAMPLE.values():
        raise ConfigError(f"{where}: resample {resample!r} is not a PIL filter edgeclip knows "
                          f"({', '.join(f'{k}={v}' for k, v in PIL_RESAMPLE.items())}).")
    if d.get("do_normalize", True):
        mean, std = d.get("image_mean"), d.get("image_std")
        if mean is None or std is None:
            raise ConfigError(f"{where}: do_normalize without image_mean/image_std.")
        mean = [float(mean)] * 3 if isinstance(mean, (int, float)) else list(mean)
        std = [float(std)] * 3 if isinstance(std, (int, float)) else list(std)
    else:
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    size = d.get("size") or {}
    if isinstance(size, int):
        size = {"shortest_edge": size} if arch == "CLIPModel" else {"height": size, "width": size}
    crop = d.get("crop_size") or {}
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    if not d.get("do_resize", True):
        raise ConfigError(f"{where}: do_resize is false; edgeclip needs a fixed input size.")
    if "shortest_edge" in size:
        s = int(size["shortest_edge"])
        if not d.get("do_center_crop", False):
            raise ConfigError(f"{where}: a shortest-edge resize without center crop gives "
                              f"images of varying size; edgeclip needs a fixed size.")
        h, w = int(crop.get("height", s)), int(crop.get("width", s))
        if (h, w) != (s, s):
            raise ConfigError(f"{where}: resize to {s} then crop {h}x{w} is not supported "
                              f"(edgeclip resizes the short side to the crop size).")
        cfg = {"size": [h, w], "resize_mode": "shortest", "crop": "center_floor"}
    elif "height" in size and "width" in size:
        h, w = int(size["height"]), int(size["width"])
        if d.get("do_center_crop", False) and crop and (int(crop["height"]), int(crop["width"])) \
                != (h, w):
            raise ConfigError(f"{where}: squash resize to {h}x{w} then crop is not supported.")
        cfg = {"size": [h, w], "resize_mode": "squash", "crop": "none"}
    else:
        raise ConfigError(f"{where}: size {size!r} is not shortest_edge or height/width.")
    if cfg["size"] != [image_size, image_size]:
        raise ConfigError(f"{where}: images are made {cfg['size'][0]}x{cfg['size'][1]} but the "
                          f"vision config's image_size is {image_size}.")
    cfg.update(interpolation=interp, mean=mean, std=std)
    return PreprocessCfg.from_dict(cfg, where)


class _TokDir:
    """Temporary directories for generated tokenizer.json files, removed at exit."""
    dirs: list[str] = []

    @classmethod
    def new(cls) -> Path:
        d = tempfile.mkdtemp(prefix="edgeclip-hf-tok-")
        if not cls.dirs:
            atexit.register(lambda: [shutil.rmtree(x, ignore_errors=True) for x in cls.dirs])
        cls.dirs.append(d)
        return Path(d)


def tokenizer_json(path: Path, context_length: int) -> tuple[Path, object]:
    """Save the directory's tokenizer as a tokenizer.json padded to ``context_length`` with the
    model's pad id; check it against the library. -> (file, the library tokenizer)."""
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(f"{path}: no tokenizer (tokenizer.json, or vocab.json + merges.txt). "
                          f"Copy the model's tokenizer files into it, or save them with "
                          f"`AutoProcessor.from_pretrained(...).save_pretrained('{path}')`.")
    from transformers import AutoTokenizer
    try:
        lib = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds here
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: transformers cannot load its tokenizer ({first}). Check the "
                          f"tokenizer files (tokenizer.json / tokenizer_config.json).") from None
    backend = getattr(lib, "backend_tokenizer", None)
    from tokenizers import Tokenizer
    if backend is not None:
        tok = Tokenizer.from_str(backend.to_str())
    elif type(lib).__name__ == "SiglipTokenizer":
        tok = siglip_sentencepiece_to_tokenizers(lib)
    else:
        raise ConfigError(f"{path}: the tokenizer ({type(lib).__name__}) has no tokenizer.json "
                          f"form (a sentencepiece-only tokenizer). Save a fast tokenizer's "
                          f"tokenizer.json into the directory.")
    pad_id = lib.pad_token_id
    if pad_id is None:
        pad_id = lib.eos_token_id if lib.eos_token_id is not None else 0
    tok.enable_truncation(max_length=context_length)
    tok.enable_padding(length=context_length, pad_id=int(pad_id),
                       pad_token=tok.id_to_token(int(pad_id)) or "")
    out = _TokDir.new() / "tokenizer.json"
    tok.save(str(out))
    _check_tokenizer(out, lib, context_length, path)
    return out, lib


def siglip_sentencepiece_to_tokenizers(lib):
    """SigLIP's sentencepiece tokenizer (``spiece.model``, transformers' ``SiglipTokenizer``)
    as a ``tokenizers`` Tokenizer: its text canonicalisation (lower case, ASCII punctuation
    removed, whitespace collapsed and stripped), the model's own normaliser (precompiled
    charsmap), the Unigram pieces with their scores, ``▁`` word prefixes, ``</s>`` appended.
    :func:`_check_tokenizer` then compares its ids with the library's."""
    import string

    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers.convert_slow_tokenizer import import_protobuf
    model_pb2 = import_protobuf()
    proto = model_pb2.ModelProto()
    with open(lib.vocab_file, "rb") as f:
        proto.ParseFromString(f.read())
    if proto.trainer_spec.model_type != 1:  # 1 = UNIGRAM
        raise ConfigError(f"{lib.vocab_file}: not a Unigram sentencepiece model; save a "
                          f"tokenizer.json for it.")
    vocab = [(p.piece, p.score) for p in proto.pieces]
    tok = Tokenizer(Unigram(vocab, proto.trainer_spec.unk_id,
                            byte_fallback=bool(proto.trainer_spec.byte_fallback)))
    steps = [normalizers.Lowercase()] if getattr(lib, "do_lower_case", True) else []
    steps += [normalizers.Replace(Regex("[" + re.escape(string.punctuation) + "]"), ""),
              normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    if proto.normalizer_spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    eos, eos_id = str(lib.eos_token), int(lib.eos_token_id)
    tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}",
                                                       special_tokens=[(eos, eos_id)])
    from tokenizers import AddedToken
    tok.add_special_tokens([AddedToken(str(t), special=True) for t in
                            dict.fromkeys([lib.eos_token, lib.unk_token, lib.pad_token]) if t])
    return tok


def _check_tokenizer(file: Path, lib, context_length: int, path: Path) -> None:
    from ...tokenize import Tokenizer as RuntimeTokenizer
    ids, _ = RuntimeTokenizer(file, context_length)(CHECK_TEXTS)
    want = lib(CHECK_TEXTS, padding="max_length", truncation=True, max_length=context_length)
    for i, (got, ref) in enumerate(zip(ids.tolist(), want["input_ids"])):
        if got != list(ref):
            raise ConfigError(f"{path}: the saved tokenizer.json does not reproduce the "
                              f"library's token ids on {CHECK_TEXTS[i]!r} (edgeclip {got[:8]}..., "
                              f"transformers {list(ref)[:8]}...); this tokenizer is not supported.")


def _quiet_transformers() -> None:
    """No progress bars or advisory warnings on stderr: a user error stays one line."""
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_hf(path, *, source: str | None = None, context_length: int | None = None,
            device: str = "cpu") -> ForeignDualEncoder:
    """A Hugging Face CLIPModel / SiglipModel directory -> :class:`ForeignDualEncoder`."""
    path = expand_path(path)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{path}: no config.json; not a Hugging Face model directory.")
    d = _read_json(cfg_path)
    arch = hf_architecture(d)
    if arch is None:
        declared = ", ".join(d.get("architectures") or []) or d.get("model_type")
        raise ConfigError(f"{cfg_path}: declares {declared}, "
                          f"not {' or '.join(HF_ARCHITECTURES)}. Pass a CLIPModel or SiglipModel "
                          f"directory.")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        bins = sorted(path.glob("pytorch_model*.bin"))
        if bins:
            raise ConfigError(f"{path}: only pickled weights ({bins[0].name}); edgeclip loads "
                              f"safetensors only. Convert them once with `CLIPModel."
                              f"from_pretrained(DIR).save_pretrained(DIR)` in a trusted "
                              f"environment.")
        raise ConfigError(f"{path}: no model weights (*.safetensors).")
    import transformers
    cls = getattr(transformers, arch)
    _quiet_transformers()
    try:
        model = cls.from_pretrained(str(path), use_safetensors=True)
    except Exception as e:  # noqa: BLE001
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: transformers cannot load it as {arch} ({first}).") from None
    model = model.to(device).eval().requires_grad_(False)
    mc = model.config
    ctx = int(context_length or mc.text_config.max_position_embeddings)
    if ctx > int(mc.text_config.max_position_embeddings):
        raise ConfigError(f"context length {ctx} exceeds the model's "
                          f"{mc.text_config.max_position_embeddings} positions.")
    tok_file, _lib = tokenizer_json(path, ctx)
    preprocess = preprocess_from(path, arch, int(mc.vision_config.image_size))
    if arch == "CLIPModel":
        dim = int(mc.projection_dim)
        text = HFTextEncoder(model, use_mask=True)
    else:
        dim = int(mc.vision_config.hidden_size)
        text = HFTextEncoder(model, use_mask=False)
    scale = getattr(model, "logit_scale", None)
    out = ForeignDualEncoder(
        HFImageEncoder(model), text, embed_dim=dim, name=path.resolve().name,
        preprocess=preprocess, context_length=ctx, tokenizer_file=tok_file,
        provenance={"source": str(source or path), "library": "transformers",
                    "library_version": transformers.__version__, "architecture": arch,
                    "model_type": d.get("model_type"),
                    "weights_sha256": _digest(weights + [cfg_path])},
        logit_scale=None if scale is None else float(scale.exp()))
    # the library model itself (the reference in tests), not registered as a second submodule
    object.__setattr__(out, "hf_model", model)
    return out.eval()


__all__ = ["load_hf", "preprocess_from", "tokenizer_json", "HFImageEncoder", "HFTextEncoder"]
