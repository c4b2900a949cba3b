"""Collect the round-2 teacher pilots (benchmarks/flickr8k_round2_pilots.sh) into
benchmarks/results/flickr8k_round2_pilots.json: per pilot its resolved config, dev retrieval per
epoch (mean recall, R@1), wall time and the load average around it. DEV only.

    python benchmarks/flickr8k_round2_collect.py [--runs runs/r2] [--note TEXT ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path


def pilot(time_json: Path) -> dict:
    t = json.loads(time_json.read_text())
    run = time_json.with_name(time_json.name[:-len(".time.json")])
    evals, cfg = [], {}
    if (run / "metrics.jsonl").is_file():
        for line in (run / "metrics.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r.get("eval"):
                evals.append({k: r[k] for k in ("epoch", "step", "eval", "mean_recall", "t2i_r1",
                                                "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5",
                                                "i2t_r10")})
    if (run / "config.json").is_file():
        c = json.loads((run / "config.json").read_text())
        cfg = {"model": c["model"], "data": {k: v for k, v in c["data"].items()
                                             if k.startswith("augment")},
               "train": {k: c["train"][k] for k in ("epochs", "batch_size", "lr",
                                                     "backbone_lr_mult", "warmup_steps")},
               "loss": c["loss"], "seed": c["run"]["seed"]}
    best = max(evals, key=lambda e: e["mean_recall"]) if evals else None
    return {**t, "run": str(run), "config": cfg, "dev_by_epoch": evals,
            "dev_best_mean_recall": best["mean_recall"] if best else None,
            "finished": bool(evals) and max(e["epoch"] for e in evals) + 1 == t["epochs"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs/r2")
    ap.add_argument("--out", default="benchmarks/results/flickr8k_round2_pilots.json")
    ap.add_argument("--note", action="append", default=[])
    a = ap.parse_args()
    pilots = [pilot(p) for p in sorted(Path(a.runs).glob("*.time.json"))]
    doc = {"what": "round-2 teacher pilots on Flickr8k DEV (test split not used for choosing)",
           "made": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other jobs "
                      f"(see loadavg_* per pilot): wall times are not comparable to a quiet run",
           "loadavg_now": os.getloadavg(), "notes": a.note, "pilots": pilots}
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    for p in pilots:
        print(f"{p['pilot']:<12} e{p['epochs']} dev best {p['dev_best_mean_recall']} "
              f"wall {p['wall_s']} s load {p['loadavg_start']}")


if __name__ == "__main__":
    main()
