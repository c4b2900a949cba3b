"""INT8 (cpu target) vs FP32 ONNX Runtime speed, fidelity and size.

Default: the SHIPPED default model (edgeclip/models/default: CPU INT8 + FP16 graphs). Its FP32
graph is what ``Embedder(precision="fp32")`` runs on the CPU: the shipped FP16 graph upcast to FP32
at load (edgeclip.backends.fp16_upcast; the FP16 weights exactly, computed in FP32). Measures
INT8 vs FP32 vs FP16 speed (batch 1 and 8), INT8 fidelity to FP32 on Flickr8k dev, file sizes,
and the load time of each float path (upcast + optimize, cached optimized graph).

``--standin``: the earlier measurement on a stand-in (EfficientNet-Lite0 with ImageNet weights +
2-layer MiniLM, projection heads untrained), exported here with FP32 and INT8.

Timings: medians of interleaved rounds, same process.

    python benchmarks/export_speed.py [--flickr8k DIR] [--threads 2] [--out benchmarks/results]
    python benchmarks/export_speed.py --standin [...]
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
    ap.add_argument("--standin", action="store_true",
                    help="measure the ImageNet stand-in exported here (needs torch)")
    args = ap.parse_args()
    if not args.standin:
        return shipped(args)

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


def _median_ms(fn, reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def shipped(args) -> None:
    """INT8 vs FP32 (upcast FP16) vs FP16 of the shipped default model."""
    from edgeclip.backends.fp16_upcast import upcast_fp16_model
    from edgeclip.backends.onnxruntime import int8_cpu_options
    from edgeclip.embedder import default_model_path
    from edgeclip.export.data import load_split, sample
    from edgeclip.manifest import load_bundle
    from edgeclip.preprocess import preprocess_image
    from edgeclip.profiling.machine import load_average, machine_info
    from edgeclip.tokenize import Tokenizer

    bundle = default_model_path()
    manifest, _ = load_bundle(bundle)
    machine = machine_info()
    cfg = manifest.towers["image"].preprocess
    tokcfg = manifest.towers["text"].tokenizer
    tok = Tokenizer(bundle / tokcfg.file, tokcfg.context_length)
    dev = load_split(args.flickr8k, "dev")
    imgs = sample(dev.images, args.n_eval)
    caps = sample(dev.captions, args.n_eval)
    res: dict = {"command": " ".join(["python", "benchmarks/export_speed.py", *sys.argv[1:]]),
                 "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                 "machine": {**machine, "threads": args.threads, "onnxruntime": ort.__version__},
                 "model": manifest.model_name, "bundle": "edgeclip/models/default (shipped)",
                 "fp32_graph": ("the shipped FP16 graph upcast to FP32 at load "
                                "(edgeclip.backends.fp16_upcast): what precision='fp32' runs "
                                "on the CPU"),
                 "note": ("speeds are ratios of interleaved rounds on a shared 2-core machine; "
                          "see load_average")}
    loads = [load_average()]
    sizes = {}
    tmp = tempfile.TemporaryDirectory(prefix="edgeclip-speed-")
    for tower in ("image", "text"):
        f16 = bundle / f"{tower}.fp16.onnx"
        raw = f16.read_bytes()
        t = time.perf_counter()
        up = upcast_fp16_model(raw)
        upcast_ms = (time.perf_counter() - t) * 1000
        opt = Path(tmp.name) / f"{tower}.fp32.opt.onnx"
        o = ort.SessionOptions()
        o.optimized_model_filepath = str(opt)
        o.intra_op_num_threads = args.threads
        o.log_severity_level = 3
        ort.InferenceSession(up, o, providers=["CPUExecutionProvider"])

        def sess_from(src, optimize=True, int8=False):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                             else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
            # INT8 as the runtime runs it (session.x64quantprecision: exact on x86 without VNNI)
            int8_cpu_options(opts, "int8" if int8 else "fp32")
            return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        load = {
            "fp32_upcast_rewrite_ms": round(_median_ms(lambda: upcast_fp16_model(raw)), 1),
            "fp32_upcast_and_optimize_ms (first load)": round(
                _median_ms(lambda: sess_from(upcast_fp16_model(raw))), 1),
            "fp32_cached_optimized_graph_ms (later loads)": round(
                _median_ms(lambda: sess_from(str(opt), optimize=False)), 1),
            "fp16_optimize_ms": round(_median_ms(lambda: sess_from(str(f16))), 1),
            "int8_optimize_ms": round(_median_ms(
                lambda: sess_from(str(bundle / f"{tower}.int8.cpu.onnx"), int8=True)), 1),
        }
        del upcast_ms
        s = {"fp32": sess_from(str(opt), optimize=False),
             "int8": sess_from(str(bundle / f"{tower}.int8.cpu.onnx"), int8=True),
             "fp16": sess_from(str(f16))}
        if tower == "image":
            feed = {"pixel_values": np.stack([preprocess_image(p, cfg) for p in imgs[:8]])}
        else:
            ids, mask = tok(caps[:8])
            feed = {"input_ids": ids, "attention_mask": mask}
        speed = {}
        for b in (1, 8):
            fb = {k: v[:b] for k, v in feed.items()}
            ms = bench(s, fb, args.rounds, 20 if b == 1 else 5)
            loads.append(load_average())
            speed[f"b{b}"] = {"fp32_ms": round(ms["fp32"], 3), "int8_ms": round(ms["int8"], 3),
                              "fp16_ms": round(ms["fp16"], 3),
                              "int8_speedup_over_fp32": round(ms["fp32"] / ms["int8"], 3),
                              "fp32_speedup_over_fp16": round(ms["fp16"] / ms["fp32"], 3)}
        outs = {k: [] for k in s}
        for i in range(0, args.n_eval, 8 if tower == "image" else 32):
            if tower == "image":
                fb = {"pixel_values": np.stack([preprocess_image(p, cfg)
                                                for p in imgs[i:i + 8]])}
            else:
                ids, mask = tok(caps[i:i + 32])
                fb = {"input_ids": ids, "attention_mask": mask}
            for k, sess in s.items():
                outs[k].append(sess.run(None, fb)[0])

        def cos(a, b):
            a, b = np.concatenate(a), np.concatenate(b)
            c = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            return {"n": int(len(c)), "min": round(float(c.min()), 5),
                    "mean": round(float(c.mean()), 5)}
        res[tower] = {"speed": speed, "load_ms": load,
                      "int8_vs_fp32_cosine": cos(outs["int8"], outs["fp32"]),
                      "fp16_vs_fp32_cosine": cos(outs["fp16"], outs["fp32"])}
        sizes[tower] = {"int8": (bundle / f"{tower}.int8.cpu.onnx").stat().st_size,
                        "fp16": len(raw), "fp32 (upcast, not shipped)": len(up),
                        "fp32 cached optimized graph": opt.stat().st_size}
    shipped_total = sum((bundle / f).stat().st_size for f in manifest.files)
    fp32_total = sum(v["fp32 (upcast, not shipped)"] for v in sizes.values())
    res["size_bytes"] = {**sizes, "shipped_bundle_total": shipped_total,
                         "bundle_if_fp32_shipped_too": shipped_total + fp32_total,
                         "package_limit": 40_000_000,
                         "int8_over_fp32_models": round(
                             sum(v["int8"] for v in sizes.values()) / fp32_total, 4)}
    res["load_average"] = loads
    res["targets"] = {
        "image_b1_int8_speedup>=1.5": res["image"]["speed"]["b1"]["int8_speedup_over_fp32"] >= 1.5,
        "image_b8_int8_speedup>=1.8": res["image"]["speed"]["b8"]["int8_speedup_over_fp32"] >= 1.8,
        "text_int8_faster": all(v["int8_speedup_over_fp32"] > 1
                                for v in res["text"]["speed"].values()),
        "int8_cosine>=0.99": min(res[t]["int8_vs_fp32_cosine"]["min"] for t in ("image", "text"))
        >= 0.99,
        "fp32_faster_than_fp16_image": all(v["fp32_speedup_over_fp16"] > 1
                                           for v in res["image"]["speed"].values()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "export_speed.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: res[k] for k in ("image", "text", "size_bytes", "targets")}, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
