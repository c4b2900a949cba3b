"""A small dataset in the Flickr8k layout for the distillation tests (images drawn with numpy,
two shapes with matching captions so a model can learn something), plus one corrupt image."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ["red", "blue", "green", "yellow", "black", "white"]


def make_flickr_layout(root: Path, n_train=24, n_dev=8, corrupt=True, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "splits").mkdir(exist_ok=True)
    rows, names = [], {"train": [], "dev": []}
    colors = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30),
              "yellow": (230, 230, 30), "black": (10, 10, 10), "white": (245, 245, 245)}
    i = 0
    for split, n in (("train", n_train), ("dev", n_dev)):
        for _ in range(n):
            c = WORDS[i % len(WORDS)]
            arr = (rng.random((80, 96, 3)) * 40).astype(np.uint8) + np.array(colors[c], np.uint8) // 2
            name = f"img{i:03d}.jpg"
            Image.fromarray(arr).save(root / "images" / name, quality=90)
            for j in range(3):
                rows.append((name, f"a {c} dog {['runs', 'sits', 'plays'][j]} on the grass"))
            names[split].append(name)
            i += 1
    if corrupt:
        bad = "broken.jpg"
        (root / "images" / bad).write_bytes(b"not a jpeg at all")
        rows.append((bad, "a broken picture"))
        names["train"].append(bad)
    with open(root / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows(rows)
    for split, ns in names.items():
        (root / "splits" / f"{split}.txt").write_text("\n".join(ns) + "\n")
    return root
