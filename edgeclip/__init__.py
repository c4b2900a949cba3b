"""edgeclip: an edge-device deployment SDK for CLIP-style text-image models.

The top-level modules are the device runtime: they import numpy, Pillow, onnxruntime and
tokenizers, never torch. Training (``edgeclip.distill``) and export (``edgeclip.export``) are
torch-side and imported only when used.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (BackendUnavailableError, BundleError, ConfigError, EdgeClipError,  # noqa: E402
                     ExportValidationError, ImageIndexError, InputError)

__all__ = [
    "__version__", "Embedder", "ImageIndex", "EdgeClipError", "BundleError", "InputError",
    "BackendUnavailableError", "ConfigError", "ExportValidationError", "ImageIndexError",
]


def __getattr__(name):  # lazy: `import edgeclip` stays cheap
    if name == "Embedder":
        from .embedder import Embedder
        return Embedder
    if name == "ImageIndex":
        from .index import ImageIndex
        return ImageIndex
    raise AttributeError(f"module 'edgeclip' has no attribute {name!r}")
