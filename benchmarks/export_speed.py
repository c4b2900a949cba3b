"""INT8 (cpu target) vs FP32 ONNX Runtime speed, fidelity and size of an exported bundle.

Student: EfficientNet-Lite0 (ImageNet weights) image tower + 2-layer MiniLM text tower
(``build_student("lite0-minilm2")``, projection heads untrained). Calibrates on Flickr8k train
images/captions, measures on dev. Timings: medians of interleaved rounds, same process.

    python benchmarks/export_speed.py [--flickr8k DIR] [--threads 2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def bench(sessions: dict[str, ort.InferenceSession], feed: dict, rounds: int, reps: int) -> dict:
    """Median ms per call of each session; sessions alternate within every round."""
    times = {k: [] for k in sessions}
    for s in sessions.values():
        for _ in range(3):
            s.run(None, feed)
    for _ in range(rounds):
        for k, s in sessions.items():
            t = time.perf_counter()
            for _ in range(reps):
                s.run(None, feed)
            times[k].append((time.perf_counter() - t) * 1000 / reps)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flickr8k", type=Path, default=REPO.parent / "shared" / "data" / "flickr8k")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib-count", type=int, default=256)
    ap.add_argument("--calib-method", default="minmax")
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--bundle", type=Path, default=None, help="keep the bundle here")
    args = ap.parse_args()

    import torch
    from edgeclip.distill.models import build_student
    from edgeclip.export.calibration import image_batches, text_batches
    from edgeclip.export.data import load_split, sample
    from edgeclip.export.pipeline import export_dual_encoder
    from edgeclip.export.verify import cosine
    from edgeclip.tokenize import Tokenizer

    torch.set_num_threads(args.threads)
    model = build_student("lite0-minilm2", pretrained=True).eval()
    tmp = tempfile.TemporaryDirectory(prefix="edgeclip-bench-")
    bundle = args.bundle or Path(tmp.name) / "bundle"
    t0 = time.perf_counter()
    report = export_dual_encoder(model, bundle, ("fp32", "int8"), "cpu",
                                 calib_data=args.flickr8k, calib_count=args.calib_count,
                                 calib_method=args.calib_method, verify_count=32,
                                 threads=args.threads)
    export_s = time.perf_counter() - t0

    from edgeclip.manifest import load_bundle
    manifest, _ = load_bundle(bundle)
    quant = {}
    for tower in ("image", "text"):
        q = manifest.tower(tower).find_model(precision="int8")[0].extra["quantization"]
        quant[tower] = {**{k: v for k, v in q.items() if k != "excluded_nodes"},
                        "excluded_nodes": len(q["excluded_nodes"])}
    dev = load_split(args.flickr8k, "dev")
    imgs = sample(dev.images, args.n_eval)
    caps = sample(dev.captions, args.n_eval)
    tok = Tokenizer(bundle / "tokenizer.json", int(model.context_length))
    img_feed = next(image_batches(imgs[:8], model.preprocess, 8))
    txt_feed = next(text_batches(caps[:8], tok, 8))
    from edgeclip.profiling.machine import machine_info
    res: dict = {"command": " ".join(["python", "benchmarks/export_speed.py", *sys.argv[1:]]),
                 "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                 "machine": {**machine_info(), "threads": args.threads,
                             "onnxruntime": ort.__version__},
                 "model": model.name, "export_seconds": round(export_s, 1),
                 "calibration": {"method": args.calib_method, "count": args.calib_count},
                 "quantization": quant,
                 "verification": report["cosine"]}
    for tower, feed in (("image", img_feed), ("text", txt_feed)):
        s = {p: session(bundle / f"{tower}.{p}.onnx", args.threads)
             for p in ("fp32", "int8.cpu")}
        speed = {}
        for b in (1, 8):
            fb = {k: v[:b] for k, v in feed.items()}
            ms = bench(s, fb, args.rounds, 20 if b == 1 else 5)
            speed[f"b{b}"] = {"fp32_ms": round(ms["fp32"], 3), "int8_ms": round(ms["int8.cpu"], 3),
                              "speedup": round(ms["fp32"] / ms["int8.cpu"], 3)}
        batches = (image_batches(imgs, model.preprocess, 8) if tower == "image"
                   else text_batches(caps, tok, 32))
        a, b_ = [], []
        for fb in batches:
            a.append(s["fp32"].run(None, fb)[0])
            b_.append(s["int8.cpu"].run(None, fb)[0])
        cos = cosine(np.concatenate(a), np.concatenate(b_))
        res[tower] = {"speed": speed, "int8_vs_fp32_cosine": {
            "n": int(len(cos)), "min": round(float(cos.min()), 5),
            "mean": round(float(cos.mean()), 5)}}
    size = {p: sum((bundle / f"{t}.{p}.onnx").stat().st_size for t in ("image", "text"))
            for p in ("fp32", "int8.cpu")}
    tok_size = (bundle / "tokenizer.json").stat().st_size
    res["size_bytes"] = {"fp32_models": size["fp32"], "int8_models": size["int8.cpu"],
                         "tokenizer": tok_size,
                         "int8_over_fp32_models": round(size["int8.cpu"] / size["fp32"], 4),
                         "int8_over_fp32_with_tokenizer":
                             round((size["int8.cpu"] + tok_size) / (size["fp32"] + tok_size), 4)}
    res["targets"] = {
        "image_b1_speedup>=1.5": res["image"]["speed"]["b1"]["speedup"] >= 1.5,
        "image_b8_speedup>=1.8": res["image"]["speed"]["b8"]["speedup"] >= 1.8,
        "text_int8_faster": all(v["speedup"] > 1 for v in res["text"]["speed"].values()),
        "int8_cosine>=0.99": min(res[t]["int8_vs_fp32_cosine"]["min"] for t in ("image", "text"))
        >= 0.99,
        "int8_size<=35%": res["size_bytes"]["int8_over_fp32_with_tokenizer"] <= 0.35,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "export_speed.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: res[k] for k in ("image", "text", "size_bytes", "targets")}, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
