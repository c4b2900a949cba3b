"""Shared fixtures: a tiny exported bundle (random weights) and the Flickr8k location."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# torchvision's transforms (a reference for the preprocessing parity test) installed beside the
# venv by the test set-up command; the PyPI binary cannot be imported beside torch's CPU build.
_tv_ref = Path(sys.prefix) / "torchvision-ref"
if "EDGECLIP_TORCHVISION_REF" not in os.environ and _tv_ref.is_dir():
    os.environ["EDGECLIP_TORCHVISION_REF"] = str(_tv_ref)
sys.path.insert(0, str(Path(__file__).resolve().parent))


def flickr8k_dir() -> Path | None:
    """``$EDGECLIP_FLICKR8K`` or ``../shared/data/flickr8k`` beside the repository."""
    env = os.environ.get("EDGECLIP_FLICKR8K")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data" / "flickr8k")
    for c in candidates:
        if (c / "captions.csv").is_file() and (c / "images").is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def flickr8k() -> Path:
    d = flickr8k_dir()
    if d is None:
        pytest.skip("Flickr8k not found: set EDGECLIP_FLICKR8K or put it at ../shared/data/flickr8k")
    return d


@pytest.fixture(scope="session")
def flickr_images(flickr8k) -> list[Path]:
    return sorted((flickr8k / "images").glob("*.jpg"))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A tiny random dual encoder exported to ONNX fp32 (both towers, max batch 8).

    Treat it as read-only; copy it (``shutil.copytree``) before changing anything.
    """
    pytest.importorskip("torch", reason="building the tiny bundle needs torch (pip install "
                                        "'edgeclip[train]')")
    from tiny_model import build_tiny_bundle
    return build_tiny_bundle(tmp_path_factory.mktemp("tiny_bundle") / "bundle")


@pytest.fixture
def fp16_bundle(tiny_bundle, tmp_path) -> Path:
    """A copy of the tiny bundle plus real fp16 graphs (edgeclip.export.fp16), for TensorRT
    builds."""
    import shutil

    pytest.importorskip("onnxconverter_common", reason="fp16 graphs need edgeclip[export]")
    from edgeclip.export.fp16 import convert_fp16
    from edgeclip.manifest import ModelFile, load_bundle, write_manifest
    b = tmp_path / "fp16_bundle"
    shutil.copytree(tiny_bundle, b)
    manifest, _ = load_bundle(b)
    for t in ("image", "text"):
        convert_fp16(b / f"{t}.fp32.onnx", b / f"{t}.fp16.onnx")
        manifest.tower(t).models.append(ModelFile(f"{t}.fp16.onnx", "onnx", "fp16", "any"))
    write_manifest(manifest, b)
    return b
