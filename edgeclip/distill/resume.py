"""Resuming a run directory safely.

``edgeclip distill`` resumes from ``<run.out>/checkpoint`` when it exists. The checkpoint records
the config it was trained with (``train_state.json``); resuming under another config (another
loss preset, schedule, learning rate, model, data) would silently mix two trainings, so it is
refused with one line naming the differing keys, unless the user says what they want:

* ``--restart`` (``run.resume = false``): start over in the directory (its checkpoint and
  ``metrics.jsonl`` are replaced);
* ``--resume-anyway``: continue the checkpoint under the new config (the new learning rates and
  schedule apply from the checkpoint's step on; loss-graph weights and optimizer moments that no
  longer fit are started fresh). The old ``config.json`` is kept as
  ``config.until-step-N.json``.

Keys that do not change what is trained (:data:`IGNORED_KEYS`: where the run is, how often it
logs and checkpoints, where it stops, threads and workers) may differ freely.

After a resume, ``metrics.jsonl`` keeps only the records up to the checkpoint's step: the steps
an interrupted run logged after its last checkpoint are trained (and logged) again, once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError

#: Config keys that may change between an interrupted run and its resume.
IGNORED_KEYS = frozenset({
    "run.out", "run.resume", "train.stop_at_step", "train.checkpoint_every", "train.log_every",
    "train.threads", "train.device", "train.eval_every_epochs", "data.workers", "data.cache_dir",
    "model.pretrained",  # the initial weights only: a resume loads the checkpoint's
})

CHECKPOINT = "checkpoint"
STATE_JSON = "train_state.json"
METRICS = "metrics.jsonl"
CONFIG = "config.json"


def _plain(cfg: dict) -> dict:
    """The config as it is stored (JSON, non-JSON values as strings)."""
    return json.loads(json.dumps(cfg, default=str))


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):  # an empty table adds no key (same as an absent one)
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def config_changes(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """``(key, old value, new value)`` for every key whose value differs (missing = None),
    ignoring :data:`IGNORED_KEYS`."""
    a, b = flatten(_plain(old)), flatten(_plain(new))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k not in IGNORED_KEYS and a.get(k) != b.get(k)]


def _short(v: Any) -> str:
    s = json.dumps(v) if v is not None else "(unset)"
    return s if len(s) <= 40 else s[:37] + "..."


def format_changes(changes: list[tuple[str, Any, Any]], limit: int = 6) -> str:
    parts = [f"{k} {_short(a)} -> {_short(b)}" for k, a, b in changes[:limit]]
    if len(changes) > limit:
        parts.append(f"and {len(changes) - limit} more")
    return "; ".join(parts)


def saved_state(out: Path) -> tuple[int, dict | None] | None:
    """(step, config it was trained with) of the run's checkpoint, or None when there is none.
    The config is ``train_state.json``'s, else the run's ``config.json``, else None."""
    state = Path(out) / CHECKPOINT / STATE_JSON
    if not state.is_file():
        return None
    try:
        meta = json.loads(state.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{state}: cannot read the checkpoint's state ({e}). Pass --restart to "
                          f"start the run over.") from None
    cfg = meta.get("config")
    if not isinstance(cfg, dict):
        try:
            cfg = json.loads((Path(out) / CONFIG).read_text())
        except (OSError, ValueError):
            cfg = None
    return int(meta.get("step", 0)), cfg


def check_resume(cfg: dict, resume_anyway: bool = False) -> list[tuple[str, Any, Any]]:
    """Before anything is loaded or written: ConfigError (one line, naming the differing keys)
    when ``run.out`` holds a checkpoint trained with another config and the user passed neither
    ``--restart`` nor ``--resume-anyway``. Returns the changes (empty: a plain resume, or no
    checkpoint, or a restart)."""
    if not cfg["run"].get("resume", True):
        return []
    out = Path(cfg["run"]["out"])
    saved = saved_state(out)
    if saved is None or saved[1] is None:
        return []
    step, old = saved
    changes = config_changes(old, cfg)
    if changes and not resume_anyway:
        raise ConfigError(
            f"{out} holds a checkpoint at step {step} trained with another config "
            f"({format_changes(changes)}). Pass --resume-anyway to continue it under the new "
            f"config, --restart to start the run over (replaces its checkpoint and metrics), or "
            f"choose another run.out.")
    return changes


def trim_metrics(out: Path, step: int) -> int:
    """Drop the records of steps after ``step`` (logged by an interrupted run after its last
    checkpoint) from ``metrics.jsonl``, atomically; return how many were dropped."""
    path = Path(out) / METRICS
    if not path.is_file():
        return 0
    keep, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:  # a line cut by the interruption
            dropped += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), (int, float)) \
                and rec["step"] > step:
            dropped += 1
            continue
        keep.append(line)
    if dropped:
        tmp = path.with_name(f".{METRICS}.tmp")
        tmp.write_text("".join(x + "\n" for x in keep))
        os.replace(tmp, path)
    return dropped


def archive_config(out: Path, step: int, cfg: dict) -> Path | None:
    """Keep the old ``config.json`` as ``config.until-step-N.json`` and write the new one."""
    out = Path(out)
    old = out / CONFIG
    kept = None
    if old.is_file():
        kept = out / f"config.until-step-{step}.json"
        os.replace(old, kept)
    old.write_text(json.dumps(cfg, indent=1, default=str))
    return kept


__all__ = ["IGNORED_KEYS", "config_changes", "format_changes", "check_resume", "trim_metrics",
           "archive_config", "saved_state", "flatten"]
