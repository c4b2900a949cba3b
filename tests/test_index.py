"""ImageIndex on real SQLite files and real JPEG/PNG files, with the tiny exported bundle."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from edgeclip.errors import ImageIndexError, InputError
from edgeclip.index import ImageIndex, SearchResult
from edgeclip.index.scan import hash_file
from edgeclip.index.search import AnnIndex, duplicate_groups, exact_search

REPO = Path(__file__).resolve().parents[1]


def draw_image(path: Path, seed: int, size=(64, 48)) -> Path:
    """A real JPEG/PNG with content that differs per seed."""
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.randrange(size[0]), rng.randrange(size[1])
        box = [x0, y0, x0 + rng.randrange(5, 40), y0 + rng.randrange(5, 30)]
        fill = tuple(rng.randrange(256) for _ in range(3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=fill)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=92) if path.suffix.lower() in (".jpg", ".jpeg") else img.save(path)
    return path


def make_gallery(root: Path, n: int, seed0: int = 0) -> list[Path]:
    out = []
    for i in range(n):
        sub = root if i % 3 else root / "trip"
        ext = ".png" if i % 5 == 0 else ".jpg"
        out.append(draw_image(sub / f"img_{i:03d}{ext.upper() if i % 7 == 0 else ext}",
                              seed0 + i))
    return out


def rows(db: Path) -> dict[str, tuple]:
    with sqlite3.connect(db) as c:
        return {r[0]: r[1:] for r in c.execute("SELECT path, id, hash, embedding FROM images")}


def test_index_search_and_incremental_updates(tmp_path, tiny_bundle):
    gallery = make_gallery(tmp_path / "photos", 12)
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    db = tmp_path / "index.db"
    with ImageIndex(db, model=tiny_bundle) as ix:
        r = ix.add_folder(tmp_path / "photos", batch_size=4, commit_every=5, progress=False)
        assert (r.added, r.embedded, r.skipped, r.removed) == (12, 12, 0, 0)
        assert r.images_per_s > 0
        assert len(ix) == 12
        with sqlite3.connect(db) as c:
            assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            h, blob = c.execute("SELECT hash, embedding FROM images WHERE path = ?",
                                (str(gallery[1]),)).fetchone()
        assert h == hash_file(str(gallery[1]))
        assert len(blob) == 2 * ix.status()["dim"]

        # by example: the image itself comes first, scores sorted
        res = ix.search_image(gallery[4], k=5)
        assert isinstance(res[0], SearchResult)
        assert res[0].path == str(gallery[4]) and res[0].score == pytest.approx(1.0, abs=1e-3)
        assert [x.score for x in res] == sorted((x.score for x in res), reverse=True)
        assert len(ix.search("a red ball on the grass", k=20)) == 12

        # filters: folder prefix and modification time
        trip = {str(p) for p in gallery if p.parent.name == "trip"}
        got = ix.search("a photo", k=50, folder=tmp_path / "photos" / "trip")
        assert {x.path for x in got} == trip
        old = gallery[2]
        os.utime(old, ns=(1_000_000_000 * 10**9, 1_000_000_000 * 10**9))  # 2001
        ix.add_folder(tmp_path / "photos", progress=False)  # mtime changed, bytes did not
        got = ix.search("a photo", k=50, modified_before=1_100_000_000)
        assert [x.path for x in got] == [str(old)]
        assert str(old) not in {x.path for x in ix.search("a photo", k=50,
                                                         modified_after=1_100_000_000)}

        before = rows(db)
        r = ix.add_folder(tmp_path / "photos", progress=False)
        assert (r.unchanged, r.embedded, r.added) == (12, 0, 0)

        # rename + move into another folder, delete, modify, touch, copy
        moved_to = tmp_path / "photos" / "trip" / "renamed.jpg"
        os.rename(gallery[1], moved_to)
        os.remove(gallery[2])
        draw_image(gallery[5], seed=999)  # new content, same name
        st = gallery[7].stat()
        os.utime(gallery[7], ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
        shutil.copy(gallery[8], tmp_path / "photos" / "copy_of_8.jpg")
        r = ix.add_folder(tmp_path / "photos", progress=False)
        assert (r.moved, r.removed, r.updated, r.added, r.embedded) == (1, 1, 1, 1, 1)
        assert r.unchanged == 9
        after = rows(db)
        assert str(gallery[1]) not in after and str(gallery[2]) not in after
        assert after[str(moved_to)][0] == before[str(gallery[1])][0]  # same row, re-pointed
        assert after[str(moved_to)][2] == before[str(gallery[1])][2]  # embedding kept
        assert after[str(gallery[5])][2] != before[str(gallery[5])][2]  # re-embedded
        assert after[str(tmp_path / "photos" / "copy_of_8.jpg")][2] == before[str(gallery[8])][2]
        assert ix.search_image(moved_to, k=1)[0].path in (str(moved_to),)

        # duplicates: the byte-identical copy pairs up with its original
        dups = ix.duplicates(threshold=1.0)
        assert sorted([str(gallery[8]), str(tmp_path / "photos" / "copy_of_8.jpg")]) in dups

        # non-recursive run only sees the top folder and leaves trip/ alone
        r = ix.add_folder(tmp_path / "photos", recursive=False, progress=False)
        assert r.removed == 0 and len(ix) == 12


def test_corrupt_files_are_skipped_and_recorded(tmp_path, tiny_bundle):
    photos = tmp_path / "photos"
    good = make_gallery(photos, 4)
    (photos / "random.jpg").write_bytes(os.urandom(2000))
    (photos / "empty.png").write_bytes(b"")
    (photos / "truncated.jpg").write_bytes(good[1].read_bytes()[:200])
    with ImageIndex(tmp_path / "i.db", model=tiny_bundle) as ix:
        r = ix.add_folder(photos, batch_size=2, commit_every=3, progress=False)
        assert (r.added, r.skipped) == (4, 3)
        skipped = dict(ix.skipped())
        assert set(skipped) == {str(photos / n) for n in ("random.jpg", "empty.png",
                                                          "truncated.jpg")}
        assert all(reason for reason in skipped.values())
        assert "zero-byte" in skipped[str(photos / "empty.png")]
        # unchanged bad files are not retried; a fixed one is indexed and leaves `skipped`
        r = ix.add_folder(photos, progress=False)
        assert (r.skipped, r.embedded, r.unchanged) == (3, 0, 4)
        draw_image(photos / "random.jpg", seed=77)
        r = ix.add_folder(photos, progress=False)
        assert (r.added, r.skipped, r.embedded) == (1, 2, 1)
        assert str(photos / "random.jpg") not in dict(ix.skipped())
        os.remove(photos / "empty.png")
        ix.add_folder(photos, progress=False)
        assert set(dict(ix.skipped())) == {str(photos / "truncated.jpg")}


WRITER = textwrap.dedent("""
    import os, sys, time
    from edgeclip.index import ImageIndex
    db, folder, bundle, progress, pause = sys.argv[1:6]
    ix = ImageIndex(db, model=bundle)
    def on_commit(report):
        tmp = progress + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(report.added))
        os.replace(tmp, progress)
        time.sleep(float(pause))
    ix.add_folder(folder, batch_size=4, commit_every=4, progress=False, on_commit=on_commit)
    open(progress + ".done", "w").write("1")
""")


def start_writer(tmp_path, db, folder, bundle, pause):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    progress = tmp_path / "progress"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), str(db), str(folder), str(bundle),
                             str(progress), str(pause)], env=env)
    return proc, progress


def wait_for(progress: Path, proc, at_least: int, timeout: float = 120.0) -> int:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if progress.exists():
            n = int(progress.read_text() or 0)
            if n >= at_least:
                return n
        if proc.poll() is not None:
            pytest.fail(f"writer exited (rc {proc.returncode}) before committing {at_least}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail("writer made no progress")


@pytest.mark.slow
def test_kill9_leaves_a_consistent_index_and_resumes(tmp_path, tiny_bundle):
    photos = tmp_path / "photos"
    make_gallery(photos, 40)
    db = tmp_path / "index.db"
    proc, progress = start_writer(tmp_path, db, photos, tiny_bundle, pause=0.05)
    wait_for(progress, proc, at_least=4)
    time.sleep(random.uniform(0.0, 0.06))  # land anywhere: embedding, committing, sleeping
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not Path(str(progress) + ".done").exists(), "the writer finished before the kill"
    reported = int(progress.read_text())

    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        got = c.execute("SELECT path, hash, length(embedding) FROM images").fetchall()
    n = len(got)
    # whole batches only: what the writer reported, or one more batch committed just before
    assert n % 4 == 0 and n in (reported, reported + 4) and 0 < n < 40
    assert all(h == hash_file(p) for p, h, _ in got)
    assert len({length for _, _, length in got}) == 1

    with ImageIndex(db, model=tiny_bundle) as ix:
        r = ix.add_folder(photos, progress=False)
        assert (r.unchanged, r.added, r.embedded) == (n, 40 - n, 40 - n)
        assert len(ix) == 40


@pytest.mark.slow
def test_reader_searches_while_a_writer_indexes(tmp_path, tiny_bundle):
    photos = tmp_path / "photos"
    make_gallery(photos, 32)
    db = tmp_path / "index.db"
    proc, progress = start_writer(tmp_path, db, photos, tiny_bundle, pause=0.15)
    wait_for(progress, proc, at_least=4)
    seen = []
    with ImageIndex(db, model=tiny_bundle) as reader:
        while proc.poll() is None:
            seen.append(len(reader.search("a photo", k=100)))
            time.sleep(0.02)
        assert proc.wait() == 0
        seen.append(len(reader.search("a photo", k=100)))
    assert seen == sorted(seen)  # counts only grow
    assert len({s for s in seen if 0 < s < 32}) >= 2, seen  # saw the writer's progress live
    assert seen[-1] == 32


def test_another_model_is_refused_until_reindex(tmp_path, tiny_bundle):
    from tiny_model import build_tiny_bundle
    other = build_tiny_bundle(tmp_path / "other", seed=1)
    photos = tmp_path / "photos"
    make_gallery(photos, 3)
    db = tmp_path / "index.db"
    with ImageIndex(db, model=tiny_bundle) as ix:
        ix.add_folder(photos, progress=False)
    with pytest.raises(ImageIndexError, match="reindex") as e:
        with ImageIndex(db, model=other) as ix:
            ix.add_folder(photos, progress=False)
    assert "tiny-test" in str(e.value) and str(db) in str(e.value)
    with pytest.raises(ImageIndexError, match="--reindex"):
        ImageIndex(db, model=other).search("a photo")
    with ImageIndex(db, model=other, reindex=True) as ix:
        r = ix.add_folder(photos, progress=False)
        assert (r.added, r.embedded) == (3, 3)
    # searching without naming a model uses the bundle that built the index
    with ImageIndex(db) as ix:
        assert len(ix.search("a photo", k=5)) == 3


def test_bad_arguments_raise_clear_errors(tmp_path, tiny_bundle):
    with pytest.raises(ImageIndexError, match="is a directory"):
        ImageIndex(tmp_path)
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ImageIndexError, match="not an edgeclip image index"):
        ImageIndex(tmp_path / "junk.db")
    with ImageIndex(tmp_path / "i.db", model=tiny_bundle) as ix:
        with pytest.raises(ImageIndexError, match="does not exist"):
            ix.add_folder(tmp_path / "nope")
        with pytest.raises(InputError, match="k=0"):
            ix.search_vector(np.zeros(16, np.float32), k=0)
        with pytest.raises(InputError):
            ix.search("")
        assert ix.search("a photo") == []  # empty index


def test_export_embeddings_npy_json(tmp_path, tiny_bundle):
    photos = tmp_path / "photos"
    gallery = make_gallery(photos, 5)
    with ImageIndex(tmp_path / "i.db", model=tiny_bundle) as ix:
        ix.add_folder(photos, progress=False)
        files = ix.export_embeddings(tmp_path / "out" / "emb")
        assert [f.name for f in files] == ["emb.npy", "emb.json"]
        m = np.load(files[0])
        info = json.loads(files[1].read_text())
        assert m.shape == (5, info["dim"]) and m.dtype == np.float32
        assert sorted(info["paths"]) == sorted(map(str, gallery))
        assert info["model_identity"] == ix.status()["model_identity"]
        i = info["paths"].index(str(gallery[3]))
        hit = ix.search_vector(m[i], k=1)[0]
        assert hit.path == str(gallery[3]) and hit.score == pytest.approx(1.0, abs=1e-5)
        if not _has("pyarrow"):
            with pytest.raises(Exception, match="pyarrow"):
                ix.export_embeddings(tmp_path / "emb.parquet")


def _has(mod: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(mod) is not None


def test_approximate_backend_agrees_with_exact(tmp_path, tiny_bundle):
    pytest.importorskip("usearch", reason="pip install 'edgeclip[index]'")
    photos = tmp_path / "photos"
    gallery = make_gallery(photos, 10)
    db = tmp_path / "i.db"
    with ImageIndex(db, model=tiny_bundle) as ix:
        ix.add_folder(photos, progress=False)
        exact = ix.search_image(gallery[3], k=3)
    with ImageIndex(db, model=tiny_bundle, approximate=True) as ax:
        approx = ax.search_image(gallery[3], k=3)
        assert approx[0].path == exact[0].path == str(gallery[3])
        assert [a.score for a in approx] == pytest.approx([e.score for e in exact], abs=2e-3)
        sub = ax.search("a photo", k=10, folder=photos / "trip")
        assert {x.path for x in sub} == {str(p) for p in gallery if p.parent.name == "trip"}
        os.remove(gallery[3])
        ImageIndex(db, model=tiny_bundle).add_folder(photos, progress=False)
        assert str(gallery[3]) not in {x.path for x in ax.search_image(gallery[4], k=10)}


def test_ann_recall_on_clustered_vectors():
    pytest.importorskip("usearch", reason="pip install 'edgeclip[index]'")
    rng = np.random.default_rng(0)
    n, d, latent = 5000, 64, 16
    proj = rng.standard_normal((latent, d)).astype(np.float32)
    centres = rng.standard_normal((200, latent)).astype(np.float32)
    x = centres[rng.integers(0, 200, n)] + 0.5 * rng.standard_normal((n, latent))
    m = (x @ proj + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    ann = AnnIndex(d)
    ann.upsert(np.arange(n), m)
    hits = 0
    for qi in rng.integers(0, n, 50):
        q = m[qi] + 0.05 * rng.standard_normal(d).astype(np.float32)
        q /= np.linalg.norm(q)
        truth, _ = exact_search(m, q, 10)
        keys, _ = ann.search(q, 10)
        hits += len(set(truth.tolist()) & set(keys.tolist()))
    assert hits / 500 >= 0.95


def test_duplicate_groups_across_blocks():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((6, 8)).astype(np.float32)
    m = np.concatenate([base, base[[0]] + 1e-3, base[[4]] + 1e-3, base[[0]] - 1e-3])
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    for block in (1, 2, 3, 100):
        assert duplicate_groups(m, 0.999, block=block) == [[0, 6, 8], [4, 7]]
    assert duplicate_groups(m, 1.5) == []


# -- large indexes and the indexing pipeline (issue 13) -----------------------------------------
def test_indexing_pipeline_queue_never_exceeds_its_limit(tmp_path, tiny_bundle):
    """Decoding runs ahead of the model into a bounded queue. A slow consumer (on_commit sleeps)
    lets the producer fill it: it reaches its limit and never passes it, at most limit + 2
    batches of pixels exist at once, and the embeddings are those of embed_images."""
    from edgeclip import Embedder
    make_gallery(tmp_path / "photos", 20)
    (tmp_path / "photos" / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    emb = Embedder(tiny_bundle, towers=("image",))
    with ImageIndex(tmp_path / "i.db", embedder=emb) as ix:
        r = ix.add_folder(tmp_path / "photos", batch_size=2, commit_every=2, queue_batches=2,
                          progress=False, on_commit=lambda rep: time.sleep(0.03))
        assert (r.added, r.skipped, r.embedded) == (20, 1, 20)
        assert r.pipeline["queue_limit"] == 2
        assert r.pipeline["queue_peak"] == 2  # filled up to the limit, never beyond
        assert 1 <= r.pipeline["pixel_batches_peak"] <= 2 + 2
        ids, _, stored = ix._load_all()
        paths = ix._paths_by_id()
        order = [paths[int(i)] for i in ids]
    want = emb.embed_images(order)
    np.testing.assert_allclose(stored, want, atol=2e-3)  # float16 storage
    emb.close()


def test_streaming_load_gives_the_same_matrix_as_loading_all_rows(tmp_path):
    """load_matrix streams chunks into one preallocated matrix; the result equals the former
    load (all rows fetched, blobs joined, converted, normalised)."""
    from edgeclip.index.store import connect, load_matrix, set_meta, transaction
    rng = np.random.default_rng(3)
    dim, n = 24, 1000
    vecs = rng.standard_normal((n, dim)).astype(np.float32) * rng.uniform(0.5, 2, (n, 1))
    conn = connect(tmp_path / "s.db")
    with transaction(conn):
        set_meta(conn, model_name="m", model_identity="m", dim=dim)
        conn.executemany("INSERT INTO images(path, folder, size, mtime_ns, hash, embedding, "
                         "indexed_at, gen) VALUES (?, '/p', 0, ?, ?, ?, 0, 1)",
                         ((f"/p/{i}.jpg", i * 7, f"h{i}", vecs[i].astype(np.float16).tobytes())
                          for i in range(n)))
        conn.execute("DELETE FROM images WHERE id % 7 = 0")  # gaps in the ids
    rows = conn.execute("SELECT id, mtime_ns, embedding FROM images ORDER BY id").fetchall()
    old = np.frombuffer(b"".join(r[2] for r in rows), np.float16).reshape(len(rows), dim)
    old = old.astype(np.float32)
    old /= np.linalg.norm(old, axis=1, keepdims=True)
    for chunk in (1, 7, 4096):
        with transaction(conn, immediate=False):
            ids, mtimes, m = load_matrix(conn, dim, np.float32, chunk=chunk)
        assert m.dtype == np.float32 and m.flags.c_contiguous
        np.testing.assert_array_equal(ids, [r[0] for r in rows])
        np.testing.assert_array_equal(mtimes, [r[1] for r in rows])
        np.testing.assert_array_equal(m, old)
    with transaction(conn, immediate=False):
        _, _, m16 = load_matrix(conn, dim, np.float16, chunk=100)
    assert m16.dtype == np.float16
    np.testing.assert_array_equal(m16, old.astype(np.float16))
    conn.close()


def test_float16_index_round_trips(tmp_path, tiny_bundle):
    """dtype='float16' keeps the in-memory vectors in half precision (half the memory):
    same results as float32, scores within float16 rounding, exports equal."""
    gallery = make_gallery(tmp_path / "photos", 12)
    db = tmp_path / "i.db"
    with ImageIndex(db, model=tiny_bundle) as ix:
        ix.add_folder(tmp_path / "photos", progress=False)
        full = [ix.search_image(g, k=5) for g in gallery[:4]]
        ix.export_embeddings(tmp_path / "f32.npz")
    with ImageIndex(db, model=tiny_bundle, dtype="float16", read_only=True) as ix:
        half = [ix.search_image(g, k=5) for g in gallery[:4]]
        assert ix._matrix.dtype == np.float16
        assert ix._matrix.nbytes * 2 == len(ix) * int(ix.meta["dim"]) * 4
        ix.export_embeddings(tmp_path / "f16.npz")
        sub = ix.search("a photo", k=20, folder=tmp_path / "photos" / "trip")
        assert {x.path for x in sub} == {str(p) for p in gallery if p.parent.name == "trip"}
    for a, b in zip(full, half):
        assert a[0].path == b[0].path
        assert [x.score for x in a] == pytest.approx([x.score for x in b], abs=2e-3)
    e32, e16 = np.load(tmp_path / "f32.npz"), np.load(tmp_path / "f16.npz")
    assert list(e32["paths"]) == list(e16["paths"])
    np.testing.assert_allclose(e32["embeddings"], e16["embeddings"], atol=1e-3)
    with pytest.raises(InputError, match="float16"):
        ImageIndex(db, dtype="int8")


def test_float16_exact_search_with_and_without_usearch(monkeypatch):
    """float16 matrices are scored by usearch's exact kernel, or block by block in numpy
    without usearch: both give float32 exact search's neighbours."""
    import edgeclip.index.search as S
    rng = np.random.default_rng(5)
    m = rng.standard_normal((3000, 32)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    q = m[17] + 0.1 * rng.standard_normal(32).astype(np.float32)
    q /= np.linalg.norm(q)
    want, want_s = exact_search(m, q, 10)
    for no_usearch in (False, True):  # (False without usearch installed: the fallback too)
        if no_usearch:
            def refuse():
                raise S.BackendUnavailableError("no usearch")
            monkeypatch.setattr(S, "load_usearch", refuse)
        got, got_s = S._exact_f16(m.astype(np.float16), q, 10, block=512)
        assert len(set(got.tolist()) & set(want.tolist())) >= 9
        assert got[0] == want[0] == 17
        np.testing.assert_allclose(got_s[:3], want_s[:3], atol=3e-3)
