"""Indexing: bring the database up to date with a folder or a list of files.

New files are embedded, changed ones (size/mtime differ, then the hash differs) re-embedded,
moved or renamed ones (same bytes) re-pointed without the model, deleted ones removed.
Every ``commit_every`` files are one transaction, so ``kill -9`` loses at most that batch.

The work runs as a pipeline: a producer thread reads and hashes the files and decodes the
images that need the model (on the embedder's decoding threads) into batches, which wait in a
bounded queue (``queue_batches``, default 2) while the calling thread runs the model and
commits. Decoding of the next batches therefore overlaps inference, and at most
``queue_batches + 2`` batches of pixels exist at any time.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from ..errors import EdgeClipError, ImageIndexError
from .scan import FileStat, canonical, hash_file, scan_folder, stat_file
from .store import (WriterLock, bump_generation, disk_full_error, is_disk_full, prefix_range,
                    transaction)


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
    pipeline: dict = field(default_factory=dict, repr=False, compare=False)

    def __str__(self) -> str:
        return (f"added {self.added}, updated {self.updated}, moved {self.moved}, removed "
                f"{self.removed}, skipped {self.skipped}, unchanged {self.unchanged} in "
                f"{self.seconds:.1f} s ({self.images_per_s:.1f} images/s)")


class BoundedQueue(queue.Queue):
    """A ``queue.Queue`` of at most ``maxsize`` items that records its high-water mark."""

    def __init__(self, maxsize: int):
        if maxsize < 1:
            raise ValueError("a bounded queue needs maxsize >= 1")
        super().__init__(maxsize)
        self.peak = 0

    def _put(self, item):
        super()._put(item)
        self.peak = max(self.peak, self._qsize())


@dataclass
class _Item:
    f: FileStat
    row_id: int | None
    h: str | None = None  # content hash (None: unreadable, see ``reason``)
    reason: str | None = None  # why it cannot be read or decoded
    slot: int | None = None  # row in the batch's pixel buffer when decoded


@dataclass
class _Batch:
    items: list[_Item]
    pixels: np.ndarray | None  # (n_decoded, 3, H, W) float32, or None
    end_of_chunk: bool


class _Pixels:
    """The embedder's own decoding (the exact preprocessing ``embed_images`` applies) split from
    its inference, so the two can run in different threads. Falls back to ``embed_images`` per
    batch for an embedder-like object without those parts."""

    def __init__(self, emb, split: bool = True):
        self.emb = emb
        self.split = split and all(hasattr(emb, a) for a in (
            "_prep_task", "_get_pool", "_runner", "_run_split", "_pre", "manifest"))
        if self.split:
            self.size = tuple(emb._pre.size)
            self.input = emb.manifest.towers["image"].inputs[0].name

    def decode(self, paths: list[str]) -> tuple[np.ndarray | None, list[str | None]]:
        if not self.split or not paths:
            return None, [None] * len(paths)
        th, tw = self.size
        buf = np.empty((len(paths), 3, th, tw), dtype=np.float32)
        pool = self.emb._get_pool()
        futs = [pool.submit(self.emb._prep_task, p, buf[i]) for i, p in enumerate(paths)]
        return buf, [f.result() for f in futs]

    def embed(self, pixels: np.ndarray | None, paths: list[str]) -> tuple[np.ndarray, dict]:
        """(float32 rows of the good inputs in order, {position: reason} of the bad ones)."""
        if self.split:
            out = self.emb._run_split(self.emb._runner("image"), {self.input: pixels})
            out = np.asarray(out, dtype=np.float32)
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            np.maximum(norms, 1e-12, out=norms)
            return out / norms, {}
        emb, skipped = self.emb.embed_images(paths, batch_size=max(1, len(paths)),
                                             on_error="skip")
        return np.asarray(emb, dtype=np.float32), {s.index: s.reason for s in skipped}


class IndexingMixin:
    """The indexing half of :class:`~edgeclip.index.ImageIndex`. Expects ``self._conn``,
    ``self.path`` and ``self._embedder(tower)`` from the class it is mixed into."""

    def add_folder(self, folder: str | os.PathLike, recursive: bool = True, batch_size: int = 32,
                   commit_every: int = 256, progress: bool = True,
                   on_commit: Callable[[IndexReport], None] | None = None,
                   queue_batches: int = 2) -> IndexReport:
        """Bring the index up to date with ``folder`` (``~`` and ``$VARS`` expanded): embed new
        files, re-embed changed ones (size/mtime differ and then the hash differs), re-point
        moved or renamed ones (same bytes) without re-embedding, remove deleted ones.
        Unreadable files go to the ``skipped`` table with the reason; they are retried when
        they change. Commits every ``commit_every`` files and then calls
        ``on_commit(report_so_far)``. One folder reached through two paths (a symlink) is one
        set of images; results show the path given here."""
        self._writable("add_folder")
        with WriterLock(self.path):
            t0 = time.perf_counter()
            files = scan_folder(folder, recursive=recursive)
            root = canonical(folder)
            if recursive:
                lo, hi = prefix_range(root)
                where, args = "path >= ? AND path < ?", (lo, hi)
            else:
                where, args = "folder = ?", (root,)
            existing = {r[1]: r for r in self._conn.execute(
                f"SELECT id, path, size, mtime_ns, hash, length(embedding) FROM images "
                f"WHERE {where}", args)}
            lo, hi = prefix_range(root)
            known_bad = {r[0]: (r[1], r[2]) for r in self._conn.execute(
                "SELECT path, size, mtime_ns FROM skipped WHERE path >= ? AND path < ?",
                (lo, hi)) if recursive or os.path.dirname(r[0]) == root}
            return self._sync(files, existing, known_bad, t0, batch_size, commit_every,
                              progress, on_commit, desc=f"indexing {folder}",
                              queue_batches=queue_batches)

    def add_files(self, paths: Iterable[str | os.PathLike], batch_size: int = 32,
                  commit_every: int = 256, progress: bool = True,
                  on_commit: Callable[[IndexReport], None] | None = None,
                  queue_batches: int = 2) -> IndexReport:
        """Index (or update) these image files; nothing else in the index is removed."""
        self._writable("add_files")
        with WriterLock(self.path):
            t0 = time.perf_counter()
            files, seen = [], set()
            for p in paths:
                try:
                    f = stat_file(p)
                except OSError as e:
                    raise ImageIndexError(f"cannot index {p}: {e.strerror or e}. Pass existing "
                                          f"image files.") from e
                if f.path not in seen:
                    seen.add(f.path)
                    files.append(f)
            existing, known_bad = {}, {}
            for f in files:
                r = self._conn.execute("SELECT id, path, size, mtime_ns, hash, length(embedding) "
                                       "FROM images WHERE path = ?", (f.path,)).fetchone()
                if r:
                    existing[f.path] = r
                s = self._conn.execute("SELECT size, mtime_ns FROM skipped WHERE path = ?",
                                       (f.path,)).fetchone()
                if s:
                    known_bad[f.path] = tuple(s)
            return self._sync(files, existing, known_bad, t0, batch_size, commit_every,
                              progress, on_commit, desc="indexing", delete_missing=False,
                              queue_batches=queue_batches)

    # -- the pipeline ------------------------------------------------------------------------
    def _sync(self, files: list[FileStat], existing: dict, known_bad: dict, t0: float,
              batch_size: int, commit_every: int, progress: bool, on_commit, desc: str,
              delete_missing: bool = True, queue_batches: int = 2) -> IndexReport:
        from tqdm.auto import tqdm

        if not isinstance(commit_every, int) or commit_every < 1:
            raise EdgeClipError(f"commit_every={commit_every!r}: must be a positive int.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise EdgeClipError(f"batch_size={batch_size!r}: must be a positive int.")
        if not isinstance(queue_batches, int) or queue_batches < 1:
            raise EdgeClipError(f"queue_batches={queue_batches!r}: must be a positive int.")
        report = IndexReport()
        seen = {f.path for f in files}
        missing = {p: r for p, r in existing.items() if p not in seen}
        dim = self._dim()
        work: list[FileStat] = []
        for f in files:
            row = existing.get(f.path)
            damaged = row is not None and dim and row[5] != 2 * dim
            if row is not None and row[2] == f.size and row[3] == f.mtime_ns and not damaged:
                report.unchanged += 1
            elif row is None and known_bad.get(f.path) == (f.size, f.mtime_ns):
                report.skipped += 1  # still the same unreadable file: not retried
            else:
                work.append(f)
        emb = self._embedder("image")  # load the model, and refuse one that is not the index's
        claimed: set[int] = set()
        try:
            with tqdm(total=len(work), desc=desc, unit="img", disable=not progress,
                      dynamic_ncols=True) as bar:
                self._run_pipeline(emb, work, existing, missing, seen, claimed, report,
                                   batch_size, commit_every, queue_batches, bar, on_commit)
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
        except (sqlite3.OperationalError, OSError) as e:
            if is_disk_full(e):
                n = report.added + report.updated
                raise disk_full_error(self.path, f" (this run had indexed {n} new or changed "
                                                 f"images)") from e
            raise
        report.seconds = time.perf_counter() - t0
        report.images_per_s = report.embedded / report.seconds if report.seconds > 0 else 0.0
        return report

    def _run_pipeline(self, emb, work, existing, missing, seen, claimed, report, batch_size,
                      commit_every, queue_batches, bar, on_commit) -> None:
        px = _Pixels(emb)
        known = {r[0] for r in self._conn.execute("SELECT DISTINCT hash FROM images")}
        q = BoundedQueue(queue_batches)
        stop = threading.Event()
        alive = [0, 0]  # pixel batches alive now, most alive at once

        def count_batch(delta: int) -> None:
            with lock:
                alive[0] += delta
                alive[1] = max(alive[1], alive[0])

        lock = threading.Lock()

        def put(x) -> bool:
            while not stop.is_set():
                try:
                    q.put(x, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                local_known = set(known)
                for c0 in range(0, len(work), commit_every):
                    chunk = work[c0:c0 + commit_every]
                    for b0 in range(0, len(chunk), batch_size):
                        items: list[_Item] = []
                        decode: list[_Item] = []
                        for f in chunk[b0:b0 + batch_size]:
                            row = existing.get(f.path)
                            it = _Item(f, row[0] if row is not None else None)
                            try:
                                it.h = hash_file(f.path)
                            except OSError as e:
                                it.reason = f"cannot read the file: {e.strerror or e}"
                            items.append(it)
                            if it.h is not None and it.h not in local_known:
                                local_known.add(it.h)  # later copies reuse this embedding
                                decode.append(it)
                        pixels = None
                        if decode:
                            pixels, reasons = px.decode([it.f.path for it in decode])
                            if pixels is not None:
                                count_batch(+1)
                            n_ok = 0
                            for it, r in zip(decode, reasons):
                                if r is not None:
                                    it.reason = r
                                else:
                                    it.slot = n_ok
                                    n_ok += 1
                            if pixels is not None and n_ok < len(decode):
                                pixels = pixels[[i for i, r in enumerate(reasons) if r is None]]
                        end = b0 + batch_size >= len(chunk)
                        if not put(_Batch(items, pixels, end)):
                            return
                put(None)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                put(e)

        producer = threading.Thread(target=produce, name="edgeclip-index-producer", daemon=True)
        producer.start()
        ops: list[tuple] = []
        blobs: dict[str, bytes] = {}  # this chunk's new embeddings by hash
        failed: dict[str, str] = {}  # hash -> why its bytes cannot be embedded (this run)
        try:
            while True:
                b = q.get()
                if b is None:
                    break
                if isinstance(b, BaseException):
                    raise b
                try:
                    self._consume(b, px, emb, existing, seen, claimed, ops, blobs, failed,
                                  report)
                finally:
                    if b.pixels is not None:
                        count_batch(-1)
                    b.pixels = None
                if b.end_of_chunk:
                    n = self._commit(ops, emb, report)
                    ops, blobs = [], {}
                    bar.update(n)
                    if on_commit is not None:
                        on_commit(report)
        finally:
            stop.set()
            producer.join(timeout=60)
            report.pipeline = {"queue_limit": queue_batches, "queue_peak": q.peak,
                               "pixel_batches_peak": alive[1]}

    def _consume(self, b: _Batch, px: _Pixels, emb, existing, seen, claimed, ops, blobs,
                 failed, report) -> None:
        conn = self._conn
        dim = self._dim()
        need: list[_Item] = []
        for it in b.items:
            f = it.f
            if it.h is None:
                ops.append(("skip", f, it.reason, it.row_id))
                continue
            row = existing.get(f.path)
            if row is not None and row[4] == it.h and (not dim or row[5] == 2 * dim):
                ops.append(("touch", f, it.row_id))
                continue
            if row is None:
                src = None
                for cid, cpath in conn.execute("SELECT id, path FROM images WHERE hash = ?",
                                               (it.h,)):
                    if cid not in claimed and cpath not in seen and not os.path.exists(cpath):
                        src = cid
                        break
                if src is not None:
                    claimed.add(src)
                    ops.append(("move", f, src))
                    continue
            need.append(it)
        # run the model on the decoded images this batch needs
        decoded = [it for it in need if it.slot is not None]
        if decoded:
            pixels = b.pixels[[it.slot for it in decoded]] if b.pixels is not None else None
            vecs, bad = px.embed(pixels, [it.f.path for it in decoded])
            vecs = vecs.astype(np.float16)
            good = [i for i in range(len(decoded)) if i not in bad]
            for row_i, i in enumerate(good):
                blobs[decoded[i].h] = vecs[row_i].tobytes()
            for i, r in bad.items():
                failed[decoded[i].h] = r
            report.embedded += len(good)
            if good:
                self._pending_dim = vecs.shape[1]
        for it in need:
            if it.h in blobs:
                ops.append(("put", it.f, it.h, blobs[it.h], it.row_id))
                continue
            if it.reason is not None or it.h in failed:
                reason = it.reason or failed[it.h]
                failed.setdefault(it.h, reason)
                ops.append(("skip", it.f, reason, it.row_id))
                continue
            r = conn.execute("SELECT embedding FROM images WHERE hash = ? AND length(embedding) "
                             "= ? LIMIT 1", (it.h, 2 * dim)).fetchone()
            if r is not None:  # identical bytes already indexed: reuse their embedding
                blobs[it.h] = r[0]
                ops.append(("put", it.f, it.h, r[0], it.row_id))
                continue
            # not decoded ahead (its bytes were indexed when the run began, since removed)
            vecs, bad = _Pixels(emb, split=False).embed(None, [it.f.path])
            if bad:
                failed[it.h] = bad[0]
                ops.append(("skip", it.f, bad[0], it.row_id))
            else:
                blobs[it.h] = vecs[0].astype(np.float16).tobytes()
                report.embedded += 1
                self._pending_dim = vecs.shape[1]
                ops.append(("put", it.f, it.h, blobs[it.h], it.row_id))

    def _commit(self, ops: list[tuple], emb, report: IndexReport) -> int:
        """One transaction for a chunk's operations; returns how many files it covered."""
        if not ops:
            return 0
        conn = self._conn
        now = time.time()
        with transaction(conn):
            gen = bump_generation(conn)
            if any(op[0] == "put" for op in ops):
                # the model is recorded with its first successfully embedded batch
                self._record_model(emb, getattr(self, "_pending_dim", None) or emb.dim)
            for op in ops:
                kind, f = op[0], op[1]
                folder = os.path.dirname(f.path)
                if kind == "touch":
                    conn.execute("UPDATE images SET size = ?, mtime_ns = ? WHERE id = ?",
                                 (f.size, f.mtime_ns, op[2]))
                elif kind == "move":
                    conn.execute("UPDATE images SET path = ?, folder = ?, size = ?, mtime_ns = ?, "
                                 "display = ? WHERE id = ?",
                                 (f.path, folder, f.size, f.mtime_ns, f.display, op[2]))
                    conn.execute("DELETE FROM skipped WHERE path = ?", (f.path,))
                elif kind == "put":
                    _, _, h, blob, row_id = op
                    conn.execute(
                        "INSERT INTO images(path, folder, size, mtime_ns, hash, embedding, "
                        "indexed_at, gen, display) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON "
                        "CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = "
                        "excluded.mtime_ns, hash = excluded.hash, embedding = "
                        "excluded.embedding, indexed_at = excluded.indexed_at, gen = "
                        "excluded.gen, display = excluded.display",
                        (f.path, folder, f.size, f.mtime_ns, h, blob, now, gen, f.display))
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
        return len(ops)

