"""The user-facing error classes.

Everything a user can cause (a bad file, a bad bundle, a missing extra) raises a subclass of
:class:`EdgeClipError`; the CLI prints its message on one line and exits 1. Any other exception
is a bug and shows its traceback.
"""

from __future__ import annotations


class EdgeClipError(Exception):
    """Base class of every error a user can cause and fix."""


class BundleError(EdgeClipError):
    """A model bundle is missing, corrupt, or disagrees with its manifest."""


class InputError(EdgeClipError):
    """An input item (image or text) cannot be embedded.

    ``index`` is the position of the item in the call, ``item`` a printable description of it
    (a path, or the type of the object), ``reason`` what went wrong.
    """

    def __init__(self, message: str, index: int | None = None, item: str | None = None,
                 reason: str | None = None):
        super().__init__(message)
        self.index = index
        self.item = item
        self.reason = reason


class BackendUnavailableError(EdgeClipError):
    """A backend (TensorRT, CUDA, an ONNX Runtime provider) cannot run here."""


class ConfigError(EdgeClipError):
    """A configuration file or option has a bad value."""


class ExportValidationError(EdgeClipError):
    """An exported graph does not reproduce its reference closely enough."""


class ImageIndexError(EdgeClipError):
    """An image index cannot be opened or used as asked."""


__all__ = [
    "EdgeClipError", "BundleError", "InputError", "BackendUnavailableError", "ConfigError",
    "ExportValidationError", "ImageIndexError",
]
