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
from edgeclip.index_scan import hash_file
from edgeclip.index_search import AnnIndex, duplicate_groups, exact_search

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
