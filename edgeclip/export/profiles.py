"""Target profiles (``export/targets/*.toml``): what to export and build for one device.

Example::

    name = "jetson-orin-nano"
    target = "tensorrt"            # cpu | tensorrt
    precisions = ["fp16", "int8"]
    opset = 17
    [batch]                        # TensorRT optimisation profile; max is the bundle's max_batch
    min = 1
    opt = 8
    max = 32
    [tensorrt]
    workspace_mib = 1024
    [calibration]
    method = "entropy"             # minmax | entropy | percentile
    count = 512
    moving_average = false         # minmax only; default: true for target cpu
    [quantization]
    exclude = ["first_conv", "token_embedding", "final_projection"]  # roles or node names
    weight_only = ["ffn_down"]     # cpu: excluded MatMuls given 8-bit weight-only quantization
    float = "fp16"                 # tensorrt: Q/DQ over the fp16 graph (default) or "fp32" (TRT 8.6)
    keep_fp32 = []                 # tensorrt, float = "fp16": op types kept float32

Unknown keys raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRECISIONS = ("fp32", "fp16", "int8")
TARGETS = ("cpu", "tensorrt")
METHODS = ("minmax", "entropy", "percentile")
DEFAULT_EXCLUDE = ("first_conv", "token_embedding", "final_projection", "ffn_down")  # tensorrt

_SCHEMA = {
    "": {"name", "description", "target", "precisions", "opset", "batch", "tensorrt",
         "calibration", "quantization"},
    "batch": {"min", "opt", "max"},
    "tensorrt": {"workspace_mib", "builder_optimization_level", "timing_cache"},
    "calibration": {"method", "count", "moving_average"},
    "quantization": {"exclude", "weight_only", "float", "keep_fp32"},
}


@dataclass
class ExportProfile:
    name: str = "default"
    description: str = ""
    target: str = "cpu"
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    opset: int = 17
    batch_min: int = 1
    batch_opt: int = 8
    batch_max: int = 64
    workspace_mib: int = 1024
    builder_optimization_level: int = 3
    timing_cache: str = "timing.cache"
    calib_method: str = "minmax"
    calib_count: int = 256
    exclude: tuple[str, ...] | None = None      # None: the target's default (int8.default_exclude)
    weight_only: tuple[str, ...] | None = None  # None: the target's default (cpu only)
    calib_moving_average: bool | None = None    # None: on for target cpu
    float_dtype: str | None = None              # tensorrt INT8 base graph: None/"fp16" | "fp32"
    keep_fp32: tuple[str, ...] = ()             # tensorrt fp16 base: op types kept float32
    source: str = ""
    raw: dict = field(default_factory=dict, repr=False)


def _get(d: dict, key: str, kind, where: str):
    v = d[key]
    if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise ConfigError(f"{where}: '{key}' must be an integer, got {v!r}.")
    if kind is str and not isinstance(v, str):
        raise ConfigError(f"{where}: '{key}' must be a string, got {v!r}.")
    if kind is bool and not isinstance(v, bool):
        raise ConfigError(f"{where}: '{key}' must be true or false, got {v!r}.")
    if kind is list and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
        raise ConfigError(f"{where}: '{key}' must be a list of strings, got {v!r}.")
    return v


def load_profile(path: str | Path) -> ExportProfile:
    path = Path(path).expanduser()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        have = sorted(p.name for p in path.parent.glob("*.toml")) if path.parent.is_dir() else []
        raise ConfigError(f"{path}: no such profile (profiles there: {', '.join(have) or 'none'})."
                          ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e}).") from None
    for section, allowed in _SCHEMA.items():
        table = raw if not section else raw.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: '{section}' must be a table ([{section}]).")
        for key in table:
            if key not in allowed:
                where = f"[{section}] " if section else ""
                raise ConfigError(f"{path}: unknown key {where}'{key}' (known: "
                                  f"{', '.join(sorted(allowed))}).")
    p = ExportProfile(name=path.stem, source=str(path), raw=raw)
    w = str(path)
    if "name" in raw:
        p.name = _get(raw, "name", str, w)
    if "description" in raw:
        p.description = _get(raw, "description", str, w)
    if "target" in raw:
        p.target = _get(raw, "target", str, w)
    if "precisions" in raw:
        p.precisions = tuple(_get(raw, "precisions", list, w))
    if "opset" in raw:
        p.opset = _get(raw, "opset", int, w)
    b = raw.get("batch", {})
    for key in ("min", "opt", "max"):
        if key in b:
            setattr(p, f"batch_{key}", _get(b, key, int, f"{w} [batch]"))
    t = raw.get("tensorrt", {})
    if "workspace_mib" in t:
        p.workspace_mib = _get(t, "workspace_mib", int, f"{w} [tensorrt]")
    if "builder_optimization_level" in t:
        p.builder_optimization_level = _get(t, "builder_optimization_level", int, f"{w} [tensorrt]")
    if "timing_cache" in t:
        p.timing_cache = _get(t, "timing_cache", str, f"{w} [tensorrt]")
    c = raw.get("calibration", {})
    if "method" in c:
        p.calib_method = _get(c, "method", str, f"{w} [calibration]")
    if "count" in c:
        p.calib_count = _get(c, "count", int, f"{w} [calibration]")
    if "moving_average" in c:
        p.calib_moving_average = _get(c, "moving_average", bool, f"{w} [calibration]")
    q = raw.get("quantization", {})
    if "exclude" in q:
        p.exclude = tuple(_get(q, "exclude", list, f"{w} [quantization]"))
    if "weight_only" in q:
        p.weight_only = tuple(_get(q, "weight_only", list, f"{w} [quantization]"))
    if "float" in q:
        p.float_dtype = _get(q, "float", str, f"{w} [quantization]")
        if p.float_dtype not in ("fp16", "fp32"):
            raise ConfigError(f"{w} [quantization]: float must be \"fp16\" or \"fp32\", got "
                              f"{p.float_dtype!r}.")
    if "keep_fp32" in q:
        p.keep_fp32 = tuple(_get(q, "keep_fp32", list, f"{w} [quantization]"))
    validate(p, w)
    return p


def validate(p: ExportProfile, where: str = "profile") -> ExportProfile:
    if p.target not in TARGETS:
        raise ConfigError(f"{where}: target '{p.target}' is unknown (known: {', '.join(TARGETS)}).")
    bad = [x for x in p.precisions if x not in PRECISIONS]
    if bad or not p.precisions:
        raise ConfigError(f"{where}: precisions {list(p.precisions)} must be a non-empty subset of "
                          f"{', '.join(PRECISIONS)}.")
    if p.calib_method not in METHODS:
        raise ConfigError(f"{where}: calibration method '{p.calib_method}' is unknown (known: "
                          f"{', '.join(METHODS)}).")
    if not (1 <= p.batch_min <= p.batch_opt <= p.batch_max):
        raise ConfigError(f"{where}: batch sizes must satisfy 1 <= min <= opt <= max, got "
                          f"{p.batch_min}/{p.batch_opt}/{p.batch_max}.")
    if p.opset < 17:
        raise ConfigError(f"{where}: opset {p.opset} < 17; edgeclip needs opset >= 17.")
    if p.calib_count < 1 or p.workspace_mib < 1:
        raise ConfigError(f"{where}: calibration count and workspace_mib must be >= 1.")
    return p
