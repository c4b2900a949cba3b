"""Round 2 (or 3) of the Flickr8k experiment (issue 17) in one table: seeds, spread, ablations.

    python benchmarks/flickr8k_r2_summary.py [--round 3] [--out .../summary.json]

Reads the test-split evaluations that ``ROUND=2 bash benchmarks/flickr8k_experiment.sh`` writes
(``benchmarks/results/flickr8k-r2/<run>.test.json``; seed s > 0 is ``student-<preset>-s<s>``) and
the round-2 teacher's. ``clip`` students learn from no teacher, so round 1's ``clip`` seed 0
(``benchmarks/results/flickr8k/student-clip.test.json``: the same student, budget and data) counts
as one of its seeds; in round 3 (``--round 3``: ``benchmarks/results/flickr8k-r3/``, its teacher
``teacher.test.json``) round 2's ``clip`` seeds 1 and 2 count as well. Prints a markdown table (mean, sample standard deviation and range over
seeds; each ablation against the ``cona`` mean) and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import statistics
from pathlib import Path

R2 = Path("benchmarks/results/flickr8k-r2")
R1 = Path("benchmarks/results/flickr8k")
TEACHER = R2 / "teacher-mpnet-aug1.test.json"
ROUNDS = {2: (R2, TEACHER), 3: (Path("benchmarks/results/flickr8k-r3"),
                               Path("benchmarks/results/flickr8k-r3/teacher.test.json"))}
ABLATIONS = {"no-intra_ts": "intra-modal teacher-student (TI-SI, TT-ST)",
             "no-inter_ts": "inter-modal teacher-student (TI-ST, TT-SI)",
             "no-inter_ss": "inter-modal student-student (SI-ST)",
             "no-intra_ss": "intra-modal student-student (SI-SI, ST-ST)"}


def load(path: Path) -> dict:
    d = json.loads(path.read_text())
    return {k: d[k] for k in ("t2i_r1", "i2t_r1", "mean_recall")}


def seeds_of(preset: str, res: Path = R2) -> dict[int, tuple[Path, dict]]:
    out = {}
    # `clip` learns from no teacher: earlier rounds' seeds are seeds of the same student
    for d in [res] + ([R2] if preset == "clip" and res != R2 else []):
        for p in sorted(d.glob(f"student-{preset}*.test.json")):
            m = re.fullmatch(rf"student-{preset}(?:-s(\d+))?\.test\.json", p.name)
            if m and int(m.group(1) or 0) not in out:
                out[int(m.group(1) or 0)] = (p, load(p))
    if preset == "clip" and 0 not in out and (R1 / "student-clip.test.json").is_file():
        out[0] = (R1 / "student-clip.test.json", load(R1 / "student-clip.test.json"))
    return dict(sorted(out.items()))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--round", type=int, choices=sorted(ROUNDS), default=2)
    ap.add_argument("--out", type=Path, default=None, help="default: <results of the round>/summary.json")
    a = ap.parse_args(argv)
    res, teacher_json = ROUNDS[a.round]
    out = a.out or res / "summary.json"
    teacher = load(teacher_json)["mean_recall"]
    result = {"command": "python benchmarks/flickr8k_r2_summary.py" + (f" --round {a.round}" if a.round != 2 else ""),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "teacher_test_mean_recall": teacher, "presets": {}, "ablations": {}}
    lines = ["| student | seeds | test mean recall per seed | mean | std | range | t2i R@1 mean | "
             "i2t R@1 mean | % of teacher |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for preset in ("clip", "fd", "cona"):
        s = seeds_of(preset, res)
        if not s:
            continue
        mr = [r["mean_recall"] for _, r in s.values()]
        row = {"seeds": list(s), "files": [str(p) for p, _ in s.values()], "mean_recall": mr,
               "mean": statistics.mean(mr), "std": statistics.stdev(mr) if len(mr) > 1 else None,
               "range": max(mr) - min(mr),
               "t2i_r1_mean": statistics.mean(r["t2i_r1"] for _, r in s.values()),
               "i2t_r1_mean": statistics.mean(r["i2t_r1"] for _, r in s.values())}
        result["presets"][preset] = row
        std = f"{row['std']:.2f}" if row["std"] is not None else "-"
        lines.append(f"| `{preset}` | {', '.join(map(str, s))} | {', '.join(f'{x:.1f}' for x in mr)} | "
                     f"**{row['mean']:.2f}** | {std} | {row['range']:.1f} | {row['t2i_r1_mean']:.1f} | "
                     f"{row['i2t_r1_mean']:.1f} | {100 * row['mean'] / teacher:.0f}% |")
    cona = result["presets"].get("cona", {}).get("mean")
    for key, what in ABLATIONS.items():
        p = res / f"cona-{key}.test.json"
        if not p.is_file():
            continue
        r = load(p)
        result["ablations"][key] = {**r, "vs_cona_mean": None if cona is None else r["mean_recall"] - cona}
        delta = "" if cona is None else f" ({r['mean_recall'] - cona:+.2f} vs `cona` mean)"
        lines.append(f"| `cona` without {what} | 0 | {r['mean_recall']:.1f}{delta} | | | | "
                     f"{r['t2i_r1']:.1f} | {r['i2t_r1']:.1f} | {100 * r['mean_recall'] / teacher:.0f}% |")
    pr = result["presets"]
    if "cona" in pr and "fd" in pr:
        gap = pr["cona"]["mean"] - pr["fd"]["mean"]
        spread = max(pr[k]["range"] for k in ("cona", "fd"))
        result["cona_minus_fd"] = gap
        result["largest_seed_range_cona_fd"] = spread
        lines.append(f"\n`cona` - `fd` (means): {gap:+.2f}; the larger seed range of the two: {spread:.2f}; "
                     f"teacher {teacher:.1f}.")
    # every run: dev mean recall per epoch (what chose its checkpoint) and test
    lines += ["", "| run | dev mean recall per epoch | test t2i R@1 | test i2t R@1 | test mean recall |",
              "| --- | --- | --- | --- | --- |"]
    result["runs"] = {}
    for p in sorted(res.glob("*.test.json")):
        name = p.name[:-len(".test.json")]
        m = res / "metrics" / f"{name}.jsonl"
        if not m.is_file():
            continue  # exports and teachers have no student metrics here
        dev = [json.loads(line)["mean_recall"] for line in open(m) if "mean_recall" in line]
        r = load(p)
        result["runs"][name] = {"dev_mean_recall_per_eval": dev, **r}
        lines.append(f"| `{name}` | {', '.join(f'{x:.2f}' for x in dev)} | {r['t2i_r1']:.1f} | "
                     f"{r['i2t_r1']:.1f} | {r['mean_recall']:.1f} |")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
