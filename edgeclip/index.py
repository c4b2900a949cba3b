"""``edgeclip.ImageIndex``: index the photos on a device, then find them by text or by example.

SQLite (WAL) is the store of record (see :mod:`edgeclip.index_store`); searches run over an
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
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .errors import EdgeClipError, ImageIndexError, InputError
from .index_scan import FileStat, hash_file, scan_folder, stat_file
from .index_search import AnnIndex, duplicate_groups, exact_search, load_usearch
from .index_store import (bump_generation, connect, generation, get_meta, prefix_range,
                          set_meta, transaction)


def edgeclip_home() -> Path:
    """``$EDGECLIP_HOME``, default ``~/.local/share/edgeclip``."""
    env = os.environ.get("EDGECLIP_HOME")
    return Path(env) if env else Path.home() / ".local" / "share" / "edgeclip"


def default_db_path() -> Path:
    """``$EDGECLIP_HOME/index.db``."""
    return edgeclip_home() / "index.db"


@dataclass(frozen=True)
class SearchResult:
    path: str
    score: float


@dataclass
class IndexReport:
    """What one ``add_folder`` run did. ``embedded`` counts images that went through the model
    (a file whose bytes are already indexed reuses that embedding); ``images_per_s`` is
    ``embedded / seconds``."""

    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    skipped: int = 0
    unchanged: int = 0
    embedded: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0

    def __str__(self) -> str:
        return (f"added {self.added}, updated {self.updated}, moved {self.moved}, removed "
                f"{self.removed}, skipped {self.skipped}, unchanged {self.unchanged} in "
                f"{self.seconds:.1f} s ({self.images_per_s:.1f} images/s)")


def _to_ns(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        return int(value.timestamp() * 1e9)
    if isinstance(value, _dt.date):
        return int(_dt.datetime(value.year, value.month, value.day).timestamp() * 1e9)
    if isinstance(value, (int, float)):
        return int(value * 1e9)
    raise InputError(f"{name}={value!r}: pass a datetime, a date or POSIX seconds.")


class ImageIndex:
    """An on-device image index.

    Args:
        path: the database file (created when absent); ``None`` = ``$EDGECLIP_HOME/index.db``.
        embedder: an :class:`edgeclip.Embedder`; ``None`` creates one lazily with only the tower
            a call needs, from ``model`` or else the bundle that built the index, or else the
            built-in default model.
        approximate: search with a usearch HNSW index (``pip install 'edgeclip[index]'``) instead
            of the exact matrix product; for millions of images.
        model: bundle path used when ``embedder`` is ``None``.
        reindex: drop every indexed image (e.g. to switch to another model).
    """

    def __init__(self, path: str | os.PathLike | None = None, embedder=None,
                 approximate: bool = False, *, model: str | os.PathLike | None = None,
                 reindex: bool = False, backend: str = "auto", threads: int | None = None):
        self.path = Path(path) if path is not None else default_db_path()
        self.approximate = bool(approximate)
        if self.approximate:
            load_usearch()
        self._model = model
        self._backend = backend
        self._threads = threads
        self._conn = connect(self.path)
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
        meta = get_meta(self._conn)
        if meta.get("model_identity") is None:
            with transaction(self._conn):
                if get_meta(self._conn).get("model_identity") is None:
                    set_meta(self._conn, model_name=emb.model_name, model_identity=emb.identity,
                             dim=int(emb.dim), bundle_dir=str(emb.bundle_dir))
                    bump_generation(self._conn)
            meta = get_meta(self._conn)
        if meta["model_identity"] != emb.identity:
            raise ImageIndexError(
                f"{self.path} was built with model '{meta.get('model_name')}' (identity "
                f"{str(meta['model_identity'])[:12]}, bundle {meta.get('bundle_dir')}), not with "
                f"'{emb.model_name}' (identity {emb.identity[:12]}, bundle {emb.bundle_dir}). Use "
                f"the model that built it, or rebuild the index with this one: "
                f"ImageIndex(..., reindex=True) or `edgeclip index DIR --reindex --db {self.path}`.")

    def _embedder(self, tower: str):
        emb = self._embedders.get(tower)
        if emb is not None:
            return emb
        from .embedder import Embedder
        model = self._model
        if model is None:
            recorded = get_meta(self._conn).get("bundle_dir")
            if recorded and (Path(recorded) / "manifest.json").is_file():
                model = recorded
        emb = Embedder(model, backend=self._backend, threads=self._threads, towers=(tower,))
        self._check_model(emb)
        self._embedders[tower] = emb
        self._owned.append(emb)
        return emb

    def _clear(self) -> None:
        with transaction(self._conn):
            self._conn.execute("DELETE FROM images")
            self._conn.execute("DELETE FROM skipped")
            self._conn.execute("DELETE FROM meta WHERE key IN ('model_name', 'model_identity', "
                               "'dim', 'bundle_dir')")
            bump_generation(self._conn)
        for p in self._ann_files():
            try:
                os.remove(p)
            except FileNotFoundError:
                pass
        self._gen = None
        self._ann = None
        self._ann_gen = -1

    # -- indexing ----------------------------------------------------------------------------
    def add_folder(self, folder: str | os.PathLike, recursive: bool = True, batch_size: int = 32,
                   commit_every: int = 256, progress: bool = True,
                   on_commit: Callable[[IndexReport], None] | None = None) -> IndexReport:
        """Bring the index up to date with ``folder``: embed new files, re-embed changed ones
        (size/mtime differ and then the hash differs), re-point moved or renamed ones (same
        bytes) without re-embedding, remove deleted ones. Unreadable files go to the
        ``skipped`` table with the reason; they are retried when they change. Commits every
        ``commit_every`` files and then calls ``on_commit(report_so_far)``."""
        t0 = time.perf_counter()
        files = scan_folder(folder, recursive=recursive)
        root = os.path.abspath(os.fspath(folder))
        if recursive:
            lo, hi = prefix_range(root)
            where, args = "path >= ? AND path < ?", (lo, hi)
        else:
            where, args = "folder = ?", (root,)
        existing = {r[1]: r for r in self._conn.execute(
            f"SELECT id, path, size, mtime_ns, hash FROM images WHERE {where}", args)}
        lo, hi = prefix_range(root)
        known_bad = {r[0]: (r[1], r[2]) for r in self._conn.execute(
            "SELECT path, size, mtime_ns FROM skipped WHERE path >= ? AND path < ?", (lo, hi))
            if recursive or os.path.dirname(r[0]) == root}
        return self._sync(files, existing, known_bad, t0, batch_size, commit_every, progress,
                          on_commit, desc=f"indexing {root}")

    def add_files(self, paths: Iterable[str | os.PathLike], batch_size: int = 32,
                  commit_every: int = 256, progress: bool = True,
                  on_commit: Callable[[IndexReport], None] | None = None) -> IndexReport:
        """Index (or update) these image files; nothing else in the index is removed."""
        t0 = time.perf_counter()
        files, seen = [], set()
        for p in paths:
            ap = os.path.abspath(os.fspath(p))
            if ap in seen:
                continue
            seen.add(ap)
            try:
                files.append(stat_file(ap))
            except OSError as e:
                raise ImageIndexError(f"cannot index {ap}: {e.strerror or e}. Pass existing "
                                      f"image files.") from e
        existing, known_bad = {}, {}
        for f in files:
            r = self._conn.execute("SELECT id, path, size, mtime_ns, hash FROM images WHERE "
                                   "path = ?", (f.path,)).fetchone()
            if r:
                existing[f.path] = r
            s = self._conn.execute("SELECT size, mtime_ns FROM skipped WHERE path = ?",
                                   (f.path,)).fetchone()
            if s:
                known_bad[f.path] = tuple(s)
        return self._sync(files, existing, known_bad, t0, batch_size, commit_every, progress,
                          on_commit, desc="indexing", delete_missing=False)

    def _sync(self, files: list[FileStat], existing: dict, known_bad: dict, t0: float,
              batch_size: int, commit_every: int, progress: bool, on_commit, desc: str,
              delete_missing: bool = True) -> IndexReport:
        from tqdm.auto import tqdm

        if not isinstance(commit_every, int) or commit_every < 1:
            raise EdgeClipError(f"commit_every={commit_every!r}: must be a positive int.")
        report = IndexReport()
        seen = {f.path for f in files}
        missing = {p: r for p, r in existing.items() if p not in seen}
        work: list[FileStat] = []
        for f in files:
            row = existing.get(f.path)
            if row is not None and row[2] == f.size and row[3] == f.mtime_ns:
                report.unchanged += 1
            elif row is None and known_bad.get(f.path) == (f.size, f.mtime_ns):
                report.skipped += 1  # still the same unreadable file: not retried
            else:
                work.append(f)
        claimed: set[int] = set()
        self._embedder("image")  # load the model, and refuse one that is not the index's
        with tqdm(total=len(work), desc=desc, unit="img", disable=not progress,
                  dynamic_ncols=True) as bar:
            for start in range(0, len(work), commit_every):
                chunk = work[start:start + commit_every]
                self._sync_chunk(chunk, existing, missing, seen, claimed, report, batch_size)
                bar.update(len(chunk))
                if on_commit is not None:
                    on_commit(report)
        if delete_missing and (missing or known_bad):
            gone = [r[0] for p, r in missing.items() if r[0] not in claimed]
            gone_bad = [p for p in known_bad if p not in seen]
            if gone or gone_bad:
                with transaction(self._conn):
                    self._conn.executemany("DELETE FROM images WHERE id = ?",
                                           [(i,) for i in gone])
                    self._conn.executemany("DELETE FROM skipped WHERE path = ?",
                                           [(p,) for p in gone_bad])
                    bump_generation(self._conn)
                report.removed += len(gone)
        report.seconds = time.perf_counter() - t0
        report.images_per_s = report.embedded / report.seconds if report.seconds > 0 else 0.0
        return report

    def _sync_chunk(self, chunk: list[FileStat], existing: dict, missing: dict, seen: set,
                    claimed: set, report: IndexReport, batch_size: int) -> None:
        conn = self._conn
        ops: list[tuple] = []
        need: dict[str, list[tuple[FileStat, int | None]]] = {}  # hash -> files needing it
        for f in chunk:
            row = existing.get(f.path)
            row_id = row[0] if row is not None else None
            try:
                h = hash_file(f.path)
            except OSError as e:
                ops.append(("skip", f, f"cannot read the file: {e.strerror or e}", row_id))
                continue
            if row is not None and row[4] == h:
                ops.append(("touch", f, row_id))
                continue
            if row is None:
                src = None
                for cid, cpath in conn.execute("SELECT id, path FROM images WHERE hash = ?",
                                               (h,)):
                    if cid not in claimed and cpath not in seen and not os.path.exists(cpath):
                        src = cid
                        break
                if src is not None:
                    claimed.add(src)
                    ops.append(("move", f, src))
                    continue
            need.setdefault(h, []).append((f, row_id))
        # embeddings: reuse the one of identical bytes when indexed, else run the model
        blobs: dict[str, bytes] = {}
        for h in need:
            r = conn.execute("SELECT embedding FROM images WHERE hash = ? LIMIT 1", (h,)).fetchone()
            if r is not None:
                blobs[h] = r[0]
        to_embed = [h for h in need if h not in blobs]
        failed: dict[str, str] = {}
        if to_embed:
            paths = [need[h][0][0].path for h in to_embed]
            emb, skipped = self._embedder("image").embed_images(paths, batch_size=batch_size,
                                                                on_error="skip")
            bad = {s.index: s.reason for s in skipped}
            good = [i for i in range(len(paths)) if i not in bad]
            vecs = np.asarray(emb, dtype=np.float16)
            for row_i, i in enumerate(good):
                blobs[to_embed[i]] = vecs[row_i].tobytes()
            for i, reason in bad.items():
                failed[to_embed[i]] = reason
            report.embedded += len(good)
        for h, items in need.items():
            for f, row_id in items:
                if h in blobs:
                    ops.append(("put", f, h, blobs[h], row_id))
                else:
                    ops.append(("skip", f, failed.get(h, "not embedded"), row_id))
        if not ops:
            return
        now = time.time()
        with transaction(conn):
            gen = bump_generation(conn)
            for op in ops:
                kind, f = op[0], op[1]
                folder = os.path.dirname(f.path)
                if kind == "touch":
                    conn.execute("UPDATE images SET size = ?, mtime_ns = ? WHERE id = ?",
                                 (f.size, f.mtime_ns, op[2]))
                elif kind == "move":
                    conn.execute("UPDATE images SET path = ?, folder = ?, size = ?, mtime_ns = ? "
                                 "WHERE id = ?", (f.path, folder, f.size, f.mtime_ns, op[2]))
                    conn.execute("DELETE FROM skipped WHERE path = ?", (f.path,))
                elif kind == "put":
                    _, _, h, blob, row_id = op
                    conn.execute(
                        "INSERT INTO images(path, folder, size, mtime_ns, hash, embedding, "
                        "indexed_at, gen) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO "
                        "UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, hash = "
                        "excluded.hash, embedding = excluded.embedding, indexed_at = "
                        "excluded.indexed_at, gen = excluded.gen",
                        (f.path, folder, f.size, f.mtime_ns, h, blob, now, gen))
                    conn.execute("DELETE FROM skipped WHERE path = ?", (f.path,))
                else:  # skip
                    _, _, reason, row_id = op
                    conn.execute("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?, ?, ?)",
                                 (f.path, reason, f.size, f.mtime_ns, now))
                    if row_id is not None:
                        conn.execute("DELETE FROM images WHERE id = ?", (row_id,))
        for op in ops:  # counted once committed
            if op[0] == "touch":
                report.unchanged += 1
            elif op[0] == "move":
                report.moved += 1
            elif op[0] == "put":
                if op[4] is None:
                    report.added += 1
                else:
                    report.updated += 1
            else:
                report.skipped += 1

    # -- in-memory copy ----------------------------------------------------------------------
    def _dim(self) -> int:
        dim = get_meta(self._conn).get("dim")
        return int(dim) if dim is not None else 0

    def _refresh(self) -> None:
        """Reload the in-memory copy when another transaction changed the database."""
        if self._gen is not None and generation(self._conn) == self._gen:
            return
        conn = self._conn
        with transaction(conn, immediate=False):  # one consistent snapshot
            gen = generation(conn)
            dim = self._dim()
            if self.approximate:
                rows = conn.execute("SELECT id, mtime_ns FROM images ORDER BY id").fetchall()
                self._ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
                self._mtimes = np.fromiter((r[1] for r in rows), np.int64, len(rows))
                self._refresh_ann(dim, gen)
            else:
                rows = conn.execute("SELECT id, mtime_ns, embedding FROM images "
                                    "ORDER BY id").fetchall()
                self._ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
                self._mtimes = np.fromiter((r[1] for r in rows), np.int64, len(rows))
                self._matrix = _unpack([r[2] for r in rows], dim)
        self._gen = gen

    def _ann_files(self) -> tuple[str, str]:
        return str(self.path) + ".usearch", str(self.path) + ".usearch.json"

    def _refresh_ann(self, dim: int, gen: int) -> None:
        if self._ann is None:
            self._ann = AnnIndex(max(dim, 1))
            self._ann_gen = -1
            self._ann_dirty = False
            bin_path, side_path = self._ann_files()
            try:
                side = json.loads(Path(side_path).read_text())
                if side.get("identity") == get_meta(self._conn).get("model_identity"):
                    self._ann.load(bin_path)
                    if len(self._ann) == side.get("count"):
                        self._ann_gen = int(side["generation"])
                    else:
                        self._ann = AnnIndex(max(dim, 1))
            except (OSError, ValueError, KeyError, RuntimeError):
                self._ann = AnnIndex(max(dim, 1))
        rows = self._conn.execute("SELECT id, embedding FROM images WHERE gen > ?",
                                  (self._ann_gen,)).fetchall()
        removed = np.setdiff1d(self._ann.keys(), self._ids) if len(self._ann) else []
        self._ann.remove(removed)
        if rows:
            keys = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            self._ann.upsert(keys, _unpack([r[1] for r in rows], dim))
        if len(rows) or len(removed):
            self._ann_dirty = True
        if self._ann_gen < 0 and len(self._ann) >= 10_000:
            self._ann_gen = gen
            self._save_ann()
        self._ann_gen = gen

    def _save_ann(self) -> None:
        """Persist the HNSW graph beside the database (rebuilt from SQLite when stale)."""
        if self._ann is None or self._ann_gen < 0:
            return
        bin_path, side_path = self._ann_files()
        tmp = f"{bin_path}.{os.getpid()}.tmp"
        self._ann.save(tmp)
        os.replace(tmp, bin_path)
        side = {"generation": self._ann_gen, "count": len(self._ann),
                "identity": get_meta(self._conn).get("model_identity")}
        Path(side_path + f".{os.getpid()}.tmp").write_text(json.dumps(side))
        os.replace(side_path + f".{os.getpid()}.tmp", side_path)
        self._ann_dirty = False

    # -- search ------------------------------------------------------------------------------
    def search(self, text: str, k: int = 10, folder: str | os.PathLike | None = None,
               modified_after=None, modified_before=None) -> list[SearchResult]:
        """The ``k`` images that best match ``text``, best first. ``folder`` keeps images under
        that folder (any depth); ``modified_after``/``modified_before`` (datetime, date or POSIX
        seconds) filter by file modification time."""
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"search text {text!r}: pass a non-empty string.")
        q = self._embedder("text").embed_texts([text])[0]
        return self.search_vector(q, k, folder, modified_after, modified_before)

    def search_image(self, image, k: int = 10, folder: str | os.PathLike | None = None,
                     modified_after=None, modified_before=None) -> list[SearchResult]:
        """The ``k`` images most similar to ``image`` (a path, bytes, a PIL image or an HxWx3
        uint8 array)."""
        q = self._embedder("image").embed_images([image])[0]
        return self.search_vector(q, k, folder, modified_after, modified_before)

    def search_vector(self, query: np.ndarray, k: int = 10,
                      folder: str | os.PathLike | None = None, modified_after=None,
                      modified_before=None) -> list[SearchResult]:
        """Search with an embedding (``(dim,)``, unit length) of the index's model."""
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k={k!r}: pass a positive int.")
        self._refresh()
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        dim = self._dim()
        if len(self._ids) == 0:
            return []
        if q.shape[0] != dim:
            raise InputError(f"query has dimension {q.shape[0]}; the index holds dim {dim}.")
        after = _to_ns(modified_after, "modified_after")
        before = _to_ns(modified_before, "modified_before")
        rows = self._filter_rows(folder, after, before)
        if rows is not None and len(rows) == 0:
            return []
        if self.approximate:
            if rows is None:
                keys, scores = self._ann.search(q, int(k))
            else:
                keys, scores = self._exact_from_db(self._ids[rows], q, int(k), dim)
        else:
            pos, scores = exact_search(self._matrix, q, int(k), rows)
            keys = self._ids[pos]
        return self._results(keys, scores)

    def _filter_rows(self, folder, after: int | None, before: int | None) -> np.ndarray | None:
        """Row positions (into the in-memory arrays) that pass the filters; None = all."""
        if folder is None and after is None and before is None:
            return None
        mask = np.ones(len(self._ids), dtype=bool)
        if folder is not None:
            lo, hi = prefix_range(os.path.abspath(os.fspath(folder)))
            ids = np.fromiter((r[0] for r in self._conn.execute(
                "SELECT id FROM images WHERE path >= ? AND path < ?", (lo, hi))), np.int64)
            fmask = np.isin(self._ids, ids, assume_unique=True)
            mask &= fmask
        if after is not None:
            mask &= self._mtimes >= after
        if before is not None:
            mask &= self._mtimes < before
        return np.nonzero(mask)[0]

    def _exact_from_db(self, ids: np.ndarray, q: np.ndarray, k: int, dim: int):
        out_ids, blobs = [], []
        for s in range(0, len(ids), 900):
            part = ids[s:s + 900].tolist()
            marks = ",".join("?" * len(part))
            for i, b in self._conn.execute(f"SELECT id, embedding FROM images WHERE id IN "
                                           f"({marks})", part):
                out_ids.append(i)
                blobs.append(b)
        if not out_ids:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        pos, scores = exact_search(_unpack(blobs, dim), q, k)
        return np.asarray(out_ids, dtype=np.int64)[pos], scores

    def _results(self, keys: np.ndarray, scores: np.ndarray) -> list[SearchResult]:
        keys = [int(x) for x in keys]
        if not keys:
            return []
        marks = ",".join("?" * len(keys))
        paths = dict(self._conn.execute(f"SELECT id, path FROM images WHERE id IN ({marks})",
                                        keys).fetchall())
        return [SearchResult(paths[i], float(s)) for i, s in zip(keys, scores) if i in paths]

    # -- the rest ----------------------------------------------------------------------------
    def duplicates(self, threshold: float = 0.95) -> list[list[str]]:
        """Groups of near-identical images (cosine >= ``threshold``, transitively), largest
        first; each group's paths sorted."""
        if not 0.0 < threshold <= 1.0:
            raise InputError(f"threshold={threshold!r}: pass a cosine similarity in (0, 1].")
        ids, matrix = self._all_embeddings()
        # identical blobs score 1 up to float32 rounding: keep them at threshold 1
        groups = duplicate_groups(matrix, min(threshold, 1.0 - 1e-5))
        if not groups:
            return []
        paths = dict(self._conn.execute("SELECT id, path FROM images").fetchall())
        return [sorted(paths[int(ids[i])] for i in g if int(ids[i]) in paths) for g in groups]

    def _all_embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.approximate:
            self._refresh()
            return self._ids, self._matrix
        with transaction(self._conn, immediate=False):
            rows = self._conn.execute("SELECT id, embedding FROM images ORDER BY id").fetchall()
            dim = self._dim()
        return (np.fromiter((r[0] for r in rows), np.int64, len(rows)),
                _unpack([r[1] for r in rows], dim))

    def export_embeddings(self, out_path: str | os.PathLike) -> list[Path]:
        """Write the embeddings with their paths for a server-side vector database.

        ``x.parquet`` (needs pyarrow): columns path, embedding (list<float32>), model identity in
        the schema metadata. Anything else: ``x.npy`` (float32 N x D) and ``x.json`` (paths,
        dim, model) side by side. Returns the files written."""
        out = Path(out_path)
        ids, matrix = self._all_embeddings()
        paths_by_id = dict(self._conn.execute("SELECT id, path FROM images").fetchall())
        paths = [paths_by_id[int(i)] for i in ids]
        meta = get_meta(self._conn)
        info = {"format": "edgeclip-embeddings", "count": len(paths), "dim": self._dim(),
                "dtype": "float32", "model_name": meta.get("model_name"),
                "model_identity": meta.get("model_identity"), "paths": paths}
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".parquet":
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError as e:
                raise EdgeClipError(f"writing {out} needs pyarrow (pip install pyarrow); or "
                                    f"export to {out.with_suffix('.npy')} (npy + json).") from e
            flat = pa.array(matrix.reshape(-1), type=pa.float32())
            col = pa.FixedSizeListArray.from_arrays(flat, info["dim"])
            table = pa.table({"path": paths, "embedding": col})
            info.pop("paths")
            table = table.replace_schema_metadata({"edgeclip": json.dumps(info)})
            pq.write_table(table, out)
            return [out]
        npy = out.with_suffix(".npy")
        side = out.with_suffix(".json")
        np.save(npy, np.ascontiguousarray(matrix, dtype=np.float32))
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
        return {"db": str(self.path), "images": n,
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


def _unpack(blobs: list[bytes], dim: int) -> np.ndarray:
    """float16 blobs -> float32 (N, dim), rows re-normalised to unit length."""
    if not blobs:
        return np.empty((0, dim), dtype=np.float32)
    m = np.frombuffer(b"".join(blobs), dtype=np.float16).reshape(len(blobs), dim)
    m = m.astype(np.float32)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    m /= norms
    return m


__all__ = ["ImageIndex", "SearchResult", "IndexReport", "default_db_path", "edgeclip_home"]
