"""GPU check: one command that checks, in under 5 minutes, what a lent GPU machine can run.

    python benchmarks/gpu_check.py [BUNDLE] [--budget 280] [--json benchmarks/results/gpu_check.json]

In order, the first that this machine has (each stage says what it checked, and the summary what
was not checked and why):

1. **TensorRT engines** (TensorRT + a CUDA device from Python): builds fp16 (and, when the bundle
   has a Q/DQ graph exported with ``--target tensorrt``, int8) engines into BUNDLE like
   ``edgeclip build-engine``, embeds real images and captions with each engine and with ONNX
   Runtime on the CPU, and times the runners. Pass: min cosine to the engine's own source graph
   on ONNX Runtime >= 0.999 (fp16), >= 0.99 (int8, unfused Q/DQ reference), and int8 >= 0.95 to
   fp32 (the export's gate; the table's cosine columns are to fp32).
2. **ONNX Runtime CUDA provider** (onnxruntime-gpu): the bundle's GPU graph through
   ``Embedder(backend="onnxruntime-cuda")``; checks that the session really runs on
   ``CUDAExecutionProvider`` (``session.get_providers()``), cosine to the CPU and times both.
3. **torch CUDA distillation throughput**: a few training steps of the default student config
   (``configs/student_cona.toml``: its model and batch size) on CUDA, image-text pairs per second
   (student forward + backward + AdamW step with the InfoNCE loss between its towers; the teacher
   forward of real distillation is not included).

BUNDLE defaults to the built-in model. Exit status: 0 all checks passed, 1 a check failed,
2 nothing GPU here (the summary lists what was not checked).
"""


from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

THRESHOLD = {"fp16": 0.999, "int8": 0.99}  # vs the same graph on ONNX Runtime (CPU)
INT8_VS_FP32 = 0.95  # the export's int8 gate (edgeclip.export.verify)
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


def _probe() -> dict:
    """What this machine has, without starting anything heavy."""
    from edgeclip.backends.tensorrt import tensorrt_unavailable_reason
    out = {"tensorrt": tensorrt_unavailable_reason()}
    try:
        import onnxruntime as ort
        prov = ort.get_available_providers()
        out["ort_cuda"] = (None if "CUDAExecutionProvider" in prov else
                           f"onnxruntime {ort.__version__} has no CUDAExecutionProvider "
                           f"(providers: {', '.join(prov)}; onnxruntime-gpu has it)")
    except ImportError as e:
        out["ort_cuda"] = f"onnxruntime does not import ({e})"
    try:
        import torch
        out["torch_cuda"] = (None if torch.cuda.is_available() else
                             f"torch {torch.__version__} sees no CUDA device "
                             f"(torch.version.cuda = {torch.version.cuda})")
    except ImportError as e:
        out["torch_cuda"] = f"torch is not installed ({e})"
    return out


def check_tensorrt(a, bundle: Path, deadline: float) -> dict:
    import tensorrt as trt

    from edgeclip import Embedder
    from edgeclip.backends import make_runner
    from edgeclip.backends.cuda import get_cuda
    from edgeclip.errors import EdgeClipError
    from edgeclip.export.tensorrt_build import build_engines, pick_source, settings_from
    from edgeclip.manifest import load_bundle
    cuda = get_cuda()
    gpu = f"{cuda.device_name()} (sm {'.'.join(map(str, cuda.compute_capability()))})"
    manifest, bundle = load_bundle(bundle)
    towers = [t for t in ("image", "text") if t in manifest.towers]
    precisions, skipped = [], []
    for p in [x.strip() for x in a.precisions.split(",") if x.strip()]:
        try:
            for t in towers:
                pick_source(manifest.tower(t), t, p, bundle)
            precisions.append(p)
        except EdgeClipError as e:
            skipped.append(f"{p}: {e}")
    if not a.no_build:
        for p in precisions:
            t0 = time.perf_counter()
            build_engines(bundle, settings_from(a.profile, p, a.workspace, None), tuple(towers))
            print(f"built {p} engines in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    items, strings, source = real_inputs(a.images, a.n)
    batches = [int(b) for b in a.batch_sizes.split(",") if b.strip()]
    manifest, bundle = load_bundle(bundle)
    rows, failures = [], []
    with Embedder(bundle, backend="onnxruntime", precision="fp32") as ref:
        ref_emb = {"image": ref.embed_images(items), "text": ref.embed_texts(strings)}
        for tower in towers:
            ref_runner = make_runner(manifest, bundle, tower, backend="onnxruntime",
                                     precision="fp32")
            cells = [("onnxruntime-cpu", "fp32", ref_runner, None)]
            for p in precisions:
                with Embedder(bundle, backend="tensorrt", precision=p, towers=(tower,)) as emb:
                    got = emb.embed_images(items) if tower == "image" else emb.embed_texts(strings)
                fn = "embed_images" if tower == "image" else "embed_texts"
                data = items if tower == "image" else strings
                # the engine vs its own source graph on ONNX Runtime (for int8: the unfused Q/DQ
                # reference), and vs fp32 with the export's gate
                src = pick_source(manifest.tower(tower), tower, p, bundle)
                with Embedder(bundle / src.path, backend="onnxruntime", towers=(tower,)) as same:
                    cos = np.sum(got * getattr(same, fn)(data), axis=1)
                ok = float(cos.min()) >= THRESHOLD[p]
                if not ok:
                    failures.append(f"{tower} {p}: min cosine to {src.path} on ONNX Runtime "
                                    f"{cos.min():.5f} < {THRESHOLD[p]}")
                c32 = np.sum(got * ref_emb[tower], axis=1)
                if p == "int8" and float(c32.min()) < INT8_VS_FP32:
                    failures.append(f"{tower} int8: min cosine to fp32 {c32.min():.5f} < "
                                    f"{INT8_VS_FP32}")
                runner = make_runner(manifest, bundle, tower, backend="tensorrt", precision=p)
                ok = ok and (p != "int8" or float(c32.min()) >= INT8_VS_FP32)
                cells.append(("tensorrt", p, runner, (float(c32.min()), float(c32.mean()), ok)))
            try:
                for backend, p, runner, cos in cells:
                    for b in batches:
                        if b > runner.max_batch or time.monotonic() > deadline:
                            continue
                        t = time_runner(runner, feeds_for(ref, tower, items, strings, b), b,
                                        a.duration)
                        rows.append({"tower": tower, "backend": backend, "precision": p,
                                     "batch": b, **t, "cos_min": cos[0] if cos else None,
                                     "cos_mean": cos[1] if cos else None,
                                     "pass": cos[2] if cos else None})
            finally:
                for _, _, runner, _ in cells:
                    runner.close()
    print(f"\nTensorRT {trt.__version__} on {gpu}; {cuda.name}; {source}; n={a.n}")
    _table(rows)
    return {"stage": "tensorrt", "tensorrt": trt.__version__, "gpu": gpu, "cuda": cuda.name,
            "inputs": source, "n": a.n, "rows": rows, "failures": failures,
            "not_checked": skipped}


def check_ort_cuda(a, bundle: Path, deadline: float) -> dict:
    from edgeclip import Embedder
    items, strings, source = real_inputs(a.images, a.n)
    rows, failures = [], []
    with Embedder(bundle, backend="onnxruntime-cuda") as gpu, \
            Embedder(bundle, backend="onnxruntime", precision="fp32") as cpu:
        providers = {t: getattr(r, "providers", []) for t, r in gpu._runners.items()}
        for tower, prov in providers.items():
            if not prov or prov[0] != "CUDAExecutionProvider":
                failures.append(f"{tower}: the session runs on {prov}, not CUDAExecutionProvider")
        for tower in gpu.towers:
            fn = "embed_images" if tower == "image" else "embed_texts"
            data = items if tower == "image" else strings
            cos = np.sum(getattr(gpu, fn)(data) * getattr(cpu, fn)(data), axis=1)
            ok = float(cos.min()) >= THRESHOLD.get(gpu.precisions[tower], 0.99)
            if not ok:
                failures.append(f"{tower}: min cosine to the CPU {cos.min():.5f}")
            for name, emb in (("onnxruntime-cuda", gpu), ("onnxruntime-cpu", cpu)):
                runner = emb._runners[tower]
                for b in [int(x) for x in a.batch_sizes.split(",") if x.strip()]:
                    if b > runner.max_batch or time.monotonic() > deadline:
                        continue
                    t = time_runner(runner, feeds_for(cpu, tower, items, strings, b), b,
                                    a.duration)
                    rows.append({"tower": tower, "backend": name, "precision": runner.precision,
                                 "batch": b, **t, "cos_min": float(cos.min()),
                                 "cos_mean": float(cos.mean()), "pass": ok})
    print(f"\nONNX Runtime CUDA provider; {source}; n={a.n}; providers {providers}")
    _table(rows)
    return {"stage": "onnxruntime-cuda", "providers": providers, "inputs": source, "n": a.n,
            "rows": rows, "failures": failures}


def check_torch_cuda(a, deadline: float) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    import torch
    import torch.nn.functional as F

    from edgeclip.distill.models import build_student
    cfg = tomllib.loads((REPO / "configs/student_cona.toml").read_text())
    name, batch = cfg["model"]["name"], int(cfg["train"]["batch_size"])
    dev = torch.device("cuda")
    model = build_student(name, pretrained=False).to(dev).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                            lr=float(cfg["train"].get("lr", 1e-3)))
    h, w = model.preprocess.size
    g = torch.Generator(device="cpu").manual_seed(0)
    px = torch.randn(batch, 3, h, w, generator=g).to(dev)
    ids = torch.randint(1000, 20000, (batch, model.context_length), generator=g).to(dev)
    mask = torch.ones_like(ids)
    scale = torch.tensor(1 / 0.07, device=dev)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            img, txt = model(px, ids, mask)
            logits = scale * img.float() @ txt.float().T
            target = torch.arange(batch, device=dev)
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    steps, t0 = 0, time.perf_counter()
    while steps < a.train_steps and time.monotonic() < deadline:
        loss = step()
        steps += 1
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    gpu = torch.cuda.get_device_name(0)
    res = {"stage": "torch-cuda", "gpu": gpu, "torch": torch.__version__, "model": name,
           "batch": batch, "steps": steps, "seconds": round(dt, 3),
           "pairs_per_s": round(steps * batch / dt, 1) if steps else None,
           "loss": float(loss), "peak_mem_mib": torch.cuda.max_memory_allocated() >> 20,
           "what": "student forward+backward+AdamW, InfoNCE between its towers, bf16 autocast, "
                   "synthetic inputs; no teacher forward", "failures":
           [] if steps and np.isfinite(float(loss)) else ["no finite training step"]}
    print(f"\ntorch {torch.__version__} CUDA on {gpu}: {name}, batch {batch}: "
          f"{res['pairs_per_s']} pairs/s over {steps} steps ({dt:.1f} s)")
    return res


def _table(rows) -> None:
    print(f"{'tower':6} {'backend':16} {'prec':5} {'batch':>5} {'p50 ms':>9} {'items/s':>10} "
          f"{'cos min':>8} {'cos mean':>9} check")
    for r in rows:
        cmin = f"{r['cos_min']:.5f}" if r["cos_min"] is not None else "ref"
        cmean = f"{r['cos_mean']:.5f}" if r["cos_mean"] is not None else ""
        check = "" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL")
        print(f"{r['tower']:6} {r['backend']:16} {r['precision']:5} {r['batch']:5d} "
              f"{r['p50_ms']:9.3f} {r['items_per_s']:10.1f} {cmin:>8} {cmean:>9} {check}")


STAGES = ("tensorrt", "ort_cuda", "torch_cuda")
LABEL = {"tensorrt": "TensorRT engines", "ort_cuda": "ONNX Runtime CUDA provider",
         "torch_cuda": "torch CUDA distillation throughput"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path, nargs="?", default=None,
                    help="bundle (default: the built-in model)")
    ap.add_argument("--images", type=Path, default=None,
                    help="folder of real images (default: Flickr8k if found)")
    ap.add_argument("--n", type=int, default=64, help="images and captions for the cosine check")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--duration", type=float, default=2.0, help="seconds of timing per cell")
    ap.add_argument("--profile", default=None, help="target profile for build-engine")
    ap.add_argument("--workspace", type=int, default=None, help="MiB")
    ap.add_argument("--precisions", default="fp16,int8")
    ap.add_argument("--no-build", action="store_true", help="use the engines already built")
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--budget", type=float, default=280.0,
                    help="seconds; timing stops early to stay within it")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks/results/gpu_check.json")
    a = ap.parse_args(argv)
    t_start = time.monotonic()
    deadline = t_start + a.budget

    from edgeclip.embedder import default_model_path
    bundle = a.bundle or default_model_path()
    have = _probe()
    first = next((s for s in STAGES if have[s] is None), None)
    result: dict = {"machine": platform.node(), "date": datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec="seconds"), "bundle": str(bundle),
        "command": "python benchmarks/gpu_check.py " + " ".join(
            sys.argv[1:] if argv is None else argv)}
    if first == "tensorrt":
        result.update(check_tensorrt(a, bundle, deadline))
    elif first == "ort_cuda":
        result.update(check_ort_cuda(a, bundle, deadline))
    elif first == "torch_cuda":
        result.update(check_torch_cuda(a, deadline))
    result["checked"] = LABEL[first] if first else None
    result["not_checked"] = [f"{LABEL[s]}: " + (have[s] if have[s] else
                                                 f"not run: {LABEL[first]} came first")
                             for s in STAGES if s != first] + result.get("not_checked", [])
    result["seconds"] = round(time.monotonic() - t_start, 1)
    print("\n== gpu_check summary ==")
    if first is None:
        print("nothing GPU here: no check could run.")
    else:
        print(f"checked: {LABEL[first]} ({'FAIL' if result['failures'] else 'PASS'}, "
              f"{result['seconds']} s)")
    for line in result["not_checked"]:
        print(f"not checked: {line}")
    for f in result.get("failures", []):
        print(f"FAIL {f}")
    if first is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {a.json}")
    if first is None:
        return 2
    return 1 if result.get("failures") else 0


if __name__ == "__main__":
    sys.exit(main())
