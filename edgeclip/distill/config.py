"""Training configs: TOML files (``tomllib``; ``tomli`` on Python 3.10) with defaults, plus
``--set a.b.c=value`` overrides (the value is read as TOML, else as a string).

Paths (:data:`PATH_KEYS`: ``run.out``, ``data.root``, ``data.cache_dir``, ...) may use ``~`` and
``$VARS``. Relative paths, in a config file or a ``--set``, are relative to the WORKING
DIRECTORY (not to the config file): the shipped ``configs/*.toml`` are meant to be run from the
repository root, with the data at ``../shared/data/flickr8k`` (or ``--set data.root=...``)."""

from __future__ import annotations

import copy
import sys

from ..errors import ConfigError
from ..paths import expand_path
from .models import merge

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULTS: dict = {
    "run": {"out": "runs/student", "seed": 0, "resume": True},
    "model": {"name": "lite0-minilm2", "pretrained": True, "config": {}},
    "teacher": {},
    "data": {"root": "../shared/data/flickr8k", "format": "auto", "train_split": "train",
             "eval_split": "dev", "cache_dir": "cache", "workers": 0,
             # tar shards: stream them in training (webdataset); samples per epoch from
             # sizes.json beside the shards, else epoch_samples
             "stream": "auto", "shuffle_buffer": 1000, "epoch_samples": 0},
    "loss": {"preset": "cona", "edges": {}, "drop": []},
    "train": {"epochs": 1, "batch_size": 64, "lr": 1e-3, "backbone_lr_mult": 0.1,
              "weight_decay": 0.05, "warmup_steps": 50, "min_lr_ratio": 0.0, "grad_accum": 1,
              "clip_grad": 1.0, "amp": True, "device": "auto", "threads": 0, "log_every": 10,
              "checkpoint_every": 500, "eval_every_epochs": 1, "max_steps": 0,
              "stop_at_step": 0, "cache_prefix": True},
}


def parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_set(cfg: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set '{assignment}': expected key.path=value")
    key, _, value = assignment.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set '{assignment}': empty key")
    node = cfg
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set '{assignment}': '{p}' is not a table")
        node = nxt
    node[parts[-1]] = parse_value(value.strip())


# (section, key) of the values that are paths: ``~`` and ``$VARS`` are expanded
PATH_KEYS = (("run", "out"), ("data", "root"), ("data", "cache_dir"), ("data", "karpathy_json"),
             ("data", "image_root"), ("teacher", "path"), ("teacher", "checkpoint"))


def expand_paths(cfg: dict) -> dict:
    for section, key in PATH_KEYS:
        node = cfg.get(section)
        if isinstance(node, dict) and isinstance(node.get(key), str) and node[key]:
            node[key] = str(expand_path(node[key]))
    return cfg


def load_config(path=None, sets=()) -> dict:
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        p = expand_path(path)
        try:
            user = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{p}: config file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: not valid TOML ({e})") from None
        unknown = set(user) - set(DEFAULTS)
        if unknown:
            raise ConfigError(f"{p}: unknown section(s) {sorted(unknown)} (known: "
                              f"{', '.join(DEFAULTS)})")
        cfg = merge(cfg, user)
    for s in sets:
        apply_set(cfg, s)
    for k, v in cfg["train"].items():
        if k not in DEFAULTS["train"]:
            raise ConfigError(f"train.{k} is not a known option (known: "
                              f"{', '.join(DEFAULTS['train'])})")
    return expand_paths(cfg)
