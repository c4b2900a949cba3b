"""The SQLite store of record of an image index (WAL mode).

Tables: ``images`` (one row per indexed file: path, folder, size, mtime_ns, content hash,
float16 embedding, indexed_at, and ``gen``, the generation that last wrote the row), ``skipped``
(files that could not be embedded, with the reason) and ``meta`` (schema version, model identity,
dimension, and ``generation``, bumped by every write transaction so that readers know when to
reload). WAL lets one writer and any number of readers (other processes too) work at once;
every batch is one transaction, so ``kill -9`` loses at most the batch in flight.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import tempfile
import urllib.parse
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ImageIndexError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS images(
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    folder TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash TEXT NOT NULL,
    embedding BLOB NOT NULL,
    indexed_at REAL NOT NULL,
    gen INTEGER NOT NULL,
    display TEXT);
CREATE INDEX IF NOT EXISTS images_hash ON images(hash);
CREATE INDEX IF NOT EXISTS images_folder ON images(folder);
CREATE INDEX IF NOT EXISTS images_mtime ON images(mtime_ns);
CREATE INDEX IF NOT EXISTS images_gen ON images(gen);
CREATE TABLE IF NOT EXISTS skipped(
    path TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    at REAL NOT NULL);
"""


FORMAT = "edgeclip-image-index"  # meta row 'format' of every index this edgeclip creates
_OWN_TABLES = {"meta", "images", "skipped"}


def _uri(path: Path, **params) -> str:
    q = "&".join(f"{k}={v}" for k, v in params.items())
    return f"file:{urllib.parse.quote(str(path.absolute()))}?{q}"


def _not_an_index(p: Path, why: str) -> ImageIndexError:
    return ImageIndexError(f"{p} is not an edgeclip image index ({why}); edgeclip left it "
                           f"unchanged. Pass the path of an edgeclip index, or a new file, "
                           f"with --db.")


def _inspect(conn: sqlite3.Connection, p: Path) -> str:
    """'index' (an edgeclip index), 'empty' (a database with no tables), else refuse."""
    try:
        tables = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")}
        if not tables:
            return "empty"
        if not _OWN_TABLES <= tables:
            shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
            raise _not_an_index(p, f"a SQLite database of another program, with tables {shown}")
        try:
            meta = get_meta(conn)
        except sqlite3.OperationalError as e:
            if "no such column" not in str(e):
                raise
            raise _not_an_index(p, "a SQLite database of another program: its 'meta' table "
                                   "is not edgeclip's") from e
    except sqlite3.DatabaseError as e:
        if isinstance(e, sqlite3.OperationalError) and not _is_not_a_db(e):
            raise
        raise _not_an_index(p, f"not a SQLite database: {e}") from e
    if "schema_version" not in meta or meta.get("format", FORMAT) != FORMAT:
        raise _not_an_index(p, "a SQLite database of another program: its 'meta' table has no "
                               "edgeclip schema version")
    if meta["schema_version"] != SCHEMA_VERSION:
        raise ImageIndexError(f"{p} has index schema version {meta['schema_version']!r}; this "
                              f"edgeclip reads version {SCHEMA_VERSION}. Use the edgeclip that "
                              f"wrote it, or index into a new --db path.")
    return "index"


def _is_not_a_db(e: sqlite3.Error) -> bool:
    return "not a database" in str(e) or "malformed" in str(e)


def _snapshot_copy(p: Path) -> Path:
    """A private, self-contained copy of the database with the commits of its -wal folded in,
    for read-only places where SQLite cannot create the -shm file it needs to read a -wal."""
    tmp = Path(tempfile.mkdtemp(prefix="edgeclip-ro-"))
    copy = tmp / p.name
    shutil.copyfile(p, copy)
    shutil.copyfile(str(p) + "-wal", str(copy) + "-wal")
    c = sqlite3.connect(str(copy), isolation_level=None)
    try:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        c.execute("PRAGMA journal_mode=DELETE")
    finally:
        c.close()
    return copy


def connect_readonly(path: str | os.PathLike) -> sqlite3.Connection:
    """Open an existing edgeclip index for reading only: nothing is ever written (no schema, no
    journal-mode switch, no -wal/-shm files created where they are absent). Works in read-only
    folders and on read-only file systems, including with -wal files left by a crash there.
    Anything that is not an edgeclip index is refused with :class:`ImageIndexError`."""
    p = Path(path)
    if p.is_dir():
        raise ImageIndexError(f"{p} is a directory; pass the path of the index database file, "
                              f"e.g. {p / 'index.db'}.")
    if not p.is_file():
        raise ImageIndexError(f"no image index at {p}: create one with `edgeclip index DIR "
                              f"--db {p}`.")
    _sniff(p)
    wal = Path(str(p) + "-wal")
    attempts = [_uri(p, mode="ro")]
    if wal.is_file() and wal.stat().st_size > 0:
        attempts.append("snapshot")  # recent commits live in the -wal: read them from a copy
    else:
        attempts.append(_uri(p, immutable=1))
    last: Exception | None = None
    for uri in attempts:
        snap = None
        try:
            if uri == "snapshot":
                snap = _snapshot_copy(p)
                uri = _uri(snap, immutable=1)
            conn = sqlite3.connect(uri, uri=True, timeout=60.0, isolation_level=None)
        except (sqlite3.Error, OSError) as e:
            last = e
            continue
        try:
            conn.execute("PRAGMA busy_timeout=60000")
            kind = _inspect(conn, p)
        except sqlite3.OperationalError as e:  # e.g. cannot create the -shm file here
            conn.close()
            last = e
            continue
        except BaseException:
            conn.close()
            raise
        finally:
            if snap is not None:  # the open connection keeps reading the unlinked copy
                shutil.rmtree(snap.parent, ignore_errors=True)
        if kind == "empty":
            conn.close()
            raise _not_an_index(p, "an empty SQLite database")
        return conn
    raise ImageIndexError(f"cannot read the image index {p}: {last}. Check that the file is "
                          f"readable.")


def _sniff(p: Path) -> None:
    """Refuse what is not an edgeclip index before SQLite opens it for real: a file that is not
    SQLite at all, or another program's database (inspected through an ``immutable`` URI, which
    creates no -wal/-shm files and takes no locks)."""
    with open(p, "rb") as f:
        head = f.read(16)
    if head != b"SQLite format 3\x00":
        raise _not_an_index(p, "an empty file" if not head else "not a SQLite database")
    try:
        conn = sqlite3.connect(_uri(p, immutable=1), uri=True, isolation_level=None)
    except sqlite3.Error:
        return  # the full open that follows reports it
    try:
        _inspect(conn, p)  # raises for a foreign database; 'empty' is re-checked by the caller
    except sqlite3.OperationalError:
        pass
    finally:
        conn.close()


def _writable_problem(p: Path) -> str | None:
    folder = p.parent
    if not os.access(folder, os.W_OK):
        return f"the folder {folder} is not writable"
    for f in (p, Path(str(p) + "-wal"), Path(str(p) + "-shm")):
        if f.exists() and not os.access(f, os.W_OK):
            return f"{f} is not writable"
    return None


def connect(path: str | os.PathLike) -> sqlite3.Connection:
    """Open an index database for writing (creating it when absent) in WAL mode.

    An existing file is inspected read-only first: a SQLite database of another program, or any
    other file, is refused with :class:`ImageIndexError` and left byte-identical."""
    p = Path(path)
    if p.is_dir():
        raise ImageIndexError(f"{p} is a directory; pass the path of the index database file, "
                              f"e.g. {p / 'index.db'}.")
    if p.exists() and p.stat().st_size > 0:
        connect_readonly(p).close()  # refuses anything that is not an edgeclip index
    elif p.exists() and not p.is_file():
        raise _not_an_index(p, "not a regular file")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ImageIndexError(f"cannot create the folder of the index database {p}: "
                              f"{e.strerror or e}. Pass a --db path in a writable folder.") from e
    problem = _writable_problem(p)
    if problem:
        raise _read_only_error(p, problem)
    try:
        conn = sqlite3.connect(str(p), timeout=60.0, isolation_level=None)
    except sqlite3.Error as e:
        raise _read_only_error(p, str(e)) from e
    try:
        conn.execute("PRAGMA busy_timeout=60000")
        kind = _inspect(conn, p)
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if mode.lower() != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a crash of the process (kill -9) never loses a commit; a power cut
        # may lose the last commits but never corrupts the database.
        conn.execute("PRAGMA synchronous=NORMAL")
        if kind == "empty":
            with transaction(conn):
                for stmt in _SCHEMA.strip().split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                             (SCHEMA_VERSION,))
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (FORMAT,))
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('generation', 0)")
        if "display" not in columns(conn, "images"):  # indexes written before 'display'
            with transaction(conn):
                if "display" not in columns(conn, "images"):
                    conn.execute("ALTER TABLE images ADD COLUMN display TEXT")
    except sqlite3.OperationalError as e:
        conn.close()
        if is_disk_full(e):
            raise disk_full_error(p) from e
        if "readonly" in str(e) or "unable to open" in str(e):
            raise _read_only_error(p, str(e)) from e
        raise
    except BaseException:
        conn.close()
        raise
    return conn


def _read_only_error(p: Path, problem: str) -> ImageIndexError:
    return ImageIndexError(f"cannot write the image index {p}: {problem}. `edgeclip index` "
                           f"needs a writable folder for the index (it writes {p.name}-wal and "
                           f"{p.name}-shm beside it); pass --db PATH in a writable folder. "
                           f"Searching this index works as it is (`edgeclip search`, or "
                           f"ImageIndex(path, read_only=True)).")


def is_disk_full(e: BaseException) -> bool:
    if isinstance(e, sqlite3.OperationalError):
        return "disk is full" in str(e) or getattr(e, "sqlite_errorcode", None) == 13
    return isinstance(e, OSError) and e.errno == errno.ENOSPC


def disk_full_error(p: Path, done: str = "") -> ImageIndexError:
    return ImageIndexError(f"the disk holding the image index {p} is full{done}; everything "
                           f"committed so far is kept. Free some space and run `edgeclip index` "
                           f"again to continue where it stopped.")


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


class WriterLock:
    """An exclusive ``flock`` on ``<db>.lock``: one writer (``add_folder``/``add_files``/
    ``reindex``) per database at a time. The kernel drops the lock when the holder exits, so a
    crashed writer never blocks the next one."""

    def __init__(self, db: Path):
        self.db = Path(db)
        self.path = Path(str(db) + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if is_disk_full(e):
                raise disk_full_error(self.db) from e
            raise _read_only_error(self.db, f"cannot create {self.path}: "
                                            f"{e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            except OSError:
                holder = ""
            os.close(fd)
            who = f" (process {holder})" if holder.isdigit() else ""
            raise ImageIndexError(
                f"another edgeclip process{who} is indexing into {self.db}; wait for it to "
                f"finish, or index into another --db path.") from None
        try:  # who holds it, for the message of the next one (best effort: disk may be full)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError:
            pass
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False


class transaction:
    """``with transaction(conn):`` BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""

    def __init__(self, conn: sqlite3.Connection, immediate: bool = True):
        self.conn = conn
        self.immediate = immediate

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE" if self.immediate else "BEGIN")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:  # SQLite may have rolled back already (e.g. disk full)
            self.conn.execute("ROLLBACK")
        return False


def get_meta(conn: sqlite3.Connection) -> dict:
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def set_meta(conn: sqlite3.Connection, **values) -> None:
    conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))


def generation(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
    return int(row[0]) if row else 0


def bump_generation(conn: sqlite3.Connection) -> int:
    """Inside a write transaction: the new generation number."""
    conn.execute("UPDATE meta SET value = value + 1 WHERE key='generation'")
    return generation(conn)


def prefix_range(folder: str) -> tuple[str, str]:
    """``path >= lo AND path < hi`` selects every path under ``folder`` (any depth)."""
    lo = folder.rstrip(os.sep) + os.sep
    return lo, lo[:-1] + chr(ord(os.sep) + 1)


def iter_rows(conn: sqlite3.Connection, dim: int, dtype, damaged: Callable | None = None,
              where: str = "", args=(), chunk: int = 2048, raw: bool = False):
    """Stream ``(ids, mtimes, vectors)`` chunks of the ``images`` rows (``ORDER BY id``):
    float16 blobs -> ``dtype`` rows re-normalised to unit length (``dtype=None``: no vectors;
    ``raw=True``: the stored float16 rows as they are). A blob of the wrong size or with
    non-finite values raises ``damaged(id, nbytes, expected)`` (an exception to raise),
    default :class:`ImageIndexError`."""
    width = 2 * dim
    cols = "id, mtime_ns, embedding" if dtype is not None else "id, mtime_ns"
    cur = conn.execute(f"SELECT {cols} FROM images {where} ORDER BY id", args)
    while True:
        rows = cur.fetchmany(chunk)
        if not rows:
            return
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        mtimes = np.fromiter((r[1] for r in rows), np.int64, len(rows))
        if dtype is None:
            yield ids, mtimes, None
            continue
        for r in rows:
            if not isinstance(r[2], bytes) or len(r[2]) != width:
                n = len(r[2]) if isinstance(r[2], (bytes, str)) else 0
                raise _damaged(damaged, r[0], n, width)
        half = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float16)
        half = half.reshape(len(rows), dim)
        del rows
        if raw:
            yield ids, mtimes, half
            continue
        out = np.empty((len(ids), dim), dtype=np.float32)
        normalize_into(out, half, ids, damaged)
        yield ids, mtimes, (out if dtype == np.float32 else out.astype(dtype))


def normalize_into(out: np.ndarray, half: np.ndarray, ids: np.ndarray,
                   damaged: Callable | None = None) -> None:
    """``out[:] = half / ||half||`` row by row (``out`` float32 or float16), computed in float32
    without a second full-size copy; non-finite rows raise ``damaged``."""
    if out.dtype == np.float32:
        work = out
        np.copyto(work, half)
    else:
        work = half.astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.linalg.norm(work, axis=1, keepdims=True)
    ok = np.isfinite(norms[:, 0])
    if not ok.all():
        raise _damaged(damaged, int(ids[np.argmin(ok)]), 2 * half.shape[1], 2 * half.shape[1])
    np.maximum(norms, 1e-12, out=norms)
    work /= norms
    if work is not out:
        np.copyto(out, work)


def _damaged(damaged, row_id: int, nbytes: int, expected: int) -> Exception:
    if damaged is not None:
        return damaged(row_id, nbytes, expected)
    return ImageIndexError(f"the stored embedding of row {row_id} is damaged")


def load_matrix(conn: sqlite3.Connection, dim: int, dtype, damaged: Callable | None = None,
                chunk: int = 2048):
    """``(ids, mtimes, matrix)`` of every image row, streamed into ONE preallocated
    ``(N, dim)`` matrix of ``dtype`` (``None``: no matrix): peak memory is the matrix plus one
    chunk, not the rows, their blobs and two copies. Call inside a read transaction."""
    n = conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    ids = np.empty(n, dtype=np.int64)
    mtimes = np.empty(n, dtype=np.int64)
    matrix = np.empty((n, dim), dtype=dtype) if dtype is not None else None
    i = 0
    for part_ids, part_mt, half in iter_rows(conn, dim, dtype, damaged, chunk=chunk,
                                             raw=True):
        j = i + len(part_ids)
        if j > n:
            break
        ids[i:j] = part_ids
        mtimes[i:j] = part_mt
        if matrix is not None:
            normalize_into(matrix[i:j], half, part_ids, damaged)  # straight into its rows
        i = j
    if i != n:  # the count and the rows come from one snapshot: cannot differ
        raise ImageIndexError(f"the index changed while it was read ({n} rows counted, {i} "
                              f"read); search again.")
    return ids, mtimes, matrix
