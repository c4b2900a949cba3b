"""Greedy model soup of students of one teacher, then per-tower WiSE-FT with a general student.

    python benchmarks/soup_sweep.py --general runs/r1/cona-no-intra_ss \
        runs/r3x/cona-no-intra_ss runs/r3x/student-cona ... \
        [--image-alphas 0.8,0.9,1] [--text-alphas 0.6,0.7,0.8,0.9,1] \
        [--work runs/r3x/soup] [--out benchmarks/results/flickr8k-soup/soup_sweep.json] [--all]

The rule, fixed before any of it ran, chooses on Flickr8k **dev** only (test is never read here):

1. **Greedy soup** (Wortsman et al., "Model soups", ICML 2022, arXiv 2203.05482). The
   ingredients (run directories of `edgeclip distill` students of one architecture, trained from
   the same starting weights) are sorted by their own best dev mean recall (``metrics.jsonl``).
   The soup starts as the best one; each next ingredient is added when the uniform mean
   (`edgeclip merge ...`) with it has a dev mean recall >= the soup's so far, else skipped.
2. **Per-tower WiSE-FT** with ``--general`` (a student that keeps general knowledge, here round
   1's; the same starting weights): for every (image alpha, text alpha) of the grid,
   `edgeclip merge GENERAL SOUP --alpha IMAGE --text-alpha TEXT` is exported to FP32 and put
   through the demo gate that CI checks on the shipped default
   (``benchmarks/default_candidates.py``); dev is measured for those that pass.
3. The chosen checkpoint is the dev-best that passes the gate; ``benchmarks/ship_default.sh``
   ships it (``BEST=...``).

``--all`` is for ablations: the soup is the mean of every ingredient, dev is measured for every
merge, and nothing is chosen.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_candidates import best_dev  # noqa: E402
from wise_sweep import dev_recall, gate_summary, gated_row  # noqa: E402


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise SystemExit(f"{flag} {text!r}: give numbers in [0, 1] separated by commas") from None


def _merge(args: list[str], ckpt: Path) -> Path:
    if not (ckpt / "model.safetensors").is_file():
        subprocess.run(["edgeclip", "merge", *args, "--out", str(ckpt)], check=True,
                       stdout=subprocess.DEVNULL)
    return ckpt


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ingredients", nargs="+", type=Path, help="run directories of students")
    ap.add_argument("--general", type=Path, required=True, help="run directory of the general student")
    ap.add_argument("--image-alphas", default="0.8,0.9,1")
    ap.add_argument("--text-alphas", default="0.6,0.7,0.8,0.9,1")
    ap.add_argument("--all", action="store_true",
                    help="ablations: the soup is the mean of every ingredient (no greedy choice), "
                         "and dev is measured for every merge, passing or not")
    ap.add_argument("--data", default="../shared/data/flickr8k")
    ap.add_argument("--work", type=Path, default=Path("runs/r3x/soup"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/flickr8k-soup/soup_sweep.json"))
    a = ap.parse_args(argv)
    image_alphas = _floats(a.image_alphas, "--image-alphas")
    text_alphas = _floats(a.text_alphas, "--text-alphas")
    t_start = time.perf_counter()

    # 1. greedy soup on dev
    own = sorted(((best_dev(r), r) for r in a.ingredients), key=lambda x: -x[0])
    print("ingredients (own best dev): " + ", ".join(f"{r} {d:.2f}" for d, r in own), flush=True)
    soup = [own[0][1]]
    soup_dev = own[0][0]
    soup_ckpt = own[0][1] / "best"
    steps = [{"add": str(own[0][1]), "dev_mean_recall": own[0][0], "kept": True,
              "note": "the best ingredient's own best dev"}]
    if a.all:
        soup = [r for _, r in own]
        soup_ckpt = _merge([str(x / "best") for x in soup], a.work / f"all-n{len(soup)}" / "best")
        dev = dev_recall(soup_ckpt, a.data)
        soup_dev = dev["mean_recall"]
        steps = [{"add": [str(r) for r in soup], "checkpoint": str(soup_ckpt), "dev": dev,
                  "dev_mean_recall": soup_dev, "kept": True, "note": "--all: every ingredient"}]
        print(f"soup of all {len(soup)}: dev {soup_dev:.2f}", flush=True)
    for d, r in ([] if a.all else own[1:]):
        trial = soup + [r]
        ckpt = _merge([str(x / "best") for x in trial], a.work / f"greedy{len(steps)}-n{len(trial)}" / "best")
        dev = dev_recall(ckpt, a.data)
        kept = dev["mean_recall"] >= soup_dev
        steps.append({"add": str(r), "own_dev": d, "checkpoint": str(ckpt), "dev": dev,
                      "dev_mean_recall": dev["mean_recall"], "kept": kept})
        print(f"soup + {r}: dev {dev['mean_recall']:.2f} ({'kept' if kept else 'skipped'})", flush=True)
        if kept:
            soup, soup_dev, soup_ckpt = trial, dev["mean_recall"], ckpt

    # 2. per-tower WiSE-FT between the general student and the soup, demo gate, dev
    rows = []
    for ia in image_alphas:
        for ta in text_alphas:
            t0 = time.perf_counter()
            run = a.work / f"wise-i{ia:g}-t{ta:g}"
            ckpt = _merge([str(a.general / "best"), str(soup_ckpt), "--alpha", str(ia),
                           "--text-alpha", str(ta)], run / "best")
            row = gated_row(run, ckpt, a.data, a.all, t0, image_alpha=ia, text_alpha=ta)
            rows.append(row)
            print(f"image {ia:g} text {ta:g}: {gate_summary(row)}", flush=True)
    passing = [r for r in rows if r["passes"]] if not a.all else []  # an ablation chooses nothing
    chosen = max(passing, key=lambda r: r["dev"]["mean_recall"]) if passing else None
    result = {"command": "python " + " ".join([sys.argv[0]] + [str(x) for x in (argv or sys.argv[1:])]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "rule": "greedy soup on dev, then the dev-best (image alpha, text alpha) merge with "
                      "the general student among those passing the demo gate (FP32 export)",
              "general": str(a.general), "greedy_soup": steps,
              "soup": [str(r) for r in soup], "soup_checkpoint": str(soup_ckpt), "soup_dev": soup_dev,
              "grid": rows,
              "chosen": chosen["checkpoint"] if chosen else None,
              "chosen_alphas": [chosen["image_alpha"], chosen["text_alpha"]] if chosen else None,
              "chosen_dev": chosen["dev"] if chosen else None,
              "seconds": round(time.perf_counter() - t_start, 1)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"chosen: {result['chosen']} {result['chosen_alphas']} -> {a.out}")


if __name__ == "__main__":
    main()
