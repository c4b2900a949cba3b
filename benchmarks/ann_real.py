"""ANN (usearch HNSW) recall@10 against exact search on real embeddings: every Flickr8k image
embedded by a bundle (default: the built-in model), queried by 2,000 real captions.

    python benchmarks/ann_real.py [--bundle B] [--data ../shared/data/flickr8k]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from edgeclip import Embedder
from edgeclip.index.search import AnnIndex, exact_search
from edgeclip.profiling.machine import machine_info


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--data", default="../shared/data/flickr8k")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--out", default="benchmarks/results/ann_real.json")
    a = ap.parse_args(argv)
    data = Path(a.data)
    emb = Embedder(a.bundle)
    images = sorted((data / "images").glob("*.jpg"))
    t0 = time.perf_counter()
    img = emb.embed_images(images)
    embed_s = time.perf_counter() - t0
    with open(data / "captions.csv", newline="", encoding="utf-8") as f:
        caps = [r["caption"] for r in csv.DictReader(f)][:: 40455 // a.queries][: a.queries]
    q = emb.embed_texts(caps)
    ann = AnnIndex(emb.dim)
    ann.upsert(np.arange(len(img)), img)
    hits = []
    for v in q:
        want = set(exact_search(img, v, 10)[0].tolist())
        keys, _ = ann.search(v, 10)
        hits.append(len(want & set(int(k) for k in keys)) / 10)
    res = {"command": "python benchmarks/ann_real.py", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "machine": machine_info(), "model": emb.model_name, "vectors": len(img),
           "queries": len(q), "recall_at_10": float(np.mean(hits)),
           "images_per_s_embedding": len(img) / embed_s}
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"{len(img)} real image vectors, {len(q)} caption queries: HNSW recall@10 "
          f"{res['recall_at_10']:.4f} vs exact; embedding {res['images_per_s_embedding']:.0f} img/s")


if __name__ == "__main__":
    main()
