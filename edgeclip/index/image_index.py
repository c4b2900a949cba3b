"""``edgeclip.ImageIndex``: index the photos on a device, then find them by text or by example.

SQLite (WAL) is the store of record (see :mod:`edgeclip.index.store`); searches run over an
in-memory copy of the embeddings that is reloaded when the database's generation counter
changes, so a reader in another process sees what a writer commits. Indexing is incremental
(new, changed, moved, deleted files) and commits every ``commit_every`` files, so ``kill -9``
loses at most one batch and the next run resumes.

The default database is ``$EDGECLIP_HOME/index.db``; ``EDGECLIP_HOME`` defaults to
``~/.local/share/edgeclip``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgeClipError, ImageIndexError, InputError
from .indexer import IndexingMixin, IndexReport  # noqa: F401  (re-exported)
from .duplicates import DEFAULT_THRESHOLD, check_threshold, duplicate_groups, manifest_threshold
from .search import AnnIndex, SearchMixin, SearchResult, load_usearch  # noqa: F401
from .scan import user_path
from .store import (WriterLock, bump_generation, columns, connect, connect_readonly, get_meta,
                    set_meta, transaction)


def edgeclip_home() -> Path:
    """``$EDGECLIP_HOME`` (``~`` and ``$VARS`` expanded), default ``~/.local/share/edgeclip``."""
    env = os.environ.get("EDGECLIP_HOME")
    return user_path(env) if env else Path.home() / ".local" / "share" / "edgeclip"


def default_db_path() -> Path:
    """``$EDGECLIP_HOME/index.db``."""
    return edgeclip_home() / "index.db"


class ImageIndex(IndexingMixin, SearchMixin):
    """An on-device image index.

    Args:
        path: the database file (created when absent; ``~`` and ``$VARS`` expanded); ``None`` =
            ``$EDGECLIP_HOME/index.db``. A file that is not an edgeclip index (e.g. another
            program's SQLite database) is refused and left unchanged.
        embedder: an :class:`edgeclip.Embedder`; ``None`` creates one lazily with only the tower
            a call needs, from ``model`` or else the bundle that built the index, or else the
            built-in default model.
        approximate: search with a usearch HNSW index (``pip install 'edgeclip[index]'``) instead
            of the exact matrix product; for millions of images.
        model: bundle path used when ``embedder`` is ``None``.
        reindex: drop every indexed image (e.g. to switch to another model).
        read_only: open an existing index for searching only: the database is never written
            (only the HNSW graph cache beside it, ``<db>.usearch``, with ``approximate=True``
            where that folder is writable), and it works in read-only folders and file systems.
        dtype: ``"float32"`` (default) or ``"float16"``: the in-memory copy of the vectors that
            exact search uses (float16 halves the memory of a large index).
    """

    def __init__(self, path: str | os.PathLike | None = None, embedder=None,
                 approximate: bool = False, *, model: str | os.PathLike | None = None,
                 reindex: bool = False, backend: str = "auto", threads: int | None = None,
                 read_only: bool = False, dtype: str = "float32"):
        self.path = user_path(path) if path is not None else default_db_path()
        self.approximate = bool(approximate)
        self.read_only = bool(read_only)
        if dtype not in ("float32", "float16"):
            raise InputError(f"dtype={dtype!r}: pass 'float32' or 'float16'.")
        self.dtype = np.dtype(dtype)
        if self.read_only and reindex:
            raise InputError("reindex=True writes the index; it cannot be combined with "
                             "read_only=True.")
        if self.approximate:
            load_usearch()
        self._model = user_path(model) if model is not None else None
        self._backend = backend
        self._threads = threads
        self._conn = connect_readonly(self.path) if self.read_only else connect(self.path)
        self._path_sql = ("COALESCE(display, path)" if "display" in columns(self._conn, "images")
                          else "path")
        self._embedders: dict[str, Any] = {}
        self._owned: list = []  # embedders created here (closed by close())
        self._gen: int | None = None
        self._ids = np.empty(0, dtype=np.int64)
        self._mtimes = np.empty(0, dtype=np.int64)
        self._matrix: np.ndarray | None = None
        self._ann: AnnIndex | None = None
        self._ann_gen = -1
        self._ann_dirty = False
        try:
            if reindex:
                with WriterLock(self.path):
                    self._clear()
            if embedder is not None:
                self._check_model(embedder)
                self._embedders = {"image": embedder, "text": embedder}
        except BaseException:
            self._conn.close()
            raise

    # -- model identity ----------------------------------------------------------------------
    @property
    def meta(self) -> dict:
        return get_meta(self._conn)

    def _check_model(self, emb) -> None:
        """Refuse a model other than the one that built the index. An index with no model yet
        gets one recorded with its first successfully embedded batch (``_record_model``)."""
        meta = get_meta(self._conn)
        if meta.get("model_identity") is not None and meta["model_identity"] != emb.identity:
            raise ImageIndexError(
                f"{self.path} was built with model '{meta.get('model_name')}' (identity "
                f"{str(meta['model_identity'])[:12]}, bundle {meta.get('bundle_dir')}), not with "
                f"'{emb.model_name}' (identity {emb.identity[:12]}, bundle {emb.bundle_dir}). Use "
                f"the model that built it, or rebuild the index with this one: "
                f"ImageIndex(..., reindex=True) or `edgeclip index DIR --reindex --db {self.path}`.")

    def _record_model(self, emb, dim: int) -> None:
        """Inside the write transaction of the first batch that the model embedded: record
        the model and the dimension it really produced."""
        if get_meta(self._conn).get("model_identity") is None:
            set_meta(self._conn, model_name=emb.model_name, model_identity=emb.identity,
                     dim=int(dim), bundle_dir=str(emb.bundle_dir))
            try:
                t = manifest_threshold(emb.manifest)
            except EdgeClipError:  # a damaged key must not cost the batch; duplicates() says it
                t = None
            if t is not None:
                set_meta(self._conn, duplicate_threshold=repr(t))
        else:
            self._check_model(emb)

    def _embedder(self, tower: str):
        emb = self._embedders.get(tower)
        if emb is not None:
            return emb
        from ..embedder import Embedder
        model = self._model
        if model is None:
            recorded = get_meta(self._conn).get("bundle_dir")
            if recorded and (Path(recorded) / "manifest.json").is_file():
                model = recorded
        emb = Embedder(model, backend=self._backend, threads=self._threads, towers=(tower,))
        try:
            self._check_model(emb)
        except BaseException:
            emb.close()
            raise
        self._embedders[tower] = emb
        self._owned.append(emb)
        return emb

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise ImageIndexError(f"{self.path} is open read-only; {what} writes the index. Open "
                                  f"it with ImageIndex({str(self.path)!r}) to write.")

    def _clear(self) -> None:
        with transaction(self._conn):
            self._conn.execute("DELETE FROM images")
            self._conn.execute("DELETE FROM skipped")
            self._conn.execute("DELETE FROM meta WHERE key IN ('model_name', 'model_identity', "
                               "'dim', 'bundle_dir', 'duplicate_threshold')")
            bump_generation(self._conn)
        for p in self._ann_files():
            try:
                os.remove(p)
            except FileNotFoundError:
                pass
        self._gen = None
        self._ann = None
        self._ann_gen = -1

    # -- the rest ----------------------------------------------------------------------------
    @property
    def duplicate_threshold(self) -> float:
        """The model's own duplicate threshold: measured for it on Flickr8k dev photos
        (``benchmarks/duplicates.py``) and recorded in its manifest, copied into the index when
        the model first embedded into it. An index built before that was recorded looks in the
        bundle that built it (same model identity); a model with none gets
        :data:`~edgeclip.index.duplicates.DEFAULT_THRESHOLD`."""
        meta = get_meta(self._conn)
        if meta.get("duplicate_threshold") is not None:
            return check_threshold(meta["duplicate_threshold"], f"{self.path} (meta)")
        bundle = meta.get("bundle_dir")
        if bundle and (Path(bundle) / "manifest.json").is_file():
            from ..manifest import read_manifest
            try:
                m = read_manifest(bundle)
            except EdgeClipError:
                m = None
            if m is not None and m.identity() == meta.get("model_identity"):
                t = manifest_threshold(m)
                if t is not None:
                    return t
        return DEFAULT_THRESHOLD

    def duplicates(self, threshold: float | None = None) -> list[list[str]]:
        """Groups of near-duplicate images, largest first, each group's paths sorted. No
        chaining: EVERY pair inside a group has cosine >= ``threshold`` (complete linkage,
        :mod:`edgeclip.index.duplicates`). ``None``: the model's own threshold
        (:attr:`duplicate_threshold`)."""
        if threshold is None:
            threshold = self.duplicate_threshold
        threshold = check_threshold(threshold, "threshold")
        ids, matrix = self._all_embeddings()
        # identical blobs score 1 up to float32 rounding: keep them at threshold 1
        groups = duplicate_groups(matrix.astype(np.float32, copy=False),
                                  min(threshold, 1.0 - 1e-5))
        if not groups:
            return []
        paths = self._paths_by_id()
        return [sorted(paths[int(ids[i])] for i in g if int(ids[i]) in paths) for g in groups]

    def _paths_by_id(self) -> dict[int, str]:
        """id -> the path to show (the path the user gave when indexing)."""
        return dict(self._conn.execute(f"SELECT id, {self._path_sql} FROM images").fetchall())

    def _all_embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.approximate:
            self._refresh()
            return self._ids, self._matrix
        ids, _, matrix = self._load_all()
        return ids, matrix

    def export_embeddings(self, out_path: str | os.PathLike) -> list[Path]:
        """Write the paths, vectors and model identity, e.g. for a server-side vector database.

        - ``x.npz``: arrays ``paths`` (str), ``embeddings`` (float32 N x D, unit rows),
          ``model_name``, ``model_identity``, ``dim`` (read with ``np.load(x)``, no pickle);
        - ``x.parquet`` (``pip install 'edgeclip[parquet]'``): columns ``path`` and
          ``embedding`` (fixed-size list<float32>), the model in the schema metadata
          ``edgeclip``;
        - anything else: ``x.npy`` (float32 N x D) and ``x.json`` (paths, dim, model).

        ``~`` and ``$VARS`` are expanded. Returns the files written."""
        out = user_path(out_path)
        ids, _, matrix = self._load_all()
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        paths_by_id = self._paths_by_id()
        paths = [paths_by_id[int(i)] for i in ids]
        meta = get_meta(self._conn)
        info = {"format": "edgeclip-embeddings", "count": len(paths), "dim": self._dim(),
                "dtype": "float32", "model_name": meta.get("model_name"),
                "model_identity": meta.get("model_identity"), "paths": paths}
        if out.suffix == ".parquet":
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError as e:
                raise EdgeClipError(f"writing {out} needs pyarrow: pip install "
                                    f"'edgeclip[parquet]'; or export to "
                                    f"{out.with_suffix('.npz')}.") from e
            out.parent.mkdir(parents=True, exist_ok=True)
            flat = pa.array(matrix.reshape(-1), type=pa.float32())
            col = pa.FixedSizeListArray.from_arrays(flat, info["dim"])
            table = pa.table({"path": pa.array(paths, type=pa.string()), "embedding": col})
            info.pop("paths")
            table = table.replace_schema_metadata({"edgeclip": json.dumps(info)})
            pq.write_table(table, out)
            return [out]
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".npz":
            np.savez(out, paths=np.asarray(paths, dtype=str), embeddings=matrix,
                     model_name=np.asarray(str(info["model_name"])),
                     model_identity=np.asarray(str(info["model_identity"])),
                     dim=np.asarray(info["dim"], dtype=np.int64))
            return [out]
        npy = out.with_suffix(".npy")
        side = out.with_suffix(".json")
        np.save(npy, matrix)
        side.write_text(json.dumps(info, indent=1))
        return [npy, side]

    def status(self) -> dict:
        """Counts, model and location of the index."""
        meta = get_meta(self._conn)
        c = self._conn
        n = c.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        last = c.execute("SELECT MAX(indexed_at) FROM images").fetchone()[0]
        size = sum(os.path.getsize(p) for p in (str(self.path), str(self.path) + "-wal")
                   if os.path.exists(p))
        return {"db": str(self.path), "images": n, "read_only": self.read_only,
                "skipped": c.execute("SELECT COUNT(*) FROM skipped").fetchone()[0],
                "folders": c.execute("SELECT COUNT(DISTINCT folder) FROM images").fetchone()[0],
                "model_name": meta.get("model_name"), "model_identity": meta.get("model_identity"),
                "bundle_dir": meta.get("bundle_dir"), "dim": meta.get("dim"),
                "generation": int(meta.get("generation", 0)), "db_bytes": size,
                "last_indexed": (_dt.datetime.fromtimestamp(last).isoformat(timespec="seconds")
                                 if last else None)}

    def skipped(self) -> list[tuple[str, str]]:
        """(path, reason) of the files that could not be indexed."""
        return [tuple(r) for r in self._conn.execute("SELECT path, reason FROM skipped "
                                                     "ORDER BY path")]

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def close(self) -> None:
        if self._ann is not None and self._ann_dirty and len(self._ann) >= 10_000:
            try:
                self._save_ann()
            except OSError:
                pass
        for emb in self._owned:
            emb.close()
        self._owned = []
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"ImageIndex({str(self.path)!r}, images={len(self)}, approximate={self.approximate})"



__all__ = ["ImageIndex", "SearchResult", "IndexReport", "default_db_path", "edgeclip_home"]
