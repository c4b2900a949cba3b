"""Weight-space ensembling sweep (WiSE-FT): a general student A, a specialised student B.

    python benchmarks/wise_sweep.py runs/r1/cona-no-intra_ss runs/r3x/cona-no-intra_ss \
        [--alphas 0,0.2,0.4,0.5,0.6,0.7,0.8,1] [--out benchmarks/results/flickr8k-r3/wise_sweep.json]

A and B are run directories of `edgeclip distill` (``best/``) of one student architecture trained
from the same starting weights (same config, same ``run.seed``): here round 1's shipped default
(its teacher knew less but generalised) and a student of round 3's stronger, Flickr8k-specialised
teacher. For each alpha, ``edgeclip merge A/best B/best --alpha`` writes
``<B>-wise/a<alpha>/best``; the script checks the demo gate that CI checks on the shipped default
(``benchmarks/default_candidates.py``: FP32 export through ``Embedder``) and, for those that pass
(all with ``--all-dev``), its **dev** mean recall (Flickr8k dev; test is never read here). The chosen alpha is the
dev-best among those passing the gate; ``benchmarks/ship_default.sh`` then ships it
(``BEST=<B>-wise/a<alpha>/best``).
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
from default_candidates import demo_gate, export_fp32  # noqa: E402


def dev_recall(ckpt: Path, data: str) -> dict:
    r = subprocess.run(["edgeclip", "eval", "--model", str(ckpt), "--data", data, "--split", "dev",
                        "--json"], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{ckpt}: `edgeclip eval` failed: {r.stderr.strip()}")
    m = json.loads(r.stdout)
    return {k: round(float(m[k]), 2) for k in ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5",
                                                "i2t_r10", "mean_recall")}


def gated_row(run: Path, ckpt: Path, data: str, all_dev: bool, t0: float, **keys) -> dict:
    """``keys`` + the demo gate of ``run``'s FP32 export + dev mean recall of ``ckpt`` (only where
    the gate passes, or every time with ``all_dev``) + seconds since ``t0``."""
    row = {**keys, "checkpoint": str(ckpt)}
    row.update(demo_gate(export_fp32(run)))
    # dev only where it can matter: a run that fails the gate cannot be shipped
    row["dev"] = dev_recall(ckpt, data) if row["passes"] or all_dev else None
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def gate_summary(row: dict) -> str:
    dev = f"{row['dev']['mean_recall']:.2f}" if row["dev"] else "not measured"
    return (f"dev {dev}, gate {'pass' if row['passes'] else 'FAIL'} "
            f"(misses: {row['zero_shot_misses'] + row['search_misses'] or 'none'})")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path, help="run directory of the general student (alpha 0)")
    ap.add_argument("b", type=Path, help="run directory of the specialised student (alpha 1)")
    ap.add_argument("--alphas", default="0,0.2,0.4,0.5,0.6,0.7,0.8,1")
    ap.add_argument("--data", default="../shared/data/flickr8k")
    ap.add_argument("--all-dev", action="store_true", help="measure dev for runs failing the gate too")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/flickr8k-r3/wise_sweep.json"))
    a = ap.parse_args(argv)
    try:
        alphas = [float(x) for x in a.alphas.split(",")]
    except ValueError:
        raise SystemExit(f"--alphas {a.alphas!r}: give numbers in [0, 1] separated by commas") from None
    root = a.b.parent / f"{a.b.name}-wise"
    rows = []
    for alpha in alphas:
        t0 = time.perf_counter()
        run = root / f"a{alpha:g}"
        ckpt = run / "best"
        if not (ckpt / "model.safetensors").is_file():
            subprocess.run(["edgeclip", "merge", str(a.a / "best"), str(a.b / "best"), "--alpha",
                            str(alpha), "--out", str(ckpt)], check=True, stdout=subprocess.DEVNULL)
        row = gated_row(run, ckpt, a.data, a.all_dev, t0, alpha=alpha)
        rows.append(row)
        print(f"alpha {alpha:g}: {gate_summary(row)}", flush=True)
    passing = [r for r in rows if r["passes"]]
    chosen = max(passing, key=lambda r: r["dev"]["mean_recall"]) if passing else None
    result = {"command": "python " + " ".join([sys.argv[0]] + [str(x) for x in (argv or sys.argv[1:])]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "a": str(a.a), "b": str(a.b),
              "rule": "the dev-best alpha among those passing the demo gate (FP32 export)",
              "chosen_alpha": chosen["alpha"] if chosen else None,
              "chosen": chosen["checkpoint"] if chosen else None, "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"chosen: alpha {result['chosen_alpha']} -> {a.out}")


if __name__ == "__main__":
    main()
