"""Phone-sized photos end to end: 12 MP JPEG throughput vs 224-px throughput, in one run.

Photos: real Flickr8k images (224 px) upscaled to --photo-size and saved as JPEG quality 90,
every third stored rotated with an EXIF orientation tag (edgeclip.profiling.photos; the same files
``edgeclip-bench --photo-size`` writes). They are smoother than camera originals, which decode a
little slower (more DCT coefficients); say so when quoting.

Interleaved rounds of ``Embedder.embed_images`` (default model, batch --batch) on:
  224/new     the Flickr8k JPEGs, today's preprocessing (draft decoding, EXIF fast path)
  224/old     the same with the previous loader (full decode + ImageOps.exif_transpose), copied
              below, patched into the Embedder for its rounds
  photo/new   the 12 MP JPEGs, today's preprocessing
  photo/old   the 12 MP JPEGs with the previous loader
Ratios are medians of per-pair ratios of adjacent calls (224 new vs old: 3 x --rounds pairs; photo
vs 224: --rounds pairs). Plus single-thread preprocessing CPU time per image (old vs new, adjacent
pairs) and the embedding cosine of the drafted decode to the full decode at draft margins 1 and 2
(the chosen DRAFT_MARGIN).

    python benchmarks/photo_e2e.py [--n 32] [--batch 32] [--threads 2] [--rounds 5]
        [--photo-size 4032x3024] [--json benchmarks/results/photo_e2e.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import edgeclip  # noqa: E402
import edgeclip.embedder as embedder_mod  # noqa: E402
import edgeclip.preprocess as P  # noqa: E402
from edgeclip.profiling.machine import load_average, machine_info  # noqa: E402
from edgeclip.profiling.photos import parse_photo_size, write_photos  # noqa: E402


def old_load_image(item, cfg=None, *, draft=True):
    """The loader before draft decoding (edgeclip 0.1.0, commit 4f5ef15): full-size decode, then
    ``ImageOps.exif_transpose`` (which copies the image even when there is nothing to rotate).
    Paths only (all this benchmark passes)."""
    img = P._open(Path(item))
    img.load()
    img = ImageOps.exif_transpose(img)
    return P.to_rgb(img)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flickr8k", type=Path, default=REPO.parent / "shared/data/flickr8k")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--photo-size", default="4032x3024")
    ap.add_argument("--json", default=str(REPO / "benchmarks/results/photo_e2e.json"))
    a = ap.parse_args(argv)
    size = parse_photo_size(a.photo_size)
    small = sorted((a.flickr8k / "images").glob("*.jpg"))[::97][: a.n]
    tmp = tempfile.TemporaryDirectory(prefix="edgeclip-photo-e2e-")
    t0 = time.perf_counter()
    photos = write_photos(small, a.n, size, Path(tmp.name))
    write_s = time.perf_counter() - t0
    emb = edgeclip.Embedder(threads=a.threads, towers=("image",))
    cfg = emb.manifest.towers["image"].preprocess
    new_loader = embedder_mod.load_image

    def e2e(files, loader):
        def run():
            embedder_mod.load_image = loader
            try:
                return emb.embed_images(files, batch_size=a.batch)
            finally:
                embedder_mod.load_image = new_loader
        return run

    cases = {"224/new": e2e(small, new_loader), "224/old": e2e(small, old_load_image),
             "photo/new": e2e(photos, new_loader), "photo/old": e2e(photos, old_load_image)}
    machine = machine_info()
    for fn in cases.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in cases}
    loads = [load_average()]

    def pairs(a_key: str, b_key: str, n: int) -> list[float]:
        """``n`` adjacent (a, b) timings, order alternating; per-pair time ratios b / a."""
        ratios = []
        for r in range(n):
            got = {}
            for k in ((a_key, b_key) if r % 2 == 0 else (b_key, a_key)):
                t = time.perf_counter()
                cases[k]()
                got[k] = time.perf_counter() - t
                times[k].append(got[k])
            ratios.append(got[b_key] / got[a_key])
        loads.append(load_average())
        return ratios
    # throughput ratio x/y = time(y) / time(x) for the same number of images
    r_224 = pairs("224/new", "224/old", 3 * a.rounds)          # old time / new time
    r_photo = pairs("photo/new", "224/new", a.rounds)          # 224 time / photo time
    r_photo_old = pairs("photo/old", "224/old", max(2, a.rounds // 2))
    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: a.n / v for k, v in med.items()}

    # single-thread preprocessing per image, old vs new, adjacent pairs
    def prep(files, loader):
        return lambda: [P.Normalizer(cfg)(np.asarray(P.resize_crop(loader(f, cfg), cfg)))
                        for f in files]
    many = sorted((a.flickr8k / "images").glob("*.jpg"))[:50]
    pcases = {"224/new": (prep(many, P.load_image), len(many)),
              "224/old": (prep(many, old_load_image), len(many)),
              "photo/new": (prep(photos[:4], P.load_image), min(4, a.n)),
              "photo/old": (prep(photos[:4], old_load_image), min(4, a.n))}
    ptimes: dict[str, list[float]] = {key: [] for key in pcases}
    for r in range(5 * a.rounds):
        keys = ["224/new", "224/old"] + (["photo/new", "photo/old"] if r < a.rounds else [])
        for key in (keys if r % 2 == 0 else keys[::-1]):
            fn, count = pcases[key]
            t = time.process_time()
            fn()
            ptimes[key].append((time.process_time() - t) / count * 1e3)
    prep_ms = {key: round(statistics.median(v), 3) for key, v in ptimes.items()}
    prep_ratio_224 = statistics.median(o / n for n, o in zip(ptimes["224/new"],
                                                             ptimes["224/old"]))

    # quality: drafted vs full decode (same EXIF handling, same resize), default model
    full = np.stack([P.Normalizer(cfg)(np.asarray(P.resize_crop(P.load_image(f, cfg, draft=False),
                                                                cfg))) for f in photos])
    runner = emb._runners["image"]
    in_name = emb.manifest.towers["image"].inputs[0].name

    def embed(x):
        e = np.concatenate([runner.run({in_name: x[i:i + 16]}) for i in range(0, len(x), 16)])
        return e / np.linalg.norm(e, axis=1, keepdims=True)
    ref = embed(full)
    quality = {}
    saved = P.DRAFT_MARGIN
    try:
        for margin in (1.0, 1.5, 2.0):
            P.DRAFT_MARGIN = margin
            x = np.stack([P.preprocess_image(f, cfg) for f in photos])
            cos = (embed(x) * ref).sum(1)
            quality[f"margin_{margin:g}"] = {
                "decoded_size": list(P.load_image(photos[0], cfg).size),
                "cosine_mean": round(float(cos.mean()), 5),
                "cosine_min": round(float(cos.min()), 5),
                "pixel_mean_abs_diff": round(float(np.abs(x - full).mean()), 4)}
    finally:
        P.DRAFT_MARGIN = saved

    res = {
        "command": " ".join(["python", "benchmarks/photo_e2e.py", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine, "threads": a.threads, "decode_workers": emb._workers,
        "load_average_per_round": loads,
        "note": ("ratios from interleaved rounds in one process on a shared 2-core machine "
                 "(other jobs running: see load averages); the photos are real 224-px Flickr8k "
                 "images upscaled to the photo size (smoother than camera originals)."),
        "model": emb.model_name, "precision": emb.precision, "n_images": a.n, "batch": a.batch,
        "photo_size": list(size), "photo_exif_orientations": "every third: 6, 3, 8",
        "photo_write_seconds": round(write_s, 1), "rounds": a.rounds,
        "e2e_seconds_median": {k: round(v, 4) for k, v in med.items()},
        "e2e_images_per_s": {k: round(v, 2) for k, v in ips.items()},
        "ratio_method": ("medians of per-pair ratios of adjacent calls (order alternating): "
                         "the two sides of a pair see the same machine load"),
        "photo_over_224_new": round(statistics.median(r_photo), 3),
        "photo_over_224_old": round(statistics.median(r_photo_old), 3),
        "photo_speedup_new_over_old": round(ips["photo/new"] / ips["photo/old"], 2),
        "224_new_over_old": round(statistics.median(r_224), 3),
        "pair_ratios": {"224_new_over_old": [round(x, 3) for x in r_224],
                        "photo_over_224_new": [round(x, 3) for x in r_photo],
                        "photo_over_224_old": [round(x, 3) for x in r_photo_old]},
        "preprocess_ms_per_image_1thread (CPU time)": prep_ms,
        "preprocess_224_new_over_old_speed (CPU time, pairs)": round(prep_ratio_224, 3),
        "draft_margin": {"chosen": saved, **quality},
        "targets": {"photo_over_224>=0.25": statistics.median(r_photo) >= 0.25,
                    "224_not_regressed(>=0.95)": statistics.median(r_224) >= 0.95,
                    "draft_cosine_mean>=0.995": quality[f"margin_{saved:g}"]["cosine_mean"]
                    >= 0.995},
        "raw_seconds": times,
    }
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: res[k] for k in (
        "e2e_images_per_s", "photo_over_224_new", "photo_over_224_old", "224_new_over_old",
        "preprocess_ms_per_image_1thread (CPU time)",
        "preprocess_224_new_over_old_speed (CPU time, pairs)", "draft_margin", "targets")},
        indent=1))
    print(f"load averages: {loads}")
    print(f"written {a.json}")


if __name__ == "__main__":
    main()
