"""The model-source grammar (torch-free): what a MODEL / SOURCE argument names.

One grammar for ``edgeclip export``, ``edgeclip eval --model``, ``edgeclip-bench`` and the
distillation teacher config:

- an edgeclip **bundle**: a directory with ``manifest.json`` (or the manifest, or an
  ``.onnx``/``.plan`` file inside a bundle);
- an edgeclip **checkpoint** directory: ``model.safetensors`` + ``config.json`` (an edgeclip model
  config, with ``embed_dim``/``image``/``text``) + ``tokenizer.json``, from ``edgeclip distill``;
- a Hugging Face directory (**hf**) whose ``config.json`` declares ``CLIPModel`` or
  ``SiglipModel`` (any size);
- **open_clip**: ``open_clip:ARCH``, weights from ``--weights FILE`` (none: random weights).

:func:`parse_source` only classifies (it reads ``config.json``, never weights); loading is
torch-side (:func:`edgeclip.export.sources.load_source`).
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .paths import expand_path

MANIFEST = "manifest.json"
HF_ARCHITECTURES = {"CLIPModel": "clip", "SiglipModel": "siglip"}
OPEN_CLIP_PREFIX = "open_clip:"

SOURCES_HELP = ("an edgeclip checkpoint directory (from `edgeclip distill`), a Hugging Face "
                "CLIPModel/SiglipModel directory (config.json + weights + tokenizer + "
                "preprocessor_config.json), or open_clip:ARCH --weights FILE")


@dataclass(frozen=True)
class ModelSource:
    kind: str                       # "bundle" | "checkpoint" | "hf" | "open_clip"
    text: str                       # the argument as given
    path: Path | None = None        # the directory/file (None for open_clip)
    architecture: str | None = None  # "CLIPModel" / "SiglipModel" / the open_clip ARCH
    weights: Path | None = None     # open_clip only

    @property
    def is_bundle(self) -> bool:
        return self.kind == "bundle"

    def describe(self) -> str:
        if self.kind == "hf":
            return f"Hugging Face {self.architecture} directory {self.path}"
        if self.kind == "open_clip":
            w = self.weights or "random weights"
            return f"open_clip {self.architecture} ({w})"
        return f"edgeclip {self.kind} {self.path}"


def _read_config(cfg_path: Path) -> dict:
    try:
        d = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{cfg_path}: cannot read it ({e}).") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{cfg_path}: not valid JSON ({e.msg}, line {e.lineno}).") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{cfg_path}: not a JSON object.")
    return d


def hf_architecture(d: dict) -> str | None:
    """``CLIPModel``/``SiglipModel`` for a Hugging Face config dict, None for anything else."""
    for arch in d.get("architectures") or []:
        if arch in HF_ARCHITECTURES:
            return arch
    if not d.get("architectures"):
        for arch, mt in HF_ARCHITECTURES.items():
            if d.get("model_type") == mt:
                return arch
    return None


def is_edgeclip_config(d: dict) -> bool:
    return all(k in d for k in ("embed_dim", "image", "text")) and "model_type" not in d


def parse_source(text: str | os.PathLike, weights: str | os.PathLike | None = None, *,
                 allow_bundle: bool = True) -> ModelSource:
    """Classify ``text`` (see the module doc); a ConfigError names what is wrong and what to
    pass instead."""
    s = str(text)
    if s.startswith(OPEN_CLIP_PREFIX):
        arch = s[len(OPEN_CLIP_PREFIX):].strip()
        if not arch:
            raise ConfigError(f"{s!r}: name the architecture, e.g. open_clip:ViT-B-32 "
                              f"--weights FILE.")
        w = None
        if weights is not None:
            w = expand_path(weights)
            if not w.is_file():
                raise ConfigError(f"--weights {weights}: no such file. Pass the open_clip "
                                  f"checkpoint of {arch} (.safetensors, or a .pt/.bin state dict).")
        return ModelSource("open_clip", s, None, arch, w)
    if weights is not None:
        raise ConfigError(f"--weights is for open_clip:ARCH sources only; {s} carries its own "
                          f"weights (drop --weights).")
    p = expand_path(s)  # ~ and $VARS
    if not p.exists():
        raise ConfigError(f"{s}: no such file or directory. Pass {SOURCES_HELP}.")
    if p.is_file():
        if p.name == MANIFEST or (p.suffix in (".onnx", ".plan", ".engine")
                                  and (p.parent / MANIFEST).is_file()):
            return _bundle(s, p, allow_bundle)
        raise ConfigError(f"{s}: a file, not a model. Pass {SOURCES_HELP}"
                          f"{', or a bundle directory' if allow_bundle else ''}.")
    if (p / MANIFEST).is_file():
        return _bundle(s, p, allow_bundle)
    cfg_path = p / "config.json"
    if cfg_path.is_file():
        d = _read_config(cfg_path)
        arch = hf_architecture(d)
        if arch is not None:
            return ModelSource("hf", s, p, arch)
        if is_edgeclip_config(d):
            return ModelSource("checkpoint", s, p)
        declared = ", ".join(d.get("architectures") or []) or d.get("model_type") or "nothing known"
        if "model_type" in d or "architectures" in d:
            raise ConfigError(f"{cfg_path}: declares {declared}, not a dual encoder edgeclip "
                              f"loads. Pass the directory of a full CLIPModel or SiglipModel "
                              f"(both towers), an edgeclip checkpoint, or open_clip:ARCH "
                              f"--weights FILE.")
        raise ConfigError(f"{cfg_path}: neither an edgeclip model config (embed_dim, image, "
                          f"text) nor a Hugging Face config (architectures/model_type). Pass "
                          f"{SOURCES_HELP}.")
    raise ConfigError(f"{s}: not a model edgeclip can load (no manifest.json, no config.json). "
                      f"Pass {SOURCES_HELP}"
                      f"{', or a bundle (manifest.json)' if allow_bundle else ''}.")


def _bundle(s: str, p: Path, allow: bool) -> ModelSource:
    if not allow:
        raise ConfigError(f"{s}: already an exported bundle. Pass the model it was exported from "
                          f"({SOURCES_HELP}).")
    return ModelSource("bundle", s, p)


def export_command(src: ModelSource, out: str = "BUNDLE_DIR") -> str:
    """The ``edgeclip export`` command line that makes a bundle of ``src``."""
    args = ["edgeclip", "export", src.text]
    if src.weights is not None:
        args += ["--weights", str(src.weights)]
    elif src.kind == "open_clip":
        args += ["--weights", "FILE"]
    args += ["--out", out]
    return shlex.join(args)


__all__ = ["ModelSource", "parse_source", "export_command", "hf_architecture",
           "is_edgeclip_config", "SOURCES_HELP"]
