"""The index where things go wrong, met the way a user meets them: another program's SQLite
file, read-only places, one folder reached by two paths, a full disk, a damaged row, two
`edgeclip index` runs at once. Each CLI case checks the exact one-line `error:` output and exit
code 1 (through `run_main`, the CLI entry point) and that no stored byte changed (hashes of every
file before and after)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeclip.cli import cli, run_main
from edgeclip.errors import ImageIndexError
from edgeclip.index import ImageIndex
from edgeclip.index.store import WriterLock
from test_index import REPO, draw_image, make_gallery, start_writer, wait_for


def hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``: the stored data, byte for byte."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_unchanged(before: dict[str, str], after: dict[str, str]) -> None:
    """Every stored file is byte-identical. The only files that may appear are the empty -wal
    and the -shm (shared-memory index) that SQLite gives any reader of a WAL database."""
    assert {f: after.get(f) for f in before} == before
    for new in set(after) - set(before):
        assert new.endswith(("-wal", "-shm")), new
        if new.endswith("-wal"):
            assert after[new] == hashlib.sha256(b"").hexdigest()


def cli_ok(capsys, args) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(cli, args)
    out, err = capsys.readouterr()
    assert e.value.code == 0, (out, err)
    return out


def cli_error(capsys, args) -> str:
    """Run the CLI; it must print exactly one line `error: ...` and exit 1. Returns the line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(cli, args)
    out, err = capsys.readouterr()
    lines = (out + err).strip().splitlines()
    assert e.value.code == 1, (out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (out, err)
    assert "delete" not in lines[0].lower(), lines[0]  # never advise deleting a user's data
    return lines[0]


@contextlib.contextmanager
def read_only_folder(path: Path):
    """Make ``path`` read-only for this process. Running as root (permission bits do not apply
    to root), a read-only bind mount of the folder onto itself; as another user, chmod 555.
    Skips when neither can be done here."""
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        try:
            yield
        finally:
            os.chmod(path, 0o755)
        return
    ok = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True)
    if ok.returncode != 0:
        pytest.skip(f"root without mount privileges: cannot make a read-only folder "
                    f"({ok.stderr.decode().strip()})")
    try:
        r = subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot remount read-only: {r.stderr.decode().strip()}")
        with pytest.raises(OSError):
            (path / ".probe").write_text("x")
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


def status(capsys, db: Path) -> dict[str, str]:
    out = cli_ok(capsys, ["index", "--status", "--db", str(db)])
    return dict(line.split(None, 1) for line in out.splitlines())


def build_index(tmp_path: Path, bundle: Path, n: int = 6) -> tuple[Path, Path, list[Path]]:
    photos = tmp_path / "photos"
    gallery = make_gallery(photos, n)
    db = tmp_path / "store" / "index.db"
    with ImageIndex(db, model=bundle) as ix:
        ix.add_folder(photos, progress=False)
    return photos, db, gallery


# -- issue 15.4: another program's database ----------------------------------------------------
def test_foreign_sqlite_database_is_refused_and_left_byte_identical(tmp_path, capsys,
                                                                     tiny_bundle):
    photos = tmp_path / "photos"
    make_gallery(photos, 2)
    store = tmp_path / "store"
    store.mkdir()
    foreign = store / "app.db"
    with sqlite3.connect(foreign) as c:  # rollback journal, like most programs' databases
        c.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, text TEXT)")
        c.execute("CREATE TABLE meta(key TEXT, value)")  # even one with a 'meta' table
        c.execute("INSERT INTO notes(text) VALUES ('keep me')")
    c.close()
    wal_db = store / "wal_app.db"
    c = sqlite3.connect(wal_db)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE photos(x)")
    c.commit()
    c.close()
    lookalike = store / "lookalike.db"  # edgeclip's table names, another program's columns
    with sqlite3.connect(lookalike) as c:
        c.execute("CREATE TABLE meta(a, b)")
        c.execute("CREATE TABLE images(x)")
        c.execute("CREATE TABLE skipped(y)")
    c.close()
    before = hashes(store)
    for db in (foreign, wal_db, lookalike):
        for args in (["search", "a cat", "--db", str(db)],
                     ["index", "--status", "--db", str(db)],
                     ["index", str(photos), "--db", str(db), "--model", str(tiny_bundle), "-q"],
                     ["index", "--export", str(tmp_path / "x.npz"), "--db", str(db)]):
            line = cli_error(capsys, args)
            assert f"{db} is not an edgeclip image index" in line
            assert "another program" in line and "unchanged" in line
        for kw in ({}, {"read_only": True}):
            with pytest.raises(ImageIndexError, match="not an edgeclip image index"):
                ImageIndex(db, model=tiny_bundle, **kw)
    assert hashes(store) == before  # byte-identical, and no -wal/-shm or lock files appeared
    assert not (tmp_path / "x.npz").exists()


# -- issue 15.4: search and --status never write ------------------------------------------------
def test_search_and_status_never_write_the_index(tmp_path, capsys, tiny_bundle):
    photos, db, gallery = build_index(tmp_path, tiny_bundle)
    before = hashes(db.parent)
    out = cli_ok(capsys, ["search", "--image", str(gallery[1]), "--db", str(db), "-k", "2"])
    assert out.splitlines()[1].split()[-1] == str(gallery[1])
    assert "images" in cli_ok(capsys, ["index", "--status", "--db", str(db)])
    assert_unchanged(before, hashes(db.parent))


# -- issue 15.5: read-only places ---------------------------------------------------------------
def test_read_only_folder_search_works_and_index_says_not_writable(tmp_path, capsys,
                                                                   tiny_bundle):
    """Read-only folder: a read-only bind mount when running as root, chmod 555 otherwise."""
    photos, db, gallery = build_index(tmp_path, tiny_bundle)
    draw_image(photos / "new.jpg", seed=123)
    before = hashes(db.parent)
    with read_only_folder(db.parent):
        out = cli_ok(capsys, ["search", "--image", str(gallery[2]), "--db", str(db), "--json"])
        assert str(gallery[2]) in out
        with ImageIndex(db, read_only=True) as ix:
            assert len(ix) == 6 and ix.search_image(gallery[3], k=1)[0].path == str(gallery[3])
        line = cli_error(capsys, ["index", str(photos), "--db", str(db), "--model",
                                  str(tiny_bundle), "-q"])
        assert line == (f"error: cannot write the image index {db}: the folder {db.parent} is "
                        f"not writable. `edgeclip index` needs a writable folder for the index "
                        f"(it writes index.db-wal and index.db-shm beside it); pass --db PATH in "
                        f"a writable folder. Searching this index works as it is (`edgeclip "
                        f"search`, or ImageIndex(path, read_only=True)).")
        with pytest.raises(ImageIndexError, match="not writable"):
            ImageIndex(db, model=tiny_bundle)
    assert hashes(db.parent) == before


def _crashed_writer(db: Path, folder: Path, bundle: Path) -> None:
    """Index ``folder`` into ``db`` in another process that dies (os._exit) before closing the
    database: the -wal (with the commits, never checkpointed) and -shm files stay behind."""
    code = ("import os, sys\nfrom edgeclip.index import ImageIndex\n"
            "ix = ImageIndex(sys.argv[1], model=sys.argv[3])\n"
            "ix._conn.execute('PRAGMA wal_autocheckpoint=0')\n"
            "ix.add_folder(sys.argv[2], progress=False, commit_every=2, batch_size=2)\n"
            "os._exit(0)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", code, str(db), str(folder), str(bundle)], check=True,
                   env=env, timeout=300)


@pytest.mark.parametrize("with_shm", [True, False])
def test_leftover_wal_in_read_only_folder_is_read(tmp_path, capsys, tiny_bundle, with_shm):
    """A crash left -wal (and -shm) files; the folder is read-only (bind mount as root, chmod
    otherwise). Search sees every committed image, and nothing is written."""
    photos = tmp_path / "photos"
    gallery = make_gallery(photos, 5)
    db = tmp_path / "store" / "index.db"
    db.parent.mkdir()
    _crashed_writer(db, photos, tiny_bundle)
    wal = Path(str(db) + "-wal")
    assert wal.stat().st_size > 0
    if not with_shm:
        os.remove(str(db) + "-shm")
    before = hashes(db.parent)
    with read_only_folder(db.parent):
        out = cli_ok(capsys, ["search", "a photo", "--db", str(db), "-k", "50", "--json"])
        assert sorted(h["path"] for h in json.loads(out)) == sorted(map(str, gallery))
        assert status(capsys, db)["images"] == "5"
    assert hashes(db.parent) == before


# -- issue 15.6: one folder, two paths ----------------------------------------------------------
def test_one_folder_through_two_paths_is_indexed_once(tmp_path, capsys, tiny_bundle):
    real = tmp_path / "data" / "photos"
    gallery = make_gallery(real, 5)
    alias = tmp_path / "Pictures"
    alias.symlink_to(real, target_is_directory=True)
    outside = draw_image(tmp_path / "elsewhere" / "outside.jpg", seed=50)
    (real / "link_out.jpg").symlink_to(outside)  # points outside the folder: not followed
    (real / "link_in.jpg").symlink_to(gallery[1])  # points inside: the same file, once
    (real / "linked_dir").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    db = tmp_path / "i.db"
    cli_ok(capsys, ["index", str(alias), "--db", str(db), "--model", str(tiny_bundle), "-q"])
    with ImageIndex(db, read_only=True) as ix:
        assert len(ix) == 5
        shown = {r.path for r in ix.search("a photo", k=50)}
    # displayed as the user gave it; stored once, canonically
    assert shown == {str(alias / p.relative_to(real)) for p in gallery}
    with sqlite3.connect(db) as c:
        assert {r[0] for r in c.execute("SELECT path FROM images")} == \
            {os.path.realpath(p) for p in gallery}
    r = ImageIndex(db, model=tiny_bundle).add_folder(real, progress=False)
    assert (r.added, r.embedded, r.removed, r.unchanged) == (0, 0, 0, 5)
    out = cli_ok(capsys, ["search", "a photo", "--db", str(db), "-k", "50", "--folder",
                          str(alias / "trip"), "--json"])
    assert {h["path"] for h in json.loads(out)} == \
        {str(alias / p.relative_to(real)) for p in gallery if p.parent.name == "trip"}


# -- issue 15.7: a full disk, a damaged row -----------------------------------------------------
def rows(db: Path) -> dict:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return {r[0]: r[1:] for r in c.execute("SELECT path, hash, embedding FROM images")}


def test_disk_full_while_indexing_is_one_error_and_keeps_the_data(tmp_path, tiny_bundle):
    """Disk full simulated with SQLite's max_page_count on the index's own connection: SQLite
    itself raises SQLITE_FULL ('database or disk is full') at the real commit."""
    photos, db, gallery = build_index(tmp_path, tiny_bundle, n=4)
    before = rows(db)
    make_gallery(photos / "more", 40, seed0=100)
    ix = ImageIndex(db, model=tiny_bundle)
    pages = ix._conn.execute("PRAGMA page_count").fetchone()[0]
    ix._conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(ImageIndexError) as e:
        ix.add_folder(photos, progress=False, commit_every=8, batch_size=4)
    ix.close()
    assert str(e.value).startswith(f"the disk holding the image index {db} is full")
    assert "run `edgeclip index` again" in str(e.value)
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    after = rows(db)
    assert {p: after[p] for p in before} == before  # nothing stored was lost or changed
    committed = len(after) - len(before)  # whole transactions before the disk filled up
    assert committed % 8 == 0 and committed < 40
    with ImageIndex(db, model=tiny_bundle) as ix:  # room again: it resumes
        assert ix.add_folder(photos, progress=False).added == 40 - committed


def test_disk_full_on_a_real_small_file_system_cli(tmp_path, capsys, tiny_bundle):
    """A real full disk: the index on a 600 KiB tmpfs (needs root with mount; skipped else)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        photos = tmp_path / "photos"
        make_gallery(photos, 3)
        db = disk / "index.db"
        cli_ok(capsys, ["index", str(photos), "--db", str(db), "--model", str(tiny_bundle),
                        "-q"])
        with ImageIndex(db, read_only=True) as ix:
            assert len(ix) == 3
        before = rows(db)
        with contextlib.suppress(OSError), open(disk / "filler", "wb", buffering=0) as f:
            while True:  # fill the disk to the last byte
                f.write(b"\0" * 4096)
        make_gallery(photos / "more", 200, seed0=300)
        line = cli_error(capsys, ["index", str(photos), "--db", str(db), "--model",
                                  str(tiny_bundle), "-q", "--commit-every", "16"])
        assert line.startswith(f"error: the disk holding the image index {db} is full")
        os.remove(disk / "filler")
        with sqlite3.connect(db) as c:
            assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        after = rows(db)
        assert {p: after[p] for p in before} == before
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_damaged_embedding_row_is_one_error_and_reindex_repairs_it(tmp_path, capsys,
                                                                   tiny_bundle):
    photos, db, gallery = build_index(tmp_path, tiny_bundle, n=4)
    with sqlite3.connect(db) as c:
        c.execute("UPDATE images SET embedding = substr(embedding, 1, 7) WHERE path = ?",
                  (str(gallery[2]),))
    c.close()
    before = hashes(db.parent)
    line = cli_error(capsys, ["search", "a photo", "--db", str(db)])
    assert f"the stored embedding of {gallery[2]} in {db} is damaged (7 bytes" in line
    assert f"edgeclip index {gallery[2].parent} --db {db}" in line
    with ImageIndex(db, read_only=True) as ix, pytest.raises(ImageIndexError, match="damaged"):
        ix.search_image(gallery[0])
    assert_unchanged(before, hashes(db.parent))
    out = cli_ok(capsys, ["index", str(photos), "--db", str(db), "-q"])
    assert "updated 1" in out
    with ImageIndex(db, read_only=True) as ix:
        assert ix.search_image(gallery[2], k=1)[0].path == str(gallery[2])
    # non-finite values (right length): damaged too
    with sqlite3.connect(db) as c:
        dim = int(c.execute("SELECT value FROM meta WHERE key='dim'").fetchone()[0])
        nan = np.full(dim, np.nan, dtype=np.float16).tobytes()
        c.execute("UPDATE images SET embedding = ? WHERE path = ?", (nan, str(gallery[1])))
    c.close()
    assert "non-finite values" in cli_error(capsys, ["search", "a photo", "--db", str(db)])


# -- issue 15.9: two writers --------------------------------------------------------------------
def test_second_index_run_is_refused_while_one_runs_and_a_crash_frees_it(tmp_path, capsys,
                                                                         tiny_bundle):
    photos = tmp_path / "photos"
    make_gallery(photos, 24)
    db = tmp_path / "index.db"
    proc, progress = start_writer(tmp_path, db, photos, tiny_bundle, pause=0.3)
    try:
        wait_for(progress, proc, at_least=4)
        before = rows(db)
        line = cli_error(capsys, ["index", str(photos), "--db", str(db), "-q"])
        assert line == (f"error: another edgeclip process (process {proc.pid}) is indexing into "
                        f"{db}; wait for it to finish, or index into another --db path.")
        with pytest.raises(ImageIndexError, match="another edgeclip process"):
            ImageIndex(db).add_folder(photos, progress=False)
        assert set(before) <= set(rows(db))  # the refused runs changed nothing
        os.kill(proc.pid, signal.SIGKILL)  # a crashed holder: the kernel drops its lock
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = cli_ok(capsys, ["index", str(photos), "--db", str(db), "-q"])
    assert "added" in out
    with ImageIndex(db, read_only=True) as ix:
        assert len(ix) == 24


def test_writer_lock_is_exclusive_and_released(tmp_path):
    db = tmp_path / "i.db"
    with WriterLock(db):
        with pytest.raises(ImageIndexError, match=f"process {os.getpid()}"):
            WriterLock(db).acquire()
    with WriterLock(db):  # released on exit
        pass


# -- issue 15.2 (index part): the model is recorded with its first good batch -------------------
def test_model_identity_recorded_only_after_a_successful_batch(tmp_path, tiny_bundle):
    from tiny_model import build_tiny_bundle
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    db = tmp_path / "i.db"
    with ImageIndex(db, model=tiny_bundle) as ix:
        r = ix.add_folder(photos, progress=False)
        assert (r.added, r.skipped) == (0, 1)
        assert ix.meta.get("model_identity") is None and ix.meta.get("dim") is None
    other = build_tiny_bundle(tmp_path / "other", seed=1)
    make_gallery(photos, 2)
    with ImageIndex(db, model=other) as ix:  # no model recorded yet: not refused
        r = ix.add_folder(photos, progress=False)
        assert r.added == 2
        vec_bytes = len(sqlite3.connect(db).execute("SELECT embedding FROM images").fetchone()[0])
        assert ix.meta["model_identity"] and int(ix.meta["dim"]) * 2 == vec_bytes


# -- issue 16.4: ~ and $VARS in index paths -----------------------------------------------------
def test_tilde_and_env_vars_in_index_paths(tmp_path, capsys, monkeypatch, tiny_bundle):
    home = tmp_path / "home"
    gallery = make_gallery(home / "Pictures", 3)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PHOTO_DIR", str(home / "Pictures"))
    monkeypatch.chdir(work)
    with ImageIndex("~/x.db", model=tiny_bundle) as ix:
        assert ix.path == home / "x.db"
        assert ix.add_folder("~/Pictures", progress=False).added == 3
        assert ix.add_folder("$PHOTO_DIR", progress=False).unchanged == 3
        assert {r.path for r in ix.search("a photo", k=9, folder="~/Pictures")} == \
            {str(p) for p in gallery}
    assert (home / "x.db").is_file() and not (work / "~").exists()
    out = cli_ok(capsys, ["index", "~/Pictures", "--db", "~/cli.db", "--model", str(tiny_bundle),
                          "-q"])
    assert f"{home / 'cli.db'}: added 3" in out
    out = cli_ok(capsys, ["search", "a photo", "--db", "$HOME/cli.db", "--json"])
    assert str(home / "Pictures") in out
    assert not (work / "~").exists() and not (work / "$HOME").exists()
    monkeypatch.setenv("EDGECLIP_HOME", "~/store")
    from edgeclip.index import default_db_path
    assert default_db_path() == home / "store" / "index.db"


# -- issue 16.2: export --------------------------------------------------------------------------
def _exported_matches(ix: ImageIndex, paths, vecs, gallery):
    assert sorted(paths) == sorted(map(str, gallery))
    assert vecs.dtype == np.float32 and vecs.shape == (len(gallery), int(ix.meta["dim"]))
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    for p, v in zip(paths, vecs):
        hit = ix.search_vector(v, k=1)[0]
        assert hit.path == p and hit.score == pytest.approx(1.0, abs=1e-5)


def test_export_npz_round_trip_cli(tmp_path, capsys, tiny_bundle):
    photos, db, gallery = build_index(tmp_path, tiny_bundle, n=5)
    before = hashes(db.parent)
    out = cli_ok(capsys, ["index", "--export", str(tmp_path / "out" / "emb.npz"), "--db",
                          str(db)])
    assert out.strip() == f"wrote 5 vectors to {tmp_path / 'out' / 'emb.npz'}"
    z = np.load(tmp_path / "out" / "emb.npz", allow_pickle=False)
    with ImageIndex(db, read_only=True) as ix:
        assert str(z["model_identity"]) == ix.meta["model_identity"]
        assert str(z["model_name"]) == "tiny-test" and int(z["dim"]) == int(ix.meta["dim"])
        _exported_matches(ix, [str(p) for p in z["paths"]], z["embeddings"], gallery)
    assert hashes(db.parent)[db.name] == before[db.name]


def test_export_parquet_round_trip_or_names_the_extra(tmp_path, capsys, tiny_bundle):
    import importlib.util
    photos, db, gallery = build_index(tmp_path, tiny_bundle, n=4)
    target = tmp_path / "emb.parquet"
    if importlib.util.find_spec("pyarrow") is None:
        line = cli_error(capsys, ["index", "--export", str(target), "--db", str(db)])
        assert "pip install 'edgeclip[parquet]'" in line
        assert not target.exists()
        pytest.skip("pyarrow not installed: checked the error that names the extra")
    import pyarrow.parquet as pq
    cli_ok(capsys, ["index", "--export", str(target), "--db", str(db)])
    table = pq.read_table(target)
    info = json.loads(table.schema.metadata[b"edgeclip"])
    vecs = np.asarray(table.column("embedding").combine_chunks().flatten(),
                      dtype=np.float32).reshape(len(table), -1)
    with ImageIndex(db, read_only=True) as ix:
        assert info["model_identity"] == ix.meta["model_identity"]
        _exported_matches(ix, table.column("path").to_pylist(), vecs, gallery)
