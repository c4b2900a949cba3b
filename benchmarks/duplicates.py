"""Near-duplicate detection: choose the default threshold of `edgeclip duplicates` on Flickr8k
dev photos and measure its precision/recall on test photos.

    python benchmarks/duplicates.py [--bundle B] [--data ../shared/data/flickr8k] [--n 200]
        [--out benchmarks/results/duplicates.json]

For each split, the first ``--n`` photos of ``splits/<split>.txt`` and five copies of each:
a byte copy, a JPEG re-encode at quality 60, a 50% resize, a 10% crop (90% of width and height
kept, anchored at a random corner) and a 3-5 degree rotation (random sign; the black corners cut
away). Positives: every pair of items made from one photo. Negatives: pairs of DIFFERENT photos
of the same scene type (both photos have >= 2 captions naming one of ``SCENES``). All items are
embedded with the bundle (default: the built-in model) from the written files and grouped with
``edgeclip.index.duplicates.duplicate_groups`` (complete linkage: every pair in a group >= t).

Pair metrics at a threshold t: recall = same-photo pairs inside one group / all same-photo pairs;
precision = same-photo pairs inside one group / all pairs inside one group; the negatives' rate =
same-scene negative pairs inside one group / all of them. Complete linkage keeps two photos apart
when their copies disagree, so that rate understates what happens in a folder of different shots
of one scene (a burst) with no copies: the *standalone* rate is the share of same-scene pairs of
different photos whose own cosine is >= t (two such photos alone form a group).

The threshold is chosen on dev, precision first (a group invites deleting photos): the LOWEST t
whose dev pair precision is >= 0.99 (``PRECISION_TARGET``) AND whose dev standalone same-scene
rate is <= 1 - 0.99 (the same target for photos with no copies). The best-F1 t is recorded beside
it. Test is measured at the chosen t. The threshold belongs to the model: ``--write-manifest``
records it in the bundle's manifest (``extra.duplicate_threshold``), which `edgeclip duplicates`
uses for an index built with that model.
"""

from __future__ import annotations

import argparse
import collections
import csv
import datetime
import itertools
import json
import math
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

VARIANTS = ("copy", "jpeg60", "half", "crop10", "rotate")
PRECISION_TARGET = 0.99
SCENES = {
    "beach": r"\b(beach|ocean|shore)\b", "snow": r"\b(snow|snowy)\b",
    "water": r"\b(water|lake|river|pool)\b", "grass": r"\b(grass|grassy|field|park)\b",
    "street": r"\b(street|city|sidewalk)\b", "mountain": r"\b(mountain|mountains|cliff)\b",
    "football": r"\b(football|soccer|rugby)\b", "basketball": r"\bbasketball\b",
    "stage": r"\b(stage|concert|microphone)\b", "bike": r"\b(bike|bicycle|bmx)\b",
}


def make_variants(src: Path, out_dir: Path, rng: np.random.Generator) -> dict[str, Path]:
    """The five near-duplicates of ``src`` as files in ``out_dir``; name -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = src.stem
    paths = {"copy": out_dir / f"{stem}.copy{src.suffix}"}
    shutil.copyfile(src, paths["copy"])
    with Image.open(src) as im:
        img = im.convert("RGB")
    w, h = img.size
    paths["jpeg60"] = out_dir / f"{stem}.jpeg60.jpg"
    img.save(paths["jpeg60"], quality=60)
    paths["half"] = out_dir / f"{stem}.half.jpg"
    img.resize((max(1, w // 2), max(1, h // 2)), Image.LANCZOS).save(paths["half"], quality=90)
    cw, ch = round(w * 0.9), round(h * 0.9)
    x0 = 0 if rng.random() < 0.5 else w - cw
    y0 = 0 if rng.random() < 0.5 else h - ch
    paths["crop10"] = out_dir / f"{stem}.crop10.jpg"
    img.crop((x0, y0, x0 + cw, y0 + ch)).save(paths["crop10"], quality=90)
    angle = float(rng.uniform(3, 5)) * (1 if rng.random() < 0.5 else -1)
    rot = img.rotate(angle, resample=Image.BICUBIC, expand=False)
    s = math.sin(math.radians(abs(angle)))
    mx, my = math.ceil(h * s) + 1, math.ceil(w * s) + 1  # the black corners
    paths["rotate"] = out_dir / f"{stem}.rotate.jpg"
    rot.crop((mx, my, w - mx, h - my)).save(paths["rotate"], quality=90)
    return paths


def read_captions(root: Path) -> dict[str, list[str]]:
    caps: dict[str, list[str]] = collections.defaultdict(list)
    with open(root / "captions.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            caps[r["image"]].append(r["caption"].lower())
    return caps


def scene_negatives(names: list[str], caps: dict[str, list[str]]) -> list[tuple[int, int, str]]:
    """(i, j, scene) for pairs of different photos that both have >= 2 captions naming a scene."""
    pats = {k: re.compile(p) for k, p in SCENES.items()}
    scenes = [{k for k, p in pats.items() if sum(bool(p.search(c)) for c in caps[n]) >= 2}
              for n in names]
    out = []
    for i, j in itertools.combinations(range(len(names)), 2):
        shared = sorted(scenes[i] & scenes[j])
        if shared:
            out.append((i, j, shared[0]))
    return out


def build_set(root: Path, split: str, n: int, work: Path, seed: int = 0):
    """Items (paths), their source photo index, variant names, photo names, negatives."""
    names = [ln.strip() for ln in (root / "splits" / f"{split}.txt").read_text().splitlines()
             if ln.strip()][:n]
    rng = np.random.default_rng(seed)
    paths, source, kind = [], [], []
    for i, name in enumerate(names):
        src = root / "images" / name
        paths.append(src)
        source.append(i)
        kind.append("original")
        for v, p in make_variants(src, work / split, rng).items():
            paths.append(p)
            source.append(i)
            kind.append(v)
    negs = scene_negatives(names, read_captions(root))
    return paths, np.asarray(source), kind, names, negs


def pair_metrics(groups: list[list[int]], source: np.ndarray, kind: list[str],
                 negatives: list[tuple[int, int, str]]) -> dict:
    group_of = np.full(len(source), -1)
    for g, members in enumerate(groups):
        group_of[members] = g
    together = 0
    correct = 0
    for members in groups:
        m = len(members)
        together += m * (m - 1) // 2
        counts = collections.Counter(source[members].tolist())
        correct += sum(c * (c - 1) // 2 for c in counts.values())
    sizes = collections.Counter(source.tolist())
    positives = sum(c * (c - 1) // 2 for c in sizes.values())
    originals = {int(s): i for i, (s, k) in enumerate(zip(source, kind)) if k == "original"}
    per_variant = {}
    for v in VARIANTS:
        hits = [group_of[i] >= 0 and group_of[i] == group_of[originals[int(source[i])]]
                for i, k in enumerate(kind) if k == v]
        per_variant[v] = float(np.mean(hits)) if hits else None
    neg_grouped = [(i, j, s) for i, j, s in negatives
                   if group_of[originals[i]] >= 0
                   and group_of[originals[i]] == group_of[originals[j]]]
    precision = correct / together if together else 1.0
    recall = correct / positives if positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "recall_original_vs_variant": per_variant,
            "pairs_grouped": together, "positive_pairs": positives,
            "negative_pairs": len(negatives), "negative_pairs_grouped": len(neg_grouped),
            "negative_rate": len(neg_grouped) / len(negatives) if negatives else 0.0,
            "groups": len(groups), "largest_group": max((len(g) for g in groups), default=0)}


def standalone_cosines(vecs, source, kind, negatives) -> np.ndarray:
    """Cosine of each same-scene pair of different photos, originals alone."""
    orig = {int(s): i for i, (s, k) in enumerate(zip(source, kind)) if k == "original"}
    return np.array([float(vecs[orig[i]] @ vecs[orig[j]]) for i, j, _ in negatives])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--data", default="../shared/data/flickr8k")
    ap.add_argument("--n", type=int, default=200, help="photos per split")
    ap.add_argument("--out", default="benchmarks/results/duplicates.json")
    ap.add_argument("--write-manifest", action="store_true",
                    help="record the chosen threshold in the bundle's manifest "
                         "(extra.duplicate_threshold; outside the model's identity)")
    a = ap.parse_args(argv)
    from edgeclip import Embedder
    from edgeclip.index.duplicates import DEFAULT_THRESHOLD, duplicate_groups

    root = Path(a.data).expanduser()
    emb = Embedder(a.bundle)
    t0 = time.perf_counter()
    sets = {}
    with tempfile.TemporaryDirectory(prefix="edgeclip-dups-") as tmp:
        for split in ("dev", "test"):
            paths, source, kind, names, negs = build_set(root, split, a.n, Path(tmp))
            vecs = emb.embed_images([str(p) for p in paths], progress=True)
            sets[split] = (vecs, source, kind, negs)
            photo_names = names
    grid = [round(t, 3) for t in np.arange(0.70, 0.995, 0.005)]
    vecs, source, kind, negs = sets["dev"]
    sweep = {t: pair_metrics(duplicate_groups(vecs, t), source, kind, negs) for t in grid}
    dev_alone = standalone_cosines(vecs, source, kind, negs)
    for t in grid:
        sweep[t]["standalone_negative_rate"] = float(np.mean(dev_alone >= t))
    best_f1 = max(grid, key=lambda t: (round(sweep[t]["f1"], 6), t))
    best = min((t for t in grid if sweep[t]["precision"] >= PRECISION_TARGET
                and sweep[t]["standalone_negative_rate"] <= 1 - PRECISION_TARGET),
               default=grid[-1])
    best_v1 = min((t for t in grid if sweep[t]["precision"] >= PRECISION_TARGET), default=grid[-1])
    vecs, source, kind, negs = sets["test"]
    test_alone = standalone_cosines(vecs, source, kind, negs)
    test = pair_metrics(duplicate_groups(vecs, best), source, kind, negs)
    test["standalone_negative_rate"] = float(np.mean(test_alone >= best))
    test_default = (test if abs(best - DEFAULT_THRESHOLD) < 1e-9 else
                    pair_metrics(duplicate_groups(vecs, DEFAULT_THRESHOLD), source, kind, negs))
    test_default["standalone_negative_rate"] = float(np.mean(test_alone >= DEFAULT_THRESHOLD))
    # how similar are the positives and the negatives (test, cosine to the original)
    orig = {int(s): i for i, (s, k) in enumerate(zip(source, kind)) if k == "original"}
    cos_v = {v: [float(vecs[i] @ vecs[orig[int(source[i])]]) for i, k in enumerate(kind)
                 if k == v] for v in VARIANTS}
    cos_n = sorted(test_alone.tolist())
    hardest = sorted(((float(c), photo_names[i], photo_names[j], sc)
                      for c, (i, j, sc) in zip(test_alone, negs)), reverse=True)[:8]
    res = {
        "command": shlex.join(["python", "benchmarks/duplicates.py"] + (argv or sys.argv[1:])),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": emb.model_name, "model_identity": emb.identity,
        "data": str(root), "photos_per_split": a.n, "variants": list(VARIANTS),
        "scenes": SCENES, "grouping": "complete linkage (every pair in a group >= threshold)",
        "chosen_on": (f"dev: the lowest threshold with pair precision >= {PRECISION_TARGET} and "
                      f"standalone same-scene negative rate <= {1 - PRECISION_TARGET:.2f}"),
        "chosen_threshold": best, "default_threshold_in_code": DEFAULT_THRESHOLD,
        "dev_precision_only_threshold": best_v1,
        "dev_best_f1_threshold": best_f1, "dev_at_best_f1": sweep[best_f1],
        "dev_at_chosen": sweep[best], "test_at_chosen": test,
        "test_at_default_in_code": test_default,
        "dev_sweep": {str(t): {k: sweep[t][k] for k in ("precision", "recall", "f1",
                                                         "negative_rate",
                                                         "standalone_negative_rate")}
                      for t in grid},
        "dev_standalone_negative_cosine": {"max": float(dev_alone.max()),
                                           "p99": float(np.percentile(dev_alone, 99))},
        "test_cosine_to_original": {v: {"min": min(c), "p5": float(np.percentile(c, 5)),
                                        "median": float(np.median(c))}
                                    for v, c in cos_v.items()},
        "test_negative_cosine": {"max": cos_n[-1], "p99": float(np.percentile(cos_n, 99)),
                                 "median": float(np.median(cos_n))},
        "test_hardest_negatives": [{"images": [a_, b_], "scene": sc, "cosine": c}
                                   for c, a_, b_, sc in hardest],
        "seconds": time.perf_counter() - t0, "load_average": list(os.getloadavg()),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    if a.write_manifest:
        from edgeclip.index.duplicates import record_threshold
        record_threshold(emb.bundle_dir, best, source=res["command"])
        print(f"recorded extra.duplicate_threshold = {best} in {emb.bundle_dir / 'manifest.json'}")
    print(f"threshold {best} (dev F1 {sweep[best]['f1']:.3f}); test: precision "
          f"{test['precision']:.3f}, recall {test['recall']:.3f}, same-scene negatives grouped "
          f"{test['negative_pairs_grouped']}/{test['negative_pairs']}, standalone "
          f"{test['standalone_negative_rate']:.3%} -> {a.out}")


if __name__ == "__main__":
    main()
