"""Zero-shot classification accuracy of a bundle (default: the built-in model) on real photos:
Flickr8k test-split images labelled by keyword rules on their five captions.

    python benchmarks/zeroshot.py [--bundle B] [--data ../shared/data/flickr8k] [--split test]
        [--out benchmarks/results/zeroshot.json]

Labelling rule (fixed before measuring; nothing here is tuned on the result): each class has a
caption regex (``CLASSES``). An image is kept with class c when at least 3 of its 5 captions match
c's regex AND no caption matches any other class's regex (the captions agree on one class and
mention no other). Every kept image is classified among all classes with
``Embedder.classify`` (the default templates, and a single "a photo of a {}." template for
comparison). Reported: top-1 accuracy, balanced accuracy (mean per-class recall; the set is
dog-heavy, as Flickr8k is), per-class counts and recalls, the confusion of each class's errors.
"""

from __future__ import annotations

import argparse
import collections
import csv
import datetime
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np

# class -> (prompt label, caption regex); matched on lower-cased captions
CLASSES: dict[str, tuple[str, str]] = {
    "dog": ("dog", r"\b(dog|dogs|puppy|puppies)\b"),
    "cat": ("cat", r"\b(cat|cats|kitten|kittens)\b"),
    "horse": ("horse", r"\b(horse|horses|pony)\b"),
    "bicycle": ("bicycle", r"\b(bicycle|bicycles|bike|bikes|biker|bikers|cyclist|cyclists|bmx)\b"),
    "motorcycle": ("motorcycle", r"\b(motorcycle|motorcycles|motorbike|motocross|dirt bike)\b"),
    "boat": ("boat", r"\b(boat|boats|kayak|canoe|raft)\b"),
    "beach": ("beach", r"\b(beach|ocean|sand|shore)\b"),
    "snow": ("snowy landscape", r"\b(snow|snowy|ski|skier|skiers|skiing|snowboard\w*)\b"),
    "mountain": ("mountain", r"\b(mountain|mountains|cliff)\b"),
    "street": ("city street", r"\b(street|city|sidewalk)\b"),
    "swimming pool": ("swimming pool", r"\bpool\b"),
    "football": ("football game", r"\bfootball\b"),
    "soccer": ("soccer game", r"\bsoccer\b"),
    "basketball": ("basketball game", r"\bbasketball\b"),
    "skateboard": ("skateboarder", r"\b(skateboard\w*|skater|skate)\b"),
    "surfing": ("surfer", r"\bsurf\w*\b"),
    "climbing": ("rock climber", r"\b(climb\w*|climber)\b"),
    "baby": ("baby", r"\b(baby|infant|toddler)\b"),
}
MIN_AGREE = 3


def label_images(root: Path, split: str) -> list[tuple[str, str]]:
    caps: dict[str, list[str]] = collections.defaultdict(list)
    with open(root / "captions.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            caps[r["image"]].append(r["caption"].lower())
    names = [ln.strip() for ln in (root / "splits" / f"{split}.txt").read_text().splitlines()
             if ln.strip()]
    pats = {k: re.compile(p) for k, (_, p) in CLASSES.items()}
    out = []
    for n in names:
        hits = {k: sum(bool(p.search(c)) for c in caps[n]) for k, p in pats.items()}
        agree = [k for k, v in hits.items() if v >= MIN_AGREE]
        mentioned = [k for k, v in hits.items() if v >= 1]
        if len(agree) == 1 and mentioned == agree:
            out.append((n, agree[0]))
    return out


def score(probs: np.ndarray, truth: list[int], classes: list[str]) -> dict:
    pred = probs.argmax(1)
    truth_a = np.asarray(truth)
    per = {}
    for j, c in enumerate(classes):
        m = truth_a == j
        if m.any():
            wrong = collections.Counter(classes[k] for k in pred[m] if k != j)
            per[c] = {"n": int(m.sum()), "recall": float((pred[m] == j).mean()),
                      "confused_with": dict(wrong.most_common(3))}
    return {"accuracy": float((pred == truth_a).mean()),
            "balanced_accuracy": float(np.mean([v["recall"] for v in per.values()])),
            "per_class": per}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--data", default="../shared/data/flickr8k")
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", default="benchmarks/results/zeroshot.json")
    a = ap.parse_args(argv)
    from edgeclip import Embedder
    from edgeclip.zeroshot import DEFAULT_TEMPLATES

    root = Path(a.data).expanduser()
    labelled = label_images(root, a.split)
    classes = list(CLASSES)
    prompts = [CLASSES[c][0] for c in classes]
    truth = [classes.index(c) for _, c in labelled]
    emb = Embedder(a.bundle)
    t0 = time.perf_counter()
    paths = [str(root / "images" / n) for n, _ in labelled]
    default = score(emb.classify(paths, prompts, progress=True), truth, classes)
    one = score(emb.classify(paths, prompts, templates=["a photo of a {}."]), truth, classes)
    counts = collections.Counter(c for _, c in labelled)
    res = {
        "command": shlex.join(["python", "benchmarks/zeroshot.py"] + (argv or sys.argv[1:])),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": emb.model_name, "model_identity": emb.identity, "logit_scale": emb.logit_scale,
        "data": f"{root.name} {a.split} split", "images_in_split": len(
            (root / "splits" / f"{a.split}.txt").read_text().split()),
        "images_labelled": len(labelled), "class_counts": dict(counts.most_common()),
        "rule": (f"class c when >= {MIN_AGREE} of the 5 captions match c's regex and no caption "
                 f"matches another class's regex"),
        "classes": {c: {"prompt_label": p, "caption_regex": r} for c, (p, r) in CLASSES.items()},
        "chance_accuracy_majority": max(counts.values()) / len(labelled),
        "templates_default": list(DEFAULT_TEMPLATES),
        "default_templates": default,
        "single_template_a_photo_of_a": {k: one[k] for k in ("accuracy", "balanced_accuracy")},
        "seconds": time.perf_counter() - t0, "load_average": list(os.getloadavg()),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"{len(labelled)} labelled {a.split} images, {len(counts)} classes: top-1 "
          f"{default['accuracy']:.3f}, balanced {default['balanced_accuracy']:.3f} "
          f"(one template: {one['accuracy']:.3f} / {one['balanced_accuracy']:.3f}; majority "
          f"class {res['chance_accuracy_majority']:.3f}) -> {a.out}")


if __name__ == "__main__":
    main()
