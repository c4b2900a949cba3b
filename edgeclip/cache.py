"""Start-up caches under ``$EDGECLIP_HOME/cache`` (default ``~/.local/share/edgeclip/cache``).

* **File checksums** keyed by ``(device, inode, size, mtime_ns, ctime_ns)``: a bundle's sha256
  checks are computed once per file version, not at every start. Any write to a file changes its
  mtime and ctime (ctime cannot be set back by a user), and a replaced file has a new inode, so a
  modified file is always hashed again. The key is taken before and after hashing; a file that
  changes while it is hashed is not cached.
* **ONNX Runtime optimized graphs** (``SessionOptions.optimized_model_filepath``), keyed by the
  source graph's sha256, the rewrite applied (e.g. FP16 -> FP32), the ONNX Runtime version and
  this CPU's instruction set (optimized CPU graphs are specific to it). A cached graph is loaded
  with graph optimizations off; its own sha256 is recorded and checked like a bundle file.
* **Graph checks passed**: the manifest-vs-graph checks (names, dtypes, shapes, metadata) a
  session passed, keyed by the graph's sha256 and the whole manifest. When the same graph and
  manifest were checked before, a tower's session can be created on first use (lazily).

``EDGECLIP_CACHE=0`` turns the disk caches off (checksums are then still computed once per file
per process). An unwritable home only disables them too: caching never makes loading fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from functools import lru_cache
from pathlib import Path

CACHE_VERSION = 1
_MAX_ENTRIES = 512  # checksums kept on disk
_MAX_GRAPHS = 16  # optimized graphs kept on disk (the default model uses 2-4)

_lock = threading.Lock()
_mem: dict[str, tuple[tuple, str]] = {}  # realpath -> (stat key, sha256)
_disk: dict | None = None  # the loaded sha256 cache file


def cache_dir() -> Path | None:
    """``$EDGECLIP_HOME/cache``, or None when disk caching is off (``EDGECLIP_CACHE=0``)."""
    if os.environ.get("EDGECLIP_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    home = os.environ.get("EDGECLIP_HOME") or "~/.local/share/edgeclip"
    return Path(os.path.expanduser(os.path.expandvars(home))) / "cache"


def _stat_key(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _write_json_atomic(path: Path, data: dict) -> None:
    import tempfile
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: no disk cache


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) and d.get("version") == CACHE_VERSION else {}


def _disk_cache() -> dict:
    global _disk
    if _disk is None:
        root = cache_dir()
        _disk = _read_json(root / "sha256.json").get("files", {}) if root else {}
    return _disk


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, from the cache when its (device, inode, size, mtime, ctime) have not
    changed since it was hashed."""
    real = os.path.realpath(path)
    key = _stat_key(os.stat(real))
    with _lock:
        hit = _mem.get(real)
        if hit is not None and hit[0] == key:
            return hit[1]
        disk = _disk_cache().get(real)
        if isinstance(disk, list) and len(disk) == 2 and tuple(disk[0]) == key:
            _mem[real] = (key, disk[1])
            return disk[1]
    from .manifest import sha256_file
    sha = sha256_file(real)
    if _stat_key(os.stat(real)) != key:
        return sha  # changed while hashing: not cached
    with _lock:
        _mem[real] = (key, sha)
        root = cache_dir()
        if root is not None:
            files = dict(_read_json(root / "sha256.json").get("files", {}))  # others' entries
            files[real] = [list(key), sha]
            if len(files) > _MAX_ENTRIES:
                files = dict(list(files.items())[-_MAX_ENTRIES:])
            _disk_cache().update(files)
            _write_json_atomic(root / "sha256.json", {"version": CACHE_VERSION, "files": files})
    return sha


def forget(path: str | os.PathLike | None = None) -> None:
    """Drop the in-process checksum of ``path`` (all when None); the disk cache stays, and is
    keyed by stat, so it cannot return a stale checksum."""
    global _disk
    with _lock:
        if path is None:
            _mem.clear()
            _disk = None
        else:
            _mem.pop(os.path.realpath(path), None)


@lru_cache(maxsize=1)
def cpu_tag() -> str:
    """A short tag of this CPU's instruction set: optimized ONNX Runtime graphs (NCHWc layouts,
    fused kernels) depend on it."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = " ".join(sorted(line.split(":", 1)[1].split()))
                    break
    except OSError:
        pass
    machine = os.uname().machine if hasattr(os, "uname") else os.environ.get(
        "PROCESSOR_ARCHITECTURE", "")
    return hashlib.sha256(f"{machine}|{flags}".encode()).hexdigest()[:12]


def _ort_version() -> str:
    import onnxruntime as ort
    return ort.__version__


def optimized_graph_path(source_sha256: str, variant: str) -> Path | None:
    """Where the optimized graph of a source graph is cached (None: caching off)."""
    root = cache_dir()
    if root is None:
        return None
    name = f"{source_sha256[:32]}-{variant}-ort{_ort_version()}-{cpu_tag()}.onnx"
    return root / "ort" / name


def _sidecar(graph: Path) -> Path:
    return graph.with_suffix(".json")


def cached_graph(source_sha256: str, variant: str) -> Path | None:
    """The cached optimized graph when it exists and still has the checksum it was written with."""
    path = optimized_graph_path(source_sha256, variant)
    if path is None or not path.is_file():
        return None
    meta = _read_json(_sidecar(path))
    try:
        ok = meta.get("sha256") and file_sha256(path) == meta["sha256"]
    except OSError:
        ok = False
    return path if ok else None


def temp_graph_path(source_sha256: str, variant: str) -> Path | None:
    """A fresh temporary file name beside the cached graph's (ONNX Runtime writes it), or None
    when the cache directory cannot be written."""
    import tempfile
    final = optimized_graph_path(source_sha256, variant)
    if final is None:
        return None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=final.stem + ".", suffix=".tmp.onnx", dir=final.parent)
        os.close(fd)
        return Path(tmp)
    except OSError:
        return None


def commit_graph(tmp: Path, source_sha256: str, variant: str) -> Path | None:
    """Move a graph ONNX Runtime just wrote into the cache and record its checksum."""
    final = optimized_graph_path(source_sha256, variant)
    try:
        if final is None or not tmp.is_file() or tmp.stat().st_size == 0:
            raise OSError("nothing written")
        from .manifest import sha256_file
        sha = sha256_file(tmp)
        os.replace(tmp, final)
        meta = {"version": CACHE_VERSION, "sha256": sha, "source_sha256": source_sha256,
                "variant": variant, "checked": []}
        _write_json_atomic(_sidecar(final), meta)
        _prune(final.parent, keep=final)
        return final
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        return None


def _prune(folder: Path, keep: Path, max_graphs: int = _MAX_GRAPHS) -> None:
    """Keep the ``max_graphs`` most recently written graphs (and drop stale temporaries)."""
    try:
        graphs = sorted((p for p in folder.glob("*.onnx") if not p.name.endswith(".tmp.onnx")),
                        key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for p in graphs[max_graphs:]:
            if p != keep:
                p.unlink(missing_ok=True)
                _sidecar(p).unlink(missing_ok=True)
    except OSError:
        pass


def checks_passed(source_sha256: str, variant: str, check_key: str) -> bool:
    path = optimized_graph_path(source_sha256, variant)
    if path is None:
        return False
    return check_key in _read_json(_sidecar(path)).get("checked", [])


def record_checks_passed(source_sha256: str, variant: str, check_key: str) -> None:
    path = optimized_graph_path(source_sha256, variant)
    if path is None or not path.is_file():
        return
    with _lock:
        meta = _read_json(_sidecar(path))
        if not meta or check_key in meta.get("checked", []):
            return
        meta["checked"] = (meta.get("checked", []) + [check_key])[-64:]
        _write_json_atomic(_sidecar(path), meta)
