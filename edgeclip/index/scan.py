"""Finding image files, hashing their bytes, and the demo photos that scikit-image ships."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgeClipError, ImageIndexError
from ..manifest import digest_file
from ..paths import expand_path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

# The colour photographs in scikit-image's ``skimage/data`` (not its tiny or grey test images).
DEMO_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
               "motorcycle_right.png", "horse.png", "hubble_deep_field.jpg", "retina.jpg",
               "ihc.png")


@dataclass(frozen=True)
class FileStat:
    path: str  # canonical: absolute, symlinks resolved (the file's identity in the index)
    size: int
    mtime_ns: int
    display: str | None = None  # the path as the user reached it, when it differs from ``path``


def user_path(path: str | os.PathLike) -> Path:
    """A path as a user typed it: ``~`` and ``$VARS`` expanded (never a literal ``./~``)."""
    return expand_path(path)


def canonical(path: str | os.PathLike) -> str:
    """The identity of a file or folder: absolute, with every symlink resolved."""
    return os.path.realpath(user_path(path))


def under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def stat_file(path: str | os.PathLike) -> FileStat:
    """The file at ``path`` (``~`` expanded; a symlink is followed: it was named explicitly)."""
    shown = os.path.abspath(user_path(path))
    real = os.path.realpath(shown)
    st = os.stat(real)
    return FileStat(real, st.st_size, st.st_mtime_ns, shown if shown != real else None)


def scan_folder(root: str | os.PathLike, recursive: bool = True) -> list[FileStat]:
    """Image files under ``root`` (hidden folders such as ``.thumbnails`` are left out).

    Paths are canonical (``root`` resolved, so one folder reached through two paths is one set
    of files); ``display`` keeps the path under ``root`` as given. Symlinks inside are not
    followed out of the folder: a linked folder is not entered, and a linked file counts only
    when it points inside ``root`` (then as the file it points to, once)."""
    shown_root = os.path.abspath(user_path(root))
    root = os.path.realpath(shown_root)
    if not os.path.exists(root):
        raise ImageIndexError(f"folder {root} does not exist; pass an existing folder of images.")
    if not os.path.isdir(root):
        raise ImageIndexError(f"{root} is not a folder; pass the folder that holds the images.")
    found: dict[str, FileStat] = {}
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue  # an unreadable sub-folder: nothing to index there
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    if recursive and not e.name.startswith("."):
                        stack.append(e.path)
                elif is_image_name(e.name) and e.is_file():
                    path = e.path
                    if e.is_symlink():
                        path = os.path.realpath(e.path)
                        if not under(path, root) or path in found:
                            continue  # points outside the folder, or its target is listed
                    st = os.stat(path)
                    shown = shown_root + path[len(root):] if shown_root != root else None
                    found[path] = FileStat(path, st.st_size, st.st_mtime_ns, shown)
            except OSError:
                continue  # vanished while scanning
    return sorted(found.values(), key=lambda f: f.path)


def hash_file(path: str, chunk: int = 1 << 20) -> str:
    """blake2b-128 of the file's bytes, hex."""
    return digest_file(path, hashlib.blake2b(digest_size=16), chunk)


def demo_photos_dir() -> Path:
    """``skimage/data`` of the installed scikit-image, found without importing it."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise EdgeClipError("the demo photos come with scikit-image, which is not installed: "
                            "pip install 'edgeclip[demo]', or pass a folder: edgeclip index DIR")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def demo_photos() -> list[str]:
    """Absolute paths of the colour demo photographs that are present."""
    d = demo_photos_dir()
    found = [str(d / n) for n in DEMO_PHOTOS if (d / n).is_file()]
    if not found:
        raise EdgeClipError(f"no demo photos in {d}: reinstall scikit-image "
                            f"(pip install 'edgeclip[demo]'), or pass a folder: edgeclip index DIR")
    return found
