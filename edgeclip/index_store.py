"""The SQLite store of record of an image index (WAL mode).

Tables: ``images`` (one row per indexed file: path, folder, size, mtime_ns, content hash,
float16 embedding, indexed_at, and ``gen``, the generation that last wrote the row), ``skipped``
(files that could not be embedded, with the reason) and ``meta`` (schema version, model identity,
dimension, and ``generation``, bumped by every write transaction so that readers know when to
reload). WAL lets one writer and any number of readers (other processes too) work at once;
every batch is one transaction, so ``kill -9`` loses at most the batch in flight.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from .errors import ImageIndexError

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
    gen INTEGER NOT NULL);
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


def connect(path: str | os.PathLike) -> sqlite3.Connection:
    """Open (creating when absent) an index database in WAL mode."""
    p = Path(path)
    if p.is_dir():
        raise ImageIndexError(f"{p} is a directory; pass the path of the index database file, "
                              f"e.g. {p / 'index.db'}.")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ImageIndexError(f"cannot create the folder of the index database {p}: {e}") from e
    try:
        conn = sqlite3.connect(str(p), timeout=60.0, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=60000")
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if mode.lower() != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a crash of the process (kill -9) never loses a commit; a power cut
        # may lose the last commits but never corrupts the database.
        conn.execute("PRAGMA synchronous=NORMAL")
        has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND "
                                "name='meta'").fetchone()
        if not has_meta:
            with transaction(conn):
                for stmt in _SCHEMA.strip().split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                             (SCHEMA_VERSION,))
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('generation', 0)")
        version = get_meta(conn).get("schema_version")
    except sqlite3.DatabaseError as e:
        raise ImageIndexError(f"{p} is not an edgeclip image index ({e}). Pass another --db "
                              f"path, or delete the file to start a new index.") from e
    if version != SCHEMA_VERSION:
        conn.close()
        raise ImageIndexError(f"{p} has index schema version {version!r}; this edgeclip reads "
                              f"version {SCHEMA_VERSION}. Rebuild it with `edgeclip index DIR "
                              f"--reindex --db {p}`.")
    return conn


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
        else:
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
