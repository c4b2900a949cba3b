"""Benchmark of the image index: search latency (exact and usearch HNSW) on synthetic vectors,
ANN recall@10, end-to-end ``ImageIndex.search_vector`` latency on a real SQLite index, and
indexing throughput on Flickr8k images with a bundle.

    python benchmarks/index_bench.py                       # default model, all sizes
    python benchmarks/index_bench.py --bundle path/to/bundle --images 1000
    python benchmarks/index_bench.py --sizes 10000,100000 --ann-sizes 10000

Synthetic vectors are unit vectors with low intrinsic dimension (clustered points in a
48-d latent space, projected to ``--dim`` plus noise), like real image embeddings; one
isotropic (worst case for HNSW) recall is reported too. Writes ``benchmarks/results/index.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import onnxruntime  # noqa: E402,F401  (before usearch: the other order segfaults, see edgeclip.index.search)

from edgeclip.index.search import AnnIndex, exact_search  # noqa: E402


def structured(n: int, dim: int, rng, latent: int = 48, clusters: int = 2000):
    proj = rng.standard_normal((latent, dim), dtype=np.float32)
    centres = rng.standard_normal((clusters, latent), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        z = centres[rng.integers(0, clusters, m)] + 0.5 * rng.standard_normal((m, latent),
                                                                            dtype=np.float32)
        out[s:s + m] = z @ proj + 0.3 * rng.standard_normal((m, dim), dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    zq = centres[rng.integers(0, clusters, 200)] + 0.5 * rng.standard_normal((200, latent),
                                                                           dtype=np.float32)
    q = zq @ proj
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return out, q


def isotropic(n: int, dim: int, rng):
    m = rng.standard_normal((n, dim), dtype=np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    q = m[rng.integers(0, n, 200)] + 0.5 * rng.standard_normal((200, dim), dtype=np.float32) / 16
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return m, q


def ms(times) -> float:
    return round(float(np.median(times)) * 1e3, 3)


def bench_exact(m, queries, k=10):
    times = []
    for q in queries:
        t = time.perf_counter()
        exact_search(m, q, k)
        times.append(time.perf_counter() - t)
    return {"median_ms": ms(times), "p95_ms": round(float(np.percentile(times, 95)) * 1e3, 3)}


def bench_ann(m, queries, k=10, efs=(128,)):
    ann = AnnIndex(m.shape[1])
    t = time.perf_counter()
    ann.upsert(np.arange(len(m)), m)
    out = {"build_s": round(time.perf_counter() - t, 1)}
    truth = [set(exact_search(m, q, k)[0].tolist()) for q in queries]
    for ef in efs:
        ann.index.expansion_search = ef
        times, hits = [], 0
        for q, tr in zip(queries, truth):
            t = time.perf_counter()
            keys, _ = ann.search(q, k)
            times.append(time.perf_counter() - t)
            hits += len(tr & set(keys.tolist()))
        out[f"ef{ef}"] = {"median_ms": ms(times),
                          "p95_ms": round(float(np.percentile(times, 95)) * 1e3, 3),
                          f"recall@{k}": round(hits / (k * len(queries)), 4)}
    return out


def bench_end_to_end(m, queries, tmp: Path):
    """ImageIndex.search_vector on a real SQLite index of len(m) rows (float16 blobs)."""
    from edgeclip.index import ImageIndex
    from edgeclip.index.store import connect, set_meta, transaction
    db = tmp / "synthetic.db"
    conn = connect(db)
    with transaction(conn):
        set_meta(conn, model_name="synthetic", model_identity="synthetic", dim=m.shape[1])
        half = m.astype(np.float16)
        conn.executemany("INSERT INTO images(path, folder, size, mtime_ns, hash, embedding, "
                         "indexed_at, gen) VALUES (?, ?, 0, ?, ?, ?, 0, 1)",
                         ((f"/photos/{i // 1000}/{i}.jpg", f"/photos/{i // 1000}", i, f"h{i}",
                           half[i].tobytes()) for i in range(len(m))))
    conn.close()
    ix = ImageIndex(db)
    t = time.perf_counter()
    ix.search_vector(queries[0], 10)
    load = time.perf_counter() - t
    times = []
    for q in queries:
        t = time.perf_counter()
        ix.search_vector(q, 10)
        times.append(time.perf_counter() - t)
    ftimes = []
    for q in queries[:50]:
        t = time.perf_counter()
        ix.search_vector(q, 10, folder="/photos/7")
        ftimes.append(time.perf_counter() - t)
    ix.close()
    return {"rows": len(m), "first_query_with_load_s": round(load, 2),
            "median_ms": ms(times), "folder_filter_median_ms": ms(ftimes)}


def _rss_peak_reset() -> int:
    """Reset this process's peak RSS (VmHWM) to the current RSS; returns the current RSS in
    bytes (Linux; 0 elsewhere)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _vm("VmRSS")
    except OSError:
        return 0


def _vm(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def bench_load_memory(m, tmp: Path):
    """Peak memory of loading an index of len(m) rows into the search matrix: the streaming
    load into one preallocated matrix against the former load (all rows fetched, blobs joined,
    converted). tracemalloc (Python + numpy allocations) and the process's peak RSS."""
    import gc
    import tracemalloc

    from edgeclip.index import ImageIndex
    from edgeclip.index.store import connect, set_meta, transaction
    db = tmp / "memory.db"
    conn = connect(db)
    with transaction(conn):
        set_meta(conn, model_name="synthetic", model_identity="synthetic", dim=m.shape[1])
        half = m.astype(np.float16)
        conn.executemany("INSERT INTO images(path, folder, size, mtime_ns, hash, embedding, "
                         "indexed_at, gen) VALUES (?, ?, 0, ?, ?, ?, 0, 1)",
                         ((f"/photos/{i // 1000}/{i}.jpg", f"/photos/{i // 1000}", i, f"h{i}",
                           half[i].tobytes()) for i in range(len(m))))
    conn.close()
    del half
    out = {"rows": len(m), "dim": m.shape[1]}

    def former(ix):  # the load before streaming, kept here as the reference
        rows = ix._conn.execute("SELECT id, mtime_ns, embedding FROM images "
                                "ORDER BY id").fetchall()
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        mt = np.fromiter((r[1] for r in rows), np.int64, len(rows))
        x = np.frombuffer(b"".join(r[2] for r in rows), np.float16).reshape(len(rows), -1)
        x = x.astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return ids, mt, x

    for dtype in ("float32", "float16"):
        for name in ("streaming", "former"):
            if name == "former" and dtype == "float16":
                continue
            ix = ImageIndex(db, read_only=True, dtype=dtype)
            gc.collect()
            rss0 = _rss_peak_reset()
            tracemalloc.start()
            t = time.perf_counter()
            if name == "streaming":
                ix._refresh()
                matrix = ix._matrix
            else:
                matrix = former(ix)[2]
            secs = time.perf_counter() - t
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            rss_peak = _vm("VmHWM") - rss0 if rss0 else None
            out[f"{name}_{dtype}"] = {
                "matrix_mb": round(matrix.nbytes / 2**20, 1),
                "tracemalloc_peak_mb": round(peak / 2**20, 1),
                "peak_over_matrix": round(peak / matrix.nbytes, 2),
                "rss_peak_growth_over_matrix": (round(rss_peak / matrix.nbytes, 2)
                                                if rss_peak else None),
                "load_s": round(secs, 2)}
            print(f"load {name} {dtype}: {out[f'{name}_{dtype}']}", flush=True)
            del matrix
            ix.close()
            gc.collect()
    return out


def make_photos(flickr: Path, n: int, size: tuple[int, int], folder: Path) -> list[Path]:
    """Phone-sized JPEGs made from real Flickr8k photos (upscaled to ``size``, quality 92,
    every third with an EXIF orientation tag)."""
    from PIL import Image
    images = sorted((flickr / "images").glob("*.jpg"))[:n]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, p in enumerate(images):
        dst = folder / f"photo_{i:04d}.jpg"
        if not dst.exists():
            img = Image.open(p).convert("RGB").resize(size, Image.BICUBIC)
            exif = Image.Exif()
            if i % 3 == 0:
                exif[0x0112] = (6, 8, 3)[i // 3 % 3]
            img.save(dst, quality=92, exif=exif.tobytes())
        out.append(dst)
    return out


def bench_photo_indexing(bundle, n: int, size: tuple[int, int], tmp: Path, threads: int):
    """`ImageIndex.add_folder` (what `edgeclip index` runs) on phone-sized JPEGs with the
    default model: images/s, beside the decode-only and model-only rates in the same run."""
    from edgeclip.embedder import Embedder
    from edgeclip.index import ImageIndex
    flickr = Path(os.environ.get("EDGECLIP_FLICKR8K") or REPO.parent / "shared" / "data" /
                  "flickr8k")
    if not (flickr / "images").is_dir():
        return {"skipped": f"no Flickr8k images in {flickr}"}
    folder = tmp / f"photos_{size[0]}x{size[1]}"
    files = make_photos(flickr, n, size, folder)
    emb = Embedder(bundle, towers=("image",), threads=threads)
    emb.embed_images(files[:8])  # warm-up
    th, tw = emb._pre.size
    buf = np.empty((3, th, tw), np.float32)
    t = time.perf_counter()
    for f in files:  # decode + preprocess only, one thread
        emb._prep_into(str(f), buf)
    decode_1t = len(files) / (time.perf_counter() - t)
    pix = np.random.default_rng(0).standard_normal((32, 3, th, tw)).astype(np.float32)
    runner = emb._runner("image")
    feed = {emb.manifest.towers["image"].inputs[0].name: pix}
    emb._run_split(runner, feed)
    t = time.perf_counter()
    for _ in range(max(1, n // 32)):
        emb._run_split(runner, feed)
    model = 32 * max(1, n // 32) / (time.perf_counter() - t)
    rates, cpu = [], []
    for rnd in range(2):  # two rounds: each a fresh index of the whole folder
        ix = ImageIndex(tmp / f"photos_{rnd}.db", embedder=emb)
        c0 = time.process_time()
        rep = ix.add_folder(folder, progress=False)
        cpu.append((time.process_time() - c0) / max(1, rep.embedded))
        ix.close()
        rates.append(rep.images_per_s)
    emb.close()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"photos": n, "size": f"{size[0]}x{size[1]}", "model": emb.model_name,
            "threads": threads, "cpu_count": os.cpu_count(),
            "index_images_per_s": [round(r, 1) for r in rates],
            "decode_only_images_per_s_1_thread": round(decode_1t, 1),
            "model_only_images_per_s": round(model, 1),
            # CPU seconds the whole pipeline spends per photo (all threads): on an otherwise
            # idle machine with `cores` cores the rate is at most cores / cpu_s_per_image
            "cpu_s_per_image": [round(c, 4) for c in cpu],
            "idle_machine_bound_images_per_s": round(cores / min(cpu), 1), "cores": cores,
            "pipeline": rep.pipeline, "loadavg": list(os.getloadavg())}


def bench_indexing(bundle, n_images: int, tmp: Path):
    from edgeclip.embedder import Embedder
    from edgeclip.index import ImageIndex
    flickr = Path(os.environ.get("EDGECLIP_FLICKR8K") or REPO.parent / "shared" / "data" /
                  "flickr8k")
    images = sorted((flickr / "images").glob("*.jpg"))[:n_images]
    if not images:
        return {"skipped": f"no Flickr8k images in {flickr}"}
    folder = tmp / "photos"
    folder.mkdir()
    for p in images:  # copies (symlinks out of the folder are not followed by the index)
        try:
            os.link(p, folder / p.name)
        except OSError:
            shutil.copyfile(p, folder / p.name)
    emb = Embedder(bundle, towers=("image",))
    ix = ImageIndex(tmp / "flickr.db", embedder=emb)
    first = ix.add_folder(folder, progress=False)
    again = ix.add_folder(folder, progress=False)
    ix.close()
    return {"model": emb.model_name, "bundle": str(emb.bundle_dir), "backend": emb.backend,
            "precision": emb.precision, "images": len(images),
            "first_run": {"seconds": round(first.seconds, 2),
                          "images_per_s": round(first.images_per_s, 1),
                          "added": first.added, "skipped": first.skipped},
            "no_change_rerun_s": round(again.seconds, 3)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--ann-sizes", default="10000,100000,1000000")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--bundle", default=None, help="bundle for the indexing run "
                    "(default: the built-in default model)")
    ap.add_argument("--images", type=int, default=1000, help="Flickr8k images to index")
    ap.add_argument("--photos", type=int, default=96, help="phone-sized JPEGs to index")
    ap.add_argument("--photo-size", default="4032x3024")
    ap.add_argument("--threads", type=int, default=None, help="model threads (default: all)")
    ap.add_argument("--only", default="", help="comma list of parts: search, memory, photos, "
                    "indexing (default: all); merged into the existing --out file")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "index.json"))
    args = ap.parse_args(argv)
    only = {s for s in args.only.split(",") if s}
    if only:
        return run_parts(args, only)
    rng = np.random.default_rng(0)
    res = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                       "numpy": np.__version__}, "dim": args.dim, "queries": 200,
           "exact": {}, "ann": {}}
    for dist in ("usearch", "onnxruntime"):
        try:
            res["machine"][dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    res["machine"]["loadavg_at_start"] = list(os.getloadavg())
    sizes = [int(s) for s in args.sizes.split(",") if s]
    ann_sizes = {int(s) for s in args.ann_sizes.split(",") if s}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in sizes:
            m, q = structured(n, args.dim, rng)
            res["exact"][str(n)] = bench_exact(m, q)
            print(f"exact {n}: {res['exact'][str(n)]}", flush=True)
            if n == 100_000:
                res["end_to_end_100k"] = bench_end_to_end(m, q, tmp)
                print(f"ImageIndex 100k: {res['end_to_end_100k']}", flush=True)
            if n in ann_sizes:
                res["ann"][str(n)] = bench_ann(m, q)
                print(f"ann {n}: {res['ann'][str(n)]}", flush=True)
            del m
        if 100_000 in ann_sizes:
            m, q = isotropic(100_000, args.dim, rng)
            res["ann_isotropic_100k"] = bench_ann(m, q, efs=(128, 512))
            print(f"ann isotropic 100k: {res['ann_isotropic_100k']}", flush=True)
            del m
        try:
            res["indexing"] = bench_indexing(args.bundle, args.images, tmp)
        except Exception as e:  # noqa: BLE001 - e.g. no default model yet: say so in the JSON
            res["indexing"] = {"skipped": f"{type(e).__name__}: {e}"}
        print(f"indexing: {res['indexing']}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


def run_parts(args, only: set[str]):
    """Run some parts and merge their results into the existing JSON."""
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.is_file() else {}
    rng = np.random.default_rng(0)
    cmd = "python benchmarks/index_bench.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "memory" in only:
            m, _ = structured(100_000, args.dim, rng)
            res["load_memory_100k"] = {"command": cmd, "loadavg": list(os.getloadavg()),
                                       **bench_load_memory(m, tmp)}
            del m
        if "photos" in only:
            w, h = (int(x) for x in args.photo_size.lower().split("x"))
            res["photo_indexing"] = {"command": cmd, **bench_photo_indexing(
                args.bundle, args.photos, (w, h), tmp, args.threads)}
            print(f"photo indexing: {res['photo_indexing']}", flush=True)
        if "search" in only:
            for n in (100_000,):
                m, q = structured(n, args.dim, rng)
                res.setdefault("exact", {})[str(n)] = {**bench_exact(m, q),
                                                       "loadavg": list(os.getloadavg())}
                print(f"exact {n}: {res['exact'][str(n)]}", flush=True)
                res.setdefault("exact_float16", {})[str(n)] = {
                    **bench_exact(m.astype(np.float16), q), "loadavg": list(os.getloadavg())}
                print(f"exact float16 {n}: {res['exact_float16'][str(n)]}", flush=True)
                res["end_to_end_100k"] = {"command": cmd, **bench_end_to_end(m, q, tmp),
                                          "loadavg": list(os.getloadavg())}
                print(f"ImageIndex 100k: {res['end_to_end_100k']}", flush=True)
        if "indexing" in only:
            res["indexing"] = bench_indexing(args.bundle, args.images, tmp)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
