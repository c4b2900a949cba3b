"""TensorRT check on a GPU machine: build fp16 and int8 engines, compare with ONNX Runtime fp32,
time them. Prints one table; exits 1 when a cosine check fails, 2 when TensorRT cannot run here.

    python benchmarks/gpu_check.py BUNDLE [--images DIR] [--n 64] [--batch-sizes 1,8,32]
        [--profile export/targets/jetson-orin-nano.toml] [--workspace 1024] [--no-build]
        [--json benchmarks/results/gpu_check.json]

BUNDLE needs fp16 graphs and, for int8, Q/DQ graphs exported with ``--target tensorrt``; the
engines are written into BUNDLE (as ``edgeclip build-engine`` does). Cosine: per item, TensorRT
embedding vs ONNX Runtime fp32 (CPU) embedding of the same real image or caption; pass when the
minimum is >= 0.999 (fp16) or >= 0.99 (int8). Timing: the runner alone (preprocessed batches),
interleaved rounds (``edgeclip.profiling.loop``), ONNX Runtime fp32 on the same machine as
reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

THRESHOLD = {"fp16": 0.999, "int8": 0.99}
REPO = Path(__file__).resolve().parents[1]


def real_inputs(images_dir: Path | None, n: int):
    from edgeclip.profiling.inputs import image_items, texts
    items, src_i = image_items(n, images_dir)
    strings, src_t = texts(n, images_dir)
    return items, strings, f"images: {src_i}; captions: {src_t}"


def time_runner(runner, feeds: dict, batch: int, duration: float) -> dict:
    """Runner latency at one batch size (bench loop when present, else a plain loop)."""
    def fn():
        return runner.run(feeds)

    try:
        from edgeclip.profiling.loop import Cell, measure_interleaved
        from edgeclip.profiling.stats import summarize
        cell = Cell(key=(batch,), run=fn)
        measure_interleaved([cell], warmup=5, duration=duration)
        s = summarize(cell.times, batch)
        return {"p50_ms": s["latency_p50_ms"], "items_per_s": s["throughput_items_per_s"]}
    except ImportError:
        for _ in range(5):
            fn()
        times = []
        t_end = time.perf_counter() + duration
        while time.perf_counter() < t_end or len(times) < 3:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        p50 = float(np.median(times)) * 1e3
        return {"p50_ms": p50, "items_per_s": batch / (p50 / 1e3)}


def feeds_for(emb, tower: str, items, strings, batch: int) -> dict:
    spec = emb.manifest.tower(tower)
    if tower == "image":
        from edgeclip.preprocess import preprocess_image
        px = np.stack([preprocess_image(items[i % len(items)], spec.preprocess)
                       for i in range(batch)])
        return {spec.inputs[0].name: px}
    ids, mask = emb.tokenize([strings[i % len(strings)] for i in range(batch)])
    return {s.name: (mask if "mask" in s.name else ids) for s in spec.inputs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--images", type=Path, default=None,
                    help="folder of real images (default: Flickr8k if found)")
    ap.add_argument("--n", type=int, default=64, help="images and captions for the cosine check")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--duration", type=float, default=2.0, help="seconds of timing per cell")
    ap.add_argument("--profile", default=None, help="target profile for build-engine")
    ap.add_argument("--workspace", type=int, default=None, help="MiB")
    ap.add_argument("--precisions", default="fp16,int8")
    ap.add_argument("--no-build", action="store_true", help="use the engines already built")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks/results/gpu_check.json")
    a = ap.parse_args(argv)

    from edgeclip import Embedder
    from edgeclip.backends import make_runner
    from edgeclip.backends.tensorrt import tensorrt_unavailable_reason
    from edgeclip.errors import EdgeClipError
    from edgeclip.export.tensorrt_build import build_engines, pick_source, settings_from
    from edgeclip.manifest import load_bundle

    reason = tensorrt_unavailable_reason()
    if reason is not None:
        print(f"gpu_check: TensorRT cannot run here: {reason}", file=sys.stderr)
        return 2
    import tensorrt as trt
    from edgeclip.backends.cuda import get_cuda
    cuda = get_cuda()
    gpu = f"{cuda.device_name()} (sm {'.'.join(map(str, cuda.compute_capability()))})"

    manifest, bundle = load_bundle(a.bundle)
    towers = [t for t in ("image", "text") if t in manifest.towers]
    precisions = []
    for p in [x.strip() for x in a.precisions.split(",") if x.strip()]:
        try:
            for t in towers:
                pick_source(manifest.tower(t), t, p, bundle)
            precisions.append(p)
        except EdgeClipError as e:
            print(f"skip {p}: {e}", file=sys.stderr)
    if not a.no_build:
        for p in precisions:
            t0 = time.perf_counter()
            build_engines(bundle, settings_from(a.profile, p, a.workspace, None), tuple(towers))
            print(f"built {p} engines in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    items, strings, source = real_inputs(a.images, a.n)
    ref = Embedder(bundle, backend="onnxruntime", precision="fp32")
    ref_emb = {"image": ref.embed_images(items), "text": ref.embed_texts(strings)}
    batches = [int(b) for b in a.batch_sizes.split(",") if b.strip()]
    manifest, bundle = load_bundle(bundle)
    rows, failures = [], []
    for tower in towers:
        ref_runner = make_runner(manifest, bundle, tower, backend="onnxruntime", precision="fp32")
        cells = [("onnxruntime-cpu", "fp32", ref_runner, None)]
        for p in precisions:
            emb = Embedder(bundle, backend="tensorrt", precision=p, towers=(tower,))
            got = emb.embed_images(items) if tower == "image" else emb.embed_texts(strings)
            cos = np.sum(got * ref_emb[tower], axis=1)
            ok = float(cos.min()) >= THRESHOLD[p]
            if not ok:
                failures.append(f"{tower} {p}: min cosine {cos.min():.5f} < {THRESHOLD[p]}")
            runner = make_runner(manifest, bundle, tower, backend="tensorrt", precision=p)
            cells.append(("tensorrt", p, runner, (float(cos.min()), float(cos.mean()), ok)))
        for backend, p, runner, cos in cells:
            for b in batches:
                if b > runner.max_batch:
                    continue
                t = time_runner(runner, feeds_for(ref, tower, items, strings, b), b, a.duration)
                rows.append({"tower": tower, "backend": backend, "precision": p, "batch": b,
                             **t, "cos_min": cos[0] if cos else None,
                             "cos_mean": cos[1] if cos else None,
                             "pass": cos[2] if cos else None})

    print(f"\nTensorRT {trt.__version__} on {gpu}; {cuda.name}; {source}; n={a.n}")
    print(f"{'tower':6} {'backend':16} {'prec':5} {'batch':>5} {'p50 ms':>9} {'items/s':>10} "
          f"{'cos min':>8} {'cos mean':>9} check")
    for r in rows:
        cmin = f"{r['cos_min']:.5f}" if r["cos_min"] is not None else "ref"
        cmean = f"{r['cos_mean']:.5f}" if r["cos_mean"] is not None else ""
        check = "" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL")
        print(f"{r['tower']:6} {r['backend']:16} {r['precision']:5} {r['batch']:5d} "
              f"{r['p50_ms']:9.3f} {r['items_per_s']:10.1f} {cmin:>8} {cmean:>9} {check}")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"tensorrt": trt.__version__, "gpu": gpu, "cuda": cuda.name,
                                  "inputs": source, "n": a.n, "rows": rows,
                                  "failures": failures}, indent=2) + "\n")
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
