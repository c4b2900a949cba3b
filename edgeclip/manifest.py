"""The model bundle: a directory with ``manifest.json`` and the files it names.

A bundle holds one or both towers (``image``, ``text``). Each tower lists its model files (one per
precision and backend), its graph inputs and outputs, its largest batch and its preprocessing
(image) or tokenizer (text). Every file of the bundle has its sha256 in the manifest, and loading
checks them all, so a truncated copy or a hand-edited graph is caught before it gives wrong
embeddings.

Layout of ``manifest.json`` (format version 1)::

    {
      "format": "edgeclip-bundle", "format_version": 1,
      "model_name": "edgeclip-lite0-minilm2", "embed_dim": 256,
      "created": "2026-11-28T18:00:00Z", "tools": {"edgeclip": "0.1.0", "torch": "2.13.0", ...},
      "towers": {
        "image": {
          "inputs":  [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 224, 224]}],
          "outputs": [{"name": "image_embeds", "dtype": "float32", "shape": ["batch", 256]}],
          "max_batch": 64,
          "models": [{"path": "image.fp32.onnx", "format": "onnx", "precision": "fp32",
                      "target": "any", "tools": {...}}, ...],
          "preprocess": {"size": [224, 224], "resize_mode": "shortest", "interpolation": "bicubic",
                         "crop": "center", "mean": [...], "std": [...]}
        },
        "text": {..., "tokenizer": {"file": "tokenizer.json", "context_length": 32}}
      },
      "files": {"image.fp32.onnx": "<sha256>", "tokenizer.json": "<sha256>", ...},
      "extra": {...}
    }

The batch axis is the string ``"batch"`` in a shape; every other axis is an int.

Every file path in a manifest is relative to the bundle directory and must stay inside it after
symlinks are resolved (:func:`bundle_file`, checked when a manifest is read, before any file is
opened or hashed): a manifest cannot make edgeclip read, hash or probe a file elsewhere.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError

FORMAT = "edgeclip-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOWERS = ("image", "text")
PRECISIONS = ("fp32", "fp16", "int8")
MODEL_FORMATS = ("onnx", "tensorrt")
ENGINE_SUFFIXES = (".plan", ".engine")
RESIZE_MODES = ("shortest", "squash", "longest")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
DTYPES = ("float32", "float16", "int64", "int32", "uint8", "int8", "bool")
ONNX_METADATA_KEY = "edgeclip.manifest"


def digest_file(path: str | os.PathLike, h, chunk: int = 1 << 20) -> str:
    """Feed a file to the hashlib object ``h`` in chunks; return its hex digest."""
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    return digest_file(path, hashlib.sha256())


def _req(d: dict, key: str, where: str, kind: type | tuple[type, ...] | None = None) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise BundleError(f"{where}: missing key '{key}'. Re-export the bundle with "
                          f"`edgeclip export`.")
    value = d[key]
    if kind is not None and not isinstance(value, kind):
        raise BundleError(f"{where}: '{key}' has type {type(value).__name__}, expected "
                          f"{kind if isinstance(kind, type) else '/'.join(k.__name__ for k in kind)}.")
    return value


@dataclass
class TensorSpec:
    name: str
    dtype: str
    shape: list  # ints, and the string "batch" for the dynamic batch axis

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "TensorSpec":
        name = _req(d, "name", where, str)
        dtype = _req(d, "dtype", where, str)
        if dtype not in DTYPES:
            raise BundleError(f"{where}: tensor '{name}' has unknown dtype '{dtype}' "
                              f"(known: {', '.join(DTYPES)}).")
        shape = _req(d, "shape", where, list)
        for ax in shape:
            if not (isinstance(ax, int) or ax == "batch"):
                raise BundleError(f"{where}: tensor '{name}' has a bad axis {ax!r}: axes are ints "
                                  f"or the string 'batch'.")
        return cls(name, dtype, list(shape))

    @property
    def batch_axis(self) -> int | None:
        return self.shape.index("batch") if "batch" in self.shape else None


@dataclass
class ModelFile:
    path: str
    format: str  # "onnx" | "tensorrt"
    precision: str  # "fp32" | "fp16" | "int8"
    target: str = "any"  # "any" | "cpu" | "tensorrt"
    tools: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # e.g. tensorrt_version, gpu_name, compute_capability

    def to_dict(self) -> dict:
        d = {"path": self.path, "format": self.format, "precision": self.precision,
             "target": self.target, "tools": dict(self.tools)}
        if self.extra:
            d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "ModelFile":
        path = _req(d, "path", where, str)
        fmt = _req(d, "format", where, str)
        if fmt not in MODEL_FORMATS:
            raise BundleError(f"{where}: model '{path}' has unknown format '{fmt}' "
                              f"(known: {', '.join(MODEL_FORMATS)}).")
        precision = _req(d, "precision", where, str)
        if precision not in PRECISIONS:
            raise BundleError(f"{where}: model '{path}' has unknown precision '{precision}' "
                              f"(known: {', '.join(PRECISIONS)}).")
        return cls(path=path, format=fmt, precision=precision, target=d.get("target", "any"),
                   tools=dict(d.get("tools", {})), extra=dict(d.get("extra", {})))


CROPS = ("center", "center_floor", "none")


@dataclass
class PreprocessCfg:
    """Image preprocessing, the numpy + Pillow twin of a torchvision transform.

    ``resize_mode``: ``shortest`` resizes the shorter side to the target then crops (CLIP's
    default); ``squash`` resizes both sides to the target, ignoring aspect ratio; ``longest``
    resizes the longer side to the target and pads with ``fill``.
    """

    size: tuple[int, int] = (224, 224)  # (height, width)
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    crop: str = "center"  # "center" (torchvision's offset rounding) | "center_floor" (Hugging
    # Face image processors': offset (n - size) // 2) | "none"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    fill: int = 0

    def to_dict(self) -> dict:
        return {"size": list(self.size), "resize_mode": self.resize_mode,
                "interpolation": self.interpolation, "crop": self.crop,
                "mean": list(self.mean), "std": list(self.std), "fill": self.fill}

    @classmethod
    def from_dict(cls, d: dict, where: str = "preprocess") -> "PreprocessCfg":
        size = _req(d, "size", where)
        if isinstance(size, int):
            size = [size, size]
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(s, int) and s > 0 for s in size)):
            raise BundleError(f"{where}: 'size' must be [height, width] of positive ints, "
                              f"got {size!r}.")
        mode = d.get("resize_mode", "shortest")
        if mode not in RESIZE_MODES:
            raise BundleError(f"{where}: unknown resize_mode '{mode}' "
                              f"(known: {', '.join(RESIZE_MODES)}).")
        interp = d.get("interpolation", "bicubic")
        if interp not in INTERPOLATIONS:
            raise BundleError(f"{where}: unknown interpolation '{interp}' "
                              f"(known: {', '.join(INTERPOLATIONS)}).")
        crop = d.get("crop", "center")
        if crop not in CROPS:
            raise BundleError(f"{where}: unknown crop '{crop}' (known: {', '.join(CROPS)}).")
        mean = tuple(float(x) for x in _req(d, "mean", where, list))
        std = tuple(float(x) for x in _req(d, "std", where, list))
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise BundleError(f"{where}: 'mean' and 'std' must have 3 values, std > 0.")
        return cls(size=(int(size[0]), int(size[1])), resize_mode=mode, interpolation=interp,
                   crop=crop, mean=mean, std=std, fill=int(d.get("fill", 0)))


@dataclass
class TokenizerCfg:
    file: str = "tokenizer.json"
    context_length: int = 32

    def to_dict(self) -> dict:
        return {"file": self.file, "context_length": self.context_length}

    @classmethod
    def from_dict(cls, d: dict, where: str = "tokenizer") -> "TokenizerCfg":
        file = _req(d, "file", where, str)
        ctx = _req(d, "context_length", where, int)
        if ctx < 2:
            raise BundleError(f"{where}: context_length must be >= 2, got {ctx}.")
        return cls(file=file, context_length=ctx)


@dataclass
class TowerSpec:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch: int = 64
    models: list[ModelFile] = field(default_factory=list)
    preprocess: PreprocessCfg | None = None  # image tower
    tokenizer: TokenizerCfg | None = None  # text tower

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"inputs": [t.to_dict() for t in self.inputs],
                             "outputs": [t.to_dict() for t in self.outputs],
                             "max_batch": self.max_batch,
                             "models": [m.to_dict() for m in self.models]}
        if self.preprocess is not None:
            d["preprocess"] = self.preprocess.to_dict()
        if self.tokenizer is not None:
            d["tokenizer"] = self.tokenizer.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str, tower: str) -> "TowerSpec":
        inputs = [TensorSpec.from_dict(t, f"{where}.inputs") for t in _req(d, "inputs", where, list)]
        outputs = [TensorSpec.from_dict(t, f"{where}.outputs")
                   for t in _req(d, "outputs", where, list)]
        if not inputs or not outputs:
            raise BundleError(f"{where}: a tower needs at least one input and one output.")
        max_batch = _req(d, "max_batch", where, int)
        if max_batch < 1:
            raise BundleError(f"{where}: max_batch must be >= 1, got {max_batch}.")
        models = [ModelFile.from_dict(m, f"{where}.models") for m in _req(d, "models", where, list)]
        pre = tok = None
        if tower == "image":
            pre = PreprocessCfg.from_dict(_req(d, "preprocess", where, dict), f"{where}.preprocess")
        else:
            tok = TokenizerCfg.from_dict(_req(d, "tokenizer", where, dict), f"{where}.tokenizer")
        return cls(inputs=inputs, outputs=outputs, max_batch=max_batch, models=models,
                   preprocess=pre, tokenizer=tok)

    def find_model(self, fmt: str | None = None, precision: str | None = None,
                   target: str | None = None) -> list[ModelFile]:
        return [m for m in self.models
                if (fmt is None or m.format == fmt)
                and (precision is None or m.precision == precision)
                and (target is None or m.target in (target, "any"))]


@dataclass
class Manifest:
    model_name: str
    embed_dim: int
    towers: dict[str, TowerSpec]
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    format_version: int = FORMAT_VERSION
    created: str = ""
    tools: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": self.format_version,
                "model_name": self.model_name, "embed_dim": self.embed_dim,
                "created": self.created, "tools": dict(self.tools),
                "towers": {k: v.to_dict() for k, v in self.towers.items()},
                "files": dict(sorted(self.files.items())), "extra": copy.deepcopy(self.extra)}

    @classmethod
    def from_dict(cls, d: dict, where: str = MANIFEST_NAME) -> "Manifest":
        if not isinstance(d, dict):
            raise BundleError(f"{where}: not a JSON object.")
        if d.get("format") != FORMAT:
            raise BundleError(f"{where}: not an edgeclip bundle manifest (format is "
                              f"{d.get('format')!r}, expected '{FORMAT}').")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(f"{where}: unknown bundle format version {version!r}; this edgeclip "
                              f"reads version {FORMAT_VERSION}. Upgrade edgeclip or re-export the "
                              f"bundle with this version.")
        towers_d = _req(d, "towers", where, dict)
        if not towers_d:
            raise BundleError(f"{where}: the bundle has no tower.")
        towers = {}
        for name, t in towers_d.items():
            if name not in TOWERS:
                raise BundleError(f"{where}: unknown tower '{name}' (known: image, text).")
            towers[name] = TowerSpec.from_dict(t, f"{where}: towers.{name}", name)
        embed_dim = _req(d, "embed_dim", where, int)
        files = _req(d, "files", where, dict)
        return cls(model_name=_req(d, "model_name", where, str), embed_dim=embed_dim,
                   towers=towers, files=dict(files), format_version=version,
                   created=d.get("created", ""), tools=dict(d.get("tools", {})),
                   extra=dict(d.get("extra", {})))

    # -- helpers ---------------------------------------------------------------------------
    def tower(self, name: str) -> TowerSpec:
        if name not in self.towers:
            have = ", ".join(self.towers) or "none"
            raise BundleError(f"bundle '{self.model_name}' has no {name} tower (it has: {have}). "
                              f"Use a bundle exported with the {name} tower.")
        return self.towers[name]

    def identity(self) -> str:
        """A stable checksum of what determines the embeddings (the manifest without dates)."""
        d = self.to_dict()
        d.pop("created", None)
        d.pop("extra", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def mirror_dict(self) -> dict:
        """The manifest as mirrored into ONNX ``metadata_props`` (file checksums left out: a
        file cannot hold its own checksum)."""
        d = self.to_dict()
        d.pop("files", None)
        return d


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace(
        "+00:00", "Z")


def resolve_bundle_path(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """Return (bundle_dir, model_file_or_None) for a bundle dir, a manifest, or a model file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise BundleError(f"{p}: no such file or directory. Pass a bundle directory, its "
                          f"manifest.json, or an .onnx/.plan file with manifest.json beside it.")
    if p.is_dir():
        if not (p / MANIFEST_NAME).is_file():
            raise BundleError(f"{p}: no {MANIFEST_NAME} in this directory; it is not an edgeclip "
                              f"bundle. Create one with `edgeclip export`.")
        return p, None
    if p.name == MANIFEST_NAME or p.suffix == ".json":
        return p.parent, None
    if p.suffix in (".onnx",) + ENGINE_SUFFIXES:
        if not (p.parent / MANIFEST_NAME).is_file():
            raise BundleError(f"{p}: no {MANIFEST_NAME} beside this model file. Keep the model "
                              f"inside its bundle directory (from `edgeclip export`).")
        return p.parent, p
    raise BundleError(f"{p}: not a bundle. Pass a bundle directory, its manifest.json, or an "
                      f".onnx/.plan/.engine file.")


def manifest_entries(manifest: Manifest) -> list[tuple[str, str]]:
    """Every file path the manifest names, as ``(entry, path)``: the entry is where it is named
    (``towers.image.models[0].path``, ``towers.text.tokenizer.file``, ``files['x.onnx']``)."""
    out = []
    for name, tower in manifest.towers.items():
        out += [(f"towers.{name}.models[{i}].path", m.path) for i, m in enumerate(tower.models)]
        if tower.tokenizer is not None:
            out.append((f"towers.{name}.tokenizer.file", tower.tokenizer.file))
    out += [(f"files[{rel!r}]", rel) for rel in manifest.files]
    return out


def bundle_file(bundle_dir: str | os.PathLike, rel: str, entry: str = "a file entry") -> Path:
    """``bundle_dir / rel``, refused (BundleError naming ``entry``) unless it stays inside the
    bundle directory after resolving symlinks. Nothing about a path outside the bundle is looked
    at or reported (whether it exists, its checksum): only where the entry points."""
    root = Path(bundle_dir)
    where = f"{root / MANIFEST_NAME}: {entry}"
    fix = ("Bundle files must be inside the bundle directory, named by a relative path; copy the "
           "file into the bundle and re-export it (`edgeclip export`).")
    if not isinstance(rel, str) or not rel or "\0" in rel:
        raise BundleError(f"{where} is not a file name ({rel!r}). {fix}")
    pure = Path(rel)
    if pure.is_absolute() or rel.startswith("~"):
        raise BundleError(f"{where} = {rel!r} is an absolute path, outside the bundle. {fix}")
    if ".." in pure.parts:
        raise BundleError(f"{where} = {rel!r} uses '..' to leave the bundle directory. {fix}")
    try:
        base = root.resolve()
        target = (root / pure).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise BundleError(f"{where} = {rel!r} cannot be resolved (a symlink loop?). "
                          f"{fix}") from None
    if target == base:
        raise BundleError(f"{where} = {rel!r} names the bundle directory itself, not a file. {fix}")
    if not target.is_relative_to(base):
        raise BundleError(f"{where} = {rel!r} is a symlink (or under one) that points outside the "
                          f"bundle directory. {fix}")
    return root / pure


def check_confined(manifest: Manifest, bundle_dir: str | os.PathLike) -> None:
    """BundleError unless every path the manifest names resolves inside ``bundle_dir``. Run it
    before anything opens, stats or hashes those paths."""
    for entry, rel in manifest_entries(manifest):
        bundle_file(bundle_dir, rel, entry)


def read_manifest(bundle_dir: str | os.PathLike) -> Manifest:
    path = Path(bundle_dir) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise BundleError(f"{path}: cannot read ({e.strerror or e}).") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}). The manifest is "
                          f"corrupt; re-export the bundle.") from None
    manifest = Manifest.from_dict(d, str(path))
    check_confined(manifest, bundle_dir)
    return manifest


def verify_files(manifest: Manifest, bundle_dir: str | os.PathLike, check_hashes: bool = True,
                 only: list[str] | None = None) -> None:
    """Check that every file the manifest names exists (and has its sha256)."""
    root = Path(bundle_dir)
    check_confined(manifest, root)  # before any path is stat'ed or hashed
    needed: set[str] = set()
    for tower in manifest.towers.values():
        needed.update(m.path for m in tower.models)
        if tower.tokenizer is not None:
            needed.add(tower.tokenizer.file)
    for rel in sorted(needed):
        if rel not in manifest.files:
            raise BundleError(f"{root / MANIFEST_NAME}: file '{rel}' has no sha256 in 'files'. "
                              f"Re-export the bundle (or run `edgeclip build-engine` again).")
    for rel in sorted(only if only is not None else manifest.files):
        fpath = root / rel
        if not fpath.is_file():
            raise BundleError(f"{fpath}: missing from the bundle. Copy the whole bundle directory "
                              f"or re-export it.")
        if check_hashes:
            want = manifest.files.get(rel)
            from .cache import file_sha256
            got = file_sha256(fpath)  # cached by (inode, size, mtime, ctime): see edgeclip.cache
            if got != want:
                raise BundleError(f"{fpath}: checksum mismatch (sha256 {got[:12]}…, manifest says "
                                  f"{str(want)[:12]}…). The file is corrupt or was changed after "
                                  f"export; copy the bundle again or re-export it.")


def load_bundle(path: str | os.PathLike, check_hashes: bool = True) -> tuple[Manifest, Path]:
    """Resolve, read and verify a bundle; return its manifest and directory."""
    bundle_dir, _ = resolve_bundle_path(path)
    manifest = read_manifest(bundle_dir)
    verify_files(manifest, bundle_dir, check_hashes=check_hashes)
    return manifest, bundle_dir


def write_manifest(manifest: Manifest, bundle_dir: str | os.PathLike) -> Path:
    """Hash every model and tokenizer file (plus files already listed) and write manifest.json."""
    root = Path(bundle_dir)
    names = set(manifest.files)
    for tower in manifest.towers.values():
        names.update(m.path for m in tower.models)
        if tower.tokenizer is not None:
            names.add(tower.tokenizer.file)
    files = {}
    for rel in sorted(names):
        fpath = root / rel
        if not fpath.is_file():
            raise BundleError(f"{fpath}: the manifest names this file but it does not exist.")
        files[rel] = sha256_file(fpath)
    manifest.files = files
    if not manifest.created:
        manifest.created = now_iso()
    out = root / MANIFEST_NAME
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out
