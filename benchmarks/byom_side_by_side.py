"""Bring-your-own-model side by side: full-size foreign CLIPs exported next to the default student.

Exports (fp32 + cpu int8, calibrated on Flickr8k train) of
  * a Hugging Face ``CLIPModel`` with the default ``CLIPConfig`` (ViT-B/32 image tower, 12-layer
    512-wide text tower), RANDOM weights, CLIP's real BPE tokenizer (built from the vocabulary
    open_clip ships), saved as a Hugging Face directory and exported through that source;
  * ``open_clip:ViT-B-32``, RANDOM weights;
  * ``open_clip:MobileCLIP2-S0`` (FastViT-MCi0 at 256 px, re-parameterised), RANDOM weights
    (open_clip has no MobileCLIP-S0: Apple's S0 text tower is not in open_clip; MobileCLIP2-S0
    has the same MCi0 image tower),
then ONE ``edgeclip-bench`` run over those bundles and ``edgeclip/models/default`` (the shipped
student: int8 + fp16 graphs, no fp32 graph) for latency at batch 1 and 8, plus bundle sizes and
the fp32-vs-int8 cosine of each (Embedder on Flickr8k test photos and captions; for the default
student its fp16 graph run as fp32 stands in for fp32).

No pretrained weights of these architectures are on this machine: latency and size do not depend
on the weights, but int8 fidelity does (random towers quantize differently from trained ones),
so the cosine column is a property of these random weights, not of the trained models.

Needs open_clip (see README "Run the tests": the open_clip venv). Run from the repository root:

    python benchmarks/byom_side_by_side.py [--data ../shared/data/flickr8k] [--iters 15]
        [--threads 1] [--work runs/byom]

-> ``benchmarks/results/byom_side_by_side.{json,md}`` (command, machine, date, load average).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def build_hf_clip_dir(out: Path, seed: int = 0) -> Path:
    """A Hugging Face CLIPModel directory: default CLIPConfig, random weights, CLIP's BPE."""
    import open_clip
    import torch
    from transformers import CLIPConfig, CLIPModel
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    CLIPModel(CLIPConfig()).eval().save_pretrained(str(out))
    from transformers import PreTrainedTokenizerFast

    from edgeclip.export.sources.open_clip import tokenizer_json
    # CLIP's BPE as open_clip ships it (ids checked against open_clip in the tests); the default
    # CLIPTextConfig ends a text at eos_token_id 49407 = <end_of_text>
    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer_json(
        open_clip.get_tokenizer("ViT-B-32"), 77), bos_token="<start_of_text>",
        eos_token="<end_of_text>", unk_token="<end_of_text>", pad_token="<end_of_text>",
        model_max_length=77)
    tok.save_pretrained(str(out))
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True,
        "size": {"shortest_edge": 224}, "resample": 3, "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD, "do_convert_rgb": True}, indent=1))
    return out


def export(source: str, out: Path, data: Path, calib_count: int, log) -> dict:
    """fp32 + cpu int8 bundle of ``source``; an int8 that fails its gate is kept
    (``allow_degraded``) and its report says so."""
    from edgeclip.export.pipeline import export_dual_encoder
    from edgeclip.export.sources import load_source
    times_file = out.parent / "export_times.json"  # report.json is checksummed: never touched
    times = json.loads(times_file.read_text()) if times_file.is_file() else {}
    if (out / "manifest.json").is_file():
        log(f"[byom] {out} exists, reused")
    else:
        t0 = time.perf_counter()
        model = load_source(source)
        export_dual_encoder(model, out, ("fp32", "int8"), "cpu", calib_data=data,
                            calib_split="train", calib_count=calib_count, verify_count=32,
                            allow_degraded=True, threads=1, log=lambda *a: None)
        times[out.name] = round(time.perf_counter() - t0, 1)
        times_file.write_text(json.dumps(times, indent=1) + "\n")
        log(f"[byom] exported {source} -> {out} in {times[out.name]} s")
    report = json.loads((out / "report.json").read_text())
    report["export_s"] = times.get(out.name)
    return report


def bundle_sizes(bundle: Path) -> dict:
    from edgeclip.manifest import load_bundle
    manifest, _ = load_bundle(bundle)
    tok = (bundle / "tokenizer.json").stat().st_size
    out = {}
    for prec in ("fp32", "fp16", "int8"):
        files = [m.path for t in ("image", "text") for m in manifest.tower(t).models
                 if m.precision == prec]
        if files:
            out[prec] = round((sum((bundle / f).stat().st_size for f in files) + tok) / 1e6, 1)
    return out


def int8_cosine(bundle: Path, images, captions, reference: str) -> dict:
    import numpy as np

    from edgeclip import Embedder
    ref = Embedder(bundle, backend="onnxruntime", precision=reference, threads=1)
    q = Embedder(bundle, backend="onnxruntime", precision="int8", threads=1)
    ci = np.sum(ref.embed_images(images) * q.embed_images(images), axis=1)
    ct = np.sum(ref.embed_texts(captions) * q.embed_texts(captions), axis=1)
    return {"reference": reference, "n_images": len(images), "n_captions": len(captions),
            "image_min": round(float(ci.min()), 4), "image_mean": round(float(ci.mean()), 4),
            "text_min": round(float(ct.min()), 4), "text_mean": round(float(ct.mean()), 4)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "flickr8k"))
    ap.add_argument("--work", default=str(REPO / "runs" / "byom"))
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calib-count", type=int, default=64)
    ap.add_argument("--cosine-count", type=int, default=64)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    torch.set_num_threads(args.threads)
    from edgeclip.export.data import load_split, sample
    from edgeclip.profiling.machine import load_average, machine_info

    data, work = Path(args.data), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    load_start = load_average()
    hf_dir = build_hf_clip_dir(work / "hf-clip-vit-b-32")
    models = [  # label, source, bundle, what the weights are
        ("default student (edgeclip/models/default)", None, REPO / "edgeclip" / "models" /
         "default", "trained (Flickr8k distillation)"),
        ("HF CLIPModel ViT-B/32 (default CLIPConfig)", str(hf_dir), work / "b-hf-clip",
         "RANDOM"),
        ("open_clip ViT-B-32", "open_clip:ViT-B-32", work / "b-open_clip-vit-b-32", "RANDOM"),
        ("open_clip MobileCLIP2-S0", "open_clip:MobileCLIP2-S0",
         work / "b-open_clip-mobileclip2-s0", "RANDOM"),
    ]
    exports = {}
    for label, source, bundle, _ in models:
        if source is not None:
            exports[label] = export(source, bundle, data, args.calib_count, log)
    test = load_split(data, "test")
    images = [str(p) for p in sample(test.images, args.cosine_count)]
    captions = sample(test.captions, args.cosine_count)

    bench_json = work / "bench.json"
    cmd = ["edgeclip-bench", *[str(b) for _, _, b, _ in models], "--precision", "fp32,fp16,int8",
           "--batch-sizes", "1,8", "--threads", str(args.threads), "--iters", str(args.iters),
           "--warmup", "2", "--no-isolate", "--quiet", "--json", str(bench_json)]
    log("[byom] " + shlex.join(cmd))
    subprocess.run([str(Path(sys.executable).parent / "edgeclip-bench"), *cmd[1:]], check=True,
                   cwd=REPO)
    bench = json.loads(bench_json.read_text())

    out_models = []
    for label, source, bundle, weights in models:
        ref = "fp32" if "fp32" in bundle_sizes(bundle) else "fp32-from-fp16"
        cos = int8_cosine(bundle, images, captions, "fp32")  # fp16-only: run as fp32 (upcast)
        cos["reference"] = ref
        rows = [r for r in bench["rows"] if Path(r["path"]).resolve().is_relative_to(
            bundle.resolve())]
        lat = {f"{r['tower']}.{r['precision']}.b{r['batch_size']}": round(r["latency_p50_ms"], 2)
               for r in rows}
        manifest = json.loads((bundle / "manifest.json").read_text())
        rep = exports.get(label, {})
        out_models.append({
            "label": label, "source": source or str(bundle.relative_to(REPO)),
            "weights": weights, "bundle": str(bundle), "sizes_mb": bundle_sizes(bundle),
            "latency_p50_ms": lat, "int8_cosine": cos,
            "image_size": manifest["towers"]["image"]["preprocess"]["size"],
            "context_length": manifest["towers"]["text"]["tokenizer"]["context_length"],
            "provenance": manifest.get("extra", {}).get("source"),
            "export_s": rep.get("export_s"),
            "export_verification": {"passed": rep.get("passed"),
                                    "failures": rep.get("failures")} if rep else None})
    result = {
        "command": shlex.join([sys.executable.split("/")[-1], "benchmarks/byom_side_by_side.py",
                               *(argv if argv is not None else sys.argv[1:])]),
        "bench_command": bench["command"], "date": bench["date"],
        "machine": machine_info(), "load_average_start": load_start,
        "load_average_end": load_average(),
        "settings": {"threads": args.threads, "iters": args.iters, "batch_sizes": [1, 8],
                     "calib": f"Flickr8k train, {args.calib_count} images/captions, minmax",
                     "cosine_on": f"Flickr8k test, {args.cosine_count} photos and captions"},
        "note": ("Foreign models carry RANDOM weights (no pretrained weights of these "
                 "architectures on this machine): latency and size are the architectures', int8 "
                 "cosine is these random weights'. Latency: one edgeclip-bench run, all targets "
                 "of a tower timed in interleaved rounds, p50, ONNX Runtime CPU, "
                 f"{args.threads} thread(s), other work on the machine (load average recorded). "
                 "The default student ships int8 + fp16 graphs only: its fp32 column is the fp16 "
                 "graph on ONNX Runtime CPU, its fp32-vs-int8 cosine uses that graph run as "
                 "fp32."),
        "models": out_models, "bench_warnings": bench.get("warnings", [])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "byom_side_by_side.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "byom_side_by_side.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Bring your own CLIP: side by side with the default student", "",
        f"Command: `{r['command']}`  ", f"Bench: `{r['bench_command']}`  ",
        f"Date: {r['date']}; machine: {m.get('cpu_model')}, {m.get('cores_usable')} usable "
        f"cores, {platform.system()} {platform.machine()}; load average at start "
        f"{r['load_average_start']}, at end {r['load_average_end']}.", "",
        f"**{r['note']}**", "",
        "| model | weights | input | bundle MB fp32 / int8 | image ms b1 fp32 / int8 | "
        "image ms b8 fp32 / int8 | text ms b1 fp32 / int8 | text ms b8 fp32 / int8 | "
        "int8 cos image min/mean | int8 cos text min/mean |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for x in r["models"]:
        lat, s, c = x["latency_p50_ms"], x["sizes_mb"], x["int8_cosine"]
        fp = "fp32" if "fp32" in s else "fp16"

        def cell(tower, b, lat=lat, fp=fp):
            return f"{lat.get(f'{tower}.{fp}.b{b}', '-')} / {lat.get(f'{tower}.int8.b{b}', '-')}"
        size = f"{s.get(fp, '-')}{'' if fp == 'fp32' else ' (fp16)'} / {s.get('int8', '-')}"
        h, w = x["image_size"]
        lines.append(
            f"| {x['label']} | {x['weights']} | {h}x{w} px, {x['context_length']} tokens | "
            f"{size} | {cell('image', 1)} | {cell('image', 8)} | {cell('text', 1)} | "
            f"{cell('text', 8)} | {c['image_min']} / {c['image_mean']} | "
            f"{c['text_min']} / {c['text_mean']} |")
    lines += ["", "Latency: p50 ms per batch. Sizes: the precision's graphs + tokenizer.json."]
    fails = [f"{x['label']}: {'; '.join(x['export_verification']['failures'])}"
             for x in r["models"] if x.get("export_verification")
             and x["export_verification"]["failures"]]
    if fails:
        lines += ["", "Export verification (random weights) below the int8 gates, bundles kept "
                  "with --allow-degraded: " + " | ".join(fails)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
