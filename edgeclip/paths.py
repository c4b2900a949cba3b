"""Paths a user types (CLI options, config values, API arguments)."""

from __future__ import annotations

import os
from pathlib import Path


def expand_path(path: str | os.PathLike) -> Path:
    """``~``, ``~user`` and ``$VAR`` / ``${VAR}`` expanded: ``"~/x"`` -> ``$HOME/x``.

    Relative paths stay relative (to the working directory)."""
    return Path(os.path.expanduser(os.path.expandvars(os.fspath(path))))
