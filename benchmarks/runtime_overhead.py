"""Embedder overhead vs a raw ONNX Runtime session (issue: runtime SDK).

Measures, in one run with interleaved rounds:
  raw      InferenceSession.run on an already preprocessed float32 batch (the floor)
  arrays   Embedder.embed_images on pre-decoded 224x224x3 uint8 arrays
  jpeg     Embedder.embed_images on JPEG files (decode + preprocess overlapped with inference)
Writes JSON to benchmarks/results/runtime_overhead.json (or --json).

    python benchmarks/runtime_overhead.py BUNDLE --images ../shared/data/flickr8k/images
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import edgeclip
from edgeclip import Embedder
from edgeclip.preprocess import preprocess_image
from edgeclip.profiling.machine import cpu_model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--images", required=True)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--precision", default=None)
    ap.add_argument("--json", default="benchmarks/results/runtime_overhead.json")
    a = ap.parse_args(argv)

    files = sorted(Path(a.images).glob("*.jpg"))[: a.n]
    emb = Embedder(a.bundle, backend="onnxruntime", precision=a.precision, towers=("image",))
    cfg = emb.manifest.towers["image"].preprocess
    runner = emb._runners["image"]
    sess = runner.session
    in_name = emb.manifest.towers["image"].inputs[0].name
    h, w = cfg.size
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((w, h), Image.Resampling.BICUBIC))
              for f in files]
    x = np.stack([preprocess_image(Image.fromarray(arr), cfg) for arr in arrays])
    bs = min(a.batch, runner.max_batch)

    def raw():
        for i in range(0, len(x), bs):
            sess.run(None, {in_name: x[i:i + bs]})

    def via_arrays():
        emb.embed_images(arrays, batch_size=bs)

    def via_jpeg():
        emb.embed_images(files, batch_size=bs)

    cases = {"raw": raw, "arrays": via_arrays, "jpeg": via_jpeg}
    for fn in cases.values():  # warm-up
        fn()
    times = {k: [] for k in cases}
    for _ in range(a.rounds):
        for k, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    n = len(files)
    result = {
        "command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": sys.version.split()[0]},
        "edgeclip": edgeclip.__version__, "model": emb.model_name, "precision": emb.precision,
        "images": n, "batch": bs, "rounds": a.rounds,
        "seconds_median": med, "seconds_all": times,
        "images_per_s": {k: n / v for k, v in med.items()},
        "overhead_arrays_vs_raw": med["arrays"] / med["raw"] - 1.0,
        "jpeg_throughput_vs_raw": med["raw"] / med["jpeg"],
    }
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{emb.model_name} {emb.precision} batch {bs}, {n} images, median of {a.rounds} rounds")
    for k in cases:
        print(f"  {k:<7} {med[k] * 1000:8.1f} ms  {n / med[k]:7.1f} img/s")
    print(f"  Embedder overhead on pre-decoded arrays: {result['overhead_arrays_vs_raw'] * 100:+.1f}%"
          f" (target <= +10%)")
    print(f"  JPEG end-to-end throughput / raw session: {result['jpeg_throughput_vs_raw'] * 100:.0f}%"
          f" (target >= 75%)")


if __name__ == "__main__":
    main()
