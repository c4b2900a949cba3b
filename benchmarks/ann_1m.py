"""Search over 1,000,000 real-model-like vectors: HNSW (usearch, ``ImageIndex(approximate=True)``'s
``AnnIndex``) against exact search, and exact search over 100,000.

The vectors are not random. Every Flickr8k image (8,091 real photos) is embedded by the default
model; each of the 1,000,000 vectors is one of those real embeddings plus noise drawn from the
real embeddings' own covariance (so the noise is as anisotropic as real data), scaled so that a
perturbed vector sits from its source at the cosine of the median real nearest neighbour (a
"different photo of a similar scene"), then normalised. Queries are real captions embedded by
the model's text tower (the search users run), and real photos perturbed the same way
(search by example).

    OMP_NUM_THREADS=1 python benchmarks/ann_1m.py [--n 1000000] [--threads 2] [--efs 64,128,256,512]

Writes ``benchmarks/results/index_ann_1m.json`` (merged into ``index.json`` under ``ann_1m``).
The HNSW graph is cached in ``--cache`` (keyed by n, seed and model) so a re-run skips the
build. Latencies are single-query, single-thread; load average recorded beside them.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import onnxruntime  # noqa: E402,F401  (before usearch: the other order segfaults)

from edgeclip.index.search import AnnIndex, exact_search  # noqa: E402


def real_embeddings(data: Path, n_queries: int, cache: Path):
    """(image embeddings of every Flickr8k photo, caption embeddings, model name)."""
    from edgeclip import Embedder
    emb = Embedder()
    key = f"flickr8k-{emb.identity[:16]}-{n_queries}.npz"
    f = cache / key
    if f.is_file():
        z = np.load(f)
        return z["img"], z["txt"], emb.model_name
    images = sorted((data / "images").glob("*.jpg"))
    img = emb.embed_images(images, batch_size=64)
    with open(data / "captions.csv", newline="", encoding="utf-8") as fh:
        caps = [r["caption"] for r in csv.DictReader(fh)]
    caps = caps[:: max(1, len(caps) // n_queries)][:n_queries]
    txt = emb.embed_texts(caps)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(f, img=img, txt=txt)
    return img, txt, emb.model_name


def measured_spread(img: np.ndarray) -> dict:
    """Median cosine of each real photo to its nearest other real photo (byte-identical and
    near-identical pairs, cosine > 0.99, left out)."""
    sims = img @ img.T
    np.fill_diagonal(sims, -1.0)
    sims[sims > 0.99] = -1.0
    nn = sims.max(axis=1)
    return {"nn_cosine_median": float(np.median(nn)), "nn_cosine_p10": float(np.percentile(nn, 10)),
            "nn_cosine_p90": float(np.percentile(nn, 90))}


def make_vectors(img: np.ndarray, n: int, target_cos: float, rng):
    """n vectors: real embeddings + covariance-shaped noise at cosine ~target_cos to the source."""
    mean = img.mean(axis=0)
    cov = np.cov((img - mean).T)
    s, v = np.linalg.eigh(cov)
    basis = (v * np.sqrt(np.clip(s, 0, None))).T.astype(np.float32)  # z @ basis ~ N(0, cov)

    def perturb(src: np.ndarray, scale: float) -> np.ndarray:
        z = rng.standard_normal((len(src), img.shape[1]), dtype=np.float32) @ basis
        x = src + scale * z
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    # scale so that the median cosine(perturbed, source) equals the real NN cosine
    lo, hi = 0.0, 20.0
    probe = img[rng.integers(0, len(img), 4000)]
    for _ in range(30):
        mid = (lo + hi) / 2
        c = float(np.median(np.sum(perturb(probe, mid) * probe, axis=1)))
        lo, hi = (mid, hi) if c > target_cos else (lo, mid)
    scale = (lo + hi) / 2
    out = np.empty((n, img.shape[1]), dtype=np.float32)
    src_ids = rng.integers(0, len(img), n)
    for s in range(0, n, 100_000):
        out[s:s + 100_000] = perturb(img[src_ids[s:s + 100_000]], scale)
    return out, scale, perturb


def timed_queries(fn, queries):
    """Wall time per query, and the CPU time of this thread per query: with one thread
    (OMP_NUM_THREADS=1; usearch searches one query on one thread) the CPU time is the latency
    the query has on an idle core, whatever else loads the machine."""
    times, cpu, results = [], [], []
    for q in queries:
        t, c = time.perf_counter(), time.thread_time()
        results.append(fn(q))
        cpu.append(time.thread_time() - c)
        times.append(time.perf_counter() - t)
    t, c = np.asarray(times) * 1e3, np.asarray(cpu) * 1e3
    return results, {"p50_ms": round(float(np.median(t)), 3),
                     "p95_ms": round(float(np.percentile(t, 95)), 3),
                     "cpu_p50_ms": round(float(np.median(c)), 3)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("EDGECLIP_FLICKR8K") or
                    str(REPO.parent / "shared" / "data" / "flickr8k"))
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2, help="HNSW build threads")
    ap.add_argument("--efs", default="64,128,256,512")
    ap.add_argument("--exact-queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "edgeclip-bench"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "index_ann_1m.json"))
    a = ap.parse_args(argv)
    cache = Path(a.cache)
    rng = np.random.default_rng(a.seed)
    res = {"command": (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python "
                       f"benchmarks/ann_1m.py " + " ".join(argv or sys.argv[1:])),
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu_count": os.cpu_count(),
           "loadavg_at_start": list(os.getloadavg()), "n": a.n}
    img, txt, model = real_embeddings(Path(a.data), a.queries, cache)
    res["model"] = model
    res["real_images"] = len(img)
    res["spread"] = measured_spread(img)
    vecs, scale, perturb = make_vectors(img, a.n, res["spread"]["nn_cosine_median"], rng)
    res["noise_scale"] = round(scale, 4)
    img_queries = perturb(img[rng.integers(0, len(img), a.queries)], scale)
    query_sets = {"caption_text": txt.astype(np.float32), "image_by_example": img_queries}

    # exact over 100k (a prefix) and 1M
    res["exact"] = {}
    for n, nq in ((100_000, a.exact_queries), (a.n, max(20, a.exact_queries // 4))):
        m = vecs[:n]
        _, t = timed_queries(lambda q: exact_search(m, q, 10),
                             query_sets["caption_text"][:nq])
        res["exact"][str(n)] = {**t, "queries": nq, "loadavg": list(os.getloadavg())}
        print(f"exact {n}: {res['exact'][str(n)]}", flush=True)

    # HNSW (the product's AnnIndex: f16, M=16, ef_construction=64), cached
    ann = AnnIndex(vecs.shape[1], threads=a.threads)
    tag = hashlib.sha1(f"{a.n}-{a.seed}-{model}-{scale:.6f}".encode()).hexdigest()[:12]
    graph = cache / f"ann_{tag}.usearch"
    if graph.is_file():
        ann.load(str(graph))
        side = Path(str(graph) + ".json")
        res["build"] = json.loads(side.read_text()) if side.is_file() else "cached"
    else:
        t0 = time.perf_counter()
        for s in range(0, a.n, 100_000):
            ann.upsert(np.arange(s, min(s + 100_000, a.n)), vecs[s:s + 100_000])
            print(f"built {min(s + 100_000, a.n)} in {time.perf_counter() - t0:.0f} s "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
        res["build"] = {"seconds": round(time.perf_counter() - t0, 1), "threads": a.threads,
                        "loadavg_at_end": list(os.getloadavg())}
        cache.mkdir(parents=True, exist_ok=True)
        ann.save(str(graph))
        Path(str(graph) + ".json").write_text(json.dumps(res["build"]))
    res["ann"] = {}
    for name, qs in query_sets.items():
        truth = []
        for s in range(0, len(qs), 100):  # exact top-10 of 100 queries per matrix product
            scores = vecs @ qs[s:s + 100].T
            top = np.argpartition(-scores, 10, axis=0)[:10].T
            truth += [set(r.tolist()) for r in top]
            del scores
        res["ann"][name] = {}
        for ef in [int(x) for x in a.efs.split(",")]:
            ann.index.expansion_search = ef
            got, t = timed_queries(lambda q: ann.search(q, 10)[0], qs)
            recall = float(np.mean([len(tr & set(g.tolist())) / 10 for tr, g in zip(truth, got)]))
            res["ann"][name][f"ef{ef}"] = {**t, "recall@10": round(recall, 4),
                                           "loadavg": list(os.getloadavg())}
            print(f"ann {name} ef{ef}: {res['ann'][name][f'ef{ef}']}", flush=True)
    res["loadavg_at_end"] = list(os.getloadavg())
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    merged = out.parent / "index.json"  # beside the other index numbers
    if merged.is_file() and merged != out:
        allres = json.loads(merged.read_text())
        allres["ann_1m"] = res
        merged.write_text(json.dumps(allres, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
