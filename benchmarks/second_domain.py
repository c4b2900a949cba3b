"""The shipped default model outside Flickr8k: text-image retrieval on scikit-image's photographs.

No second image-caption dataset can be downloaded here. The only other real photographs on this
machine with a known subject are the 14 that scikit-image's wheel ships (astronaut, cat, coffee,
rocket, motorcycle, Hubble deep field, horse silhouette, coins, moon, grass, gravel, brick,
cameraman, retina): a different domain from Flickr8k's people-and-dogs snapshots (museum,
scientific and texture images, 303-2048 px). Their captions are the project's own one-line
descriptions (``edgeclip.export.data.BUILTIN_PHOTOS``, written before this benchmark existed and
not tuned on it), one per photo. Nothing is trained on them.

Reported for each precision of the bundle: text-to-image and image-to-text R@1 / R@5 over the
14-photo gallery, and, for scale, the same metrics on Flickr8k test galleries of the same size
(``--galleries`` random sets of 14 test images, one random caption of each; mean and spread), so
that the domain gap is a ratio measured with one protocol, in one run.

    python benchmarks/second_domain.py [--bundle B] [--data ../shared/data/flickr8k]
        [--galleries 200] [--out benchmarks/results/second_domain.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def recalls(img: np.ndarray, txt: np.ndarray) -> dict:
    """One caption per image, caption i belongs to image i: R@1/R@5 both ways (percent)."""
    s = txt @ img.T
    n = len(img)
    t2i = (s > s[np.arange(n), np.arange(n)][:, None]).sum(1)  # images ranked above the right one
    i2t = (s.T > s[np.arange(n), np.arange(n)][:, None]).sum(1)
    return {"t2i_r1": 100 * float((t2i < 1).mean()), "t2i_r5": 100 * float((t2i < 5).mean()),
            "i2t_r1": 100 * float((i2t < 1).mean()), "i2t_r5": 100 * float((i2t < 5).mean())}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=None, help="bundle (default: the built-in model)")
    ap.add_argument("--data", default=str(REPO.parent / "shared/data/flickr8k"))
    ap.add_argument("--galleries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/second_domain.json"))
    a = ap.parse_args(argv)

    from edgeclip import Embedder
    from edgeclip.export.data import builtin_samples, load_split
    demo = builtin_samples()
    flickr = load_split(a.data, "test") if Path(a.data).is_dir() else None
    rng = np.random.default_rng(a.seed)
    n = len(demo.images)
    res = {"command": shlex.join(["python", "benchmarks/second_domain.py",
                                  *(argv if argv is not None else sys.argv[1:])]),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": platform.machine(), "loadavg": list(os.getloadavg()),
           "source": "scikit-image's bundled photographs (skimage/data), captions from "
                     "edgeclip.export.data.BUILTIN_PHOTOS",
           "photos": [p.name for p in demo.images], "captions": demo.captions,
           "gallery_size": n, "flickr8k_galleries": a.galleries if flickr else 0,
           "precisions": {}}
    for prec in ("int8", "fp32"):
        t0 = time.perf_counter()
        with Embedder(a.bundle, precision=prec, threads=2) as e:
            out = {"skimage": recalls(e.embed_images([str(p) for p in demo.images]),
                                      e.embed_texts(demo.captions))}
            if flickr is not None:
                # one random caption per test image, embedded once; galleries drawn from them
                owners = np.asarray(flickr.txt_to_img)
                pick = np.array([rng.choice(np.flatnonzero(owners == i))
                                 for i in range(len(flickr.images))])
                img = e.embed_images([str(p) for p in flickr.images])
                txt = e.embed_texts([flickr.captions[j] for j in pick])
                per = [recalls(img[g], txt[g]) for g in
                       (rng.choice(len(img), size=n, replace=False) for _ in range(a.galleries))]
                out["flickr8k_test_same_size"] = {
                    k: {"mean": round(float(np.mean([r[k] for r in per])), 2),
                        "std": round(float(np.std([r[k] for r in per])), 2)} for k in per[0]}
                out["skimage_over_flickr8k_t2i_r1"] = round(
                    out["skimage"]["t2i_r1"] / out["flickr8k_test_same_size"]["t2i_r1"]["mean"], 3)
            out["seconds"] = round(time.perf_counter() - t0, 1)
        out["skimage"] = {k: round(v, 2) for k, v in out["skimage"].items()}
        res["precisions"][prec] = out
        print(prec, json.dumps(out), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"written {a.out}")


if __name__ == "__main__":
    main()
