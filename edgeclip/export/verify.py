"""Verification of an export: PyTorch vs ONNX Runtime on real images and captions.

Per tower and precision: cosine (min, mean) between the PyTorch embeddings and the graph's.
With an eval split: R@1 (text->image and image->text, ``edgeclip.retrieval``) per precision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ExportValidationError
from ..retrieval import recall_at_k
from ..tokenize import Tokenizer
from .calibration import image_batches, text_batches
from .data import SplitData, sample
from .onnx_export import tower_module


@dataclass
class Thresholds:
    fp32_min_cosine: float = 0.9999
    fp16_min_cosine: float = 0.995
    int8_min_cosine: float = 0.95
    int8_r1_drop: float = 2.0  # points


@dataclass
class VerifyData:
    images: list[Path]
    captions: list[str]
    eval: SplitData | None = None
    notes: list[str] = field(default_factory=list)


def unoptimized(path: Path) -> bool:
    """INT8 graphs made for TensorRT (``*.tensorrt.onnx``: signed Q/DQ, float16 scales) run in
    ONNX Runtime with its graph optimizations off: that is the Q/DQ graph's reference semantics
    (dequantize, float op), which TensorRT's INT8 kernels implement. ORT's CPU Q/DQ fusions are
    other kernels: on the default model's S8S8 image graph they drop the min cosine from 0.988 to
    0.64, and on a float16 Q/DQ graph they give wrong results (benchmarks/int8_tensorrt_fp16.py)."""
    return Path(path).name.endswith(".tensorrt.onnx")


#: ONNX Runtime CPU optimizers a float16 graph runs without: AttentionFusion fuses float16
#: attention into ``com.microsoft.Attention``, which has a float32 CPU kernel only (session
#: creation fails, "Tensor type mismatch"; seen on MobileCLIP's FastViT attention stage).
FP16_CPU_DISABLED_OPTIMIZERS = ("AttentionFusion",)


def disabled_optimizers(path: Path) -> list[str]:
    return list(FP16_CPU_DISABLED_OPTIMIZERS) if ".fp16." in Path(path).name else []


def _session(path: Path, threads: int | None, optimize: bool | None = None):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if optimize is None:
        optimize = not unoptimized(path)
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = int(threads or 0)
    opts.log_severity_level = 3
    if ".int8." in Path(path).name:  # as the runtime runs it (edgeclip.backends.onnxruntime)
        from ..backends.onnxruntime import int8_cpu_options
        int8_cpu_options(opts, "int8")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled_optimizers(path))


def ort_embed(path: Path, batches, threads: int | None = None,
              optimize: bool | None = None) -> np.ndarray:
    sess = _session(path, threads, optimize)
    return np.concatenate([sess.run(None, feed)[0] for feed in batches]).astype(np.float32)


def torch_embed(model, tower: str, batches) -> np.ndarray:
    module = tower_module(model, tower)
    outs = []
    with torch.no_grad():
        for feed in batches:
            args = [torch.from_numpy(np.ascontiguousarray(v)) for v in feed.values()]
            outs.append(module(*args).float().numpy())
    return np.concatenate(outs)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)


def verify_export(model, bundle_dir: Path, models: dict[tuple[str, str], str], data: VerifyData,
                  thresholds: Thresholds = Thresholds(), batch_size: int = 16,
                  threads: int | None = None) -> dict:
    """Measure every (tower, precision) graph; return the report dict (``passed``, ``failures``)."""
    cfg = model.preprocess
    tok = Tokenizer(Path(model.tokenizer_file), int(model.context_length))
    feeds = {"image": lambda items: image_batches(items, cfg, batch_size),
             "text": lambda items: text_batches(items, tok, batch_size)}
    items = {"image": data.images, "text": data.captions}
    rows, failures = [], []
    ref = {t: torch_embed(model, t, feeds[t](items[t]))
           for t in {t for t, _ in models} if items[t]}
    for (tower, precision), rel in sorted(models.items()):
        if tower not in ref:
            continue
        emb = ort_embed(bundle_dir / rel, feeds[tower](items[tower]), threads)
        cos = cosine(ref[tower], emb)
        row = {"tower": tower, "precision": precision, "file": rel, "n": int(len(cos)),
               "cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
               "norm_max_dev": float(np.abs(np.linalg.norm(emb, axis=1) - 1).max())}
        limit = getattr(thresholds, f"{precision}_min_cosine")
        row["cos_limit"] = limit
        if row["cos_min"] < limit or not np.all(np.isfinite(emb)):
            failures.append(f"{tower} {precision}: min cosine to PyTorch {row['cos_min']:.6f} < "
                            f"{limit}")
        rows.append(row)
    report = {"cosine": rows, "retrieval": None, "thresholds": vars(thresholds),
              "data": {"images": len(data.images), "captions": len(data.captions),
                       "notes": data.notes}}
    if data.eval is not None:
        report["retrieval"] = _retrieval(bundle_dir, models, data.eval, feeds, thresholds,
                                         failures, threads)
    report["failures"] = failures
    report["passed"] = not failures
    return report


def _retrieval(bundle_dir, models, split: SplitData, feeds, thresholds, failures, threads):
    keep = split.txt_to_img >= 0
    captions = [c for c, k in zip(split.captions, keep) if k]
    owners = split.txt_to_img[keep]
    if not captions:
        return None
    out = {}
    precisions = sorted({p for _, p in models})
    for p in precisions:
        if ("image", p) not in models or ("text", p) not in models:
            continue
        img = ort_embed(bundle_dir / models[("image", p)], feeds["image"](split.images), threads)
        txt = ort_embed(bundle_dir / models[("text", p)], feeds["text"](captions), threads)
        out[p] = recall_at_k(img, txt, owners, ks=(1, 5, 10))
    if "fp32" in out and "int8" in out:
        for d in ("t2i", "i2t"):
            drop = out["fp32"][f"{d}_r1"] - out["int8"][f"{d}_r1"]
            out[f"int8_{d}_r1_drop"] = drop
            if drop > thresholds.int8_r1_drop:
                failures.append(f"int8 {d} R@1 drops {drop:.2f} points from fp32 "
                                f"(limit {thresholds.int8_r1_drop})")
    return out


def format_report(report: dict) -> str:
    lines = [f"{'tower':6} {'precision':9} {'n':>5} {'cos min':>10} {'cos mean':>10}  file"]
    for r in report["cosine"]:
        flag = "" if r["cos_min"] >= r["cos_limit"] else "  FAIL"
        lines.append(f"{r['tower']:6} {r['precision']:9} {r['n']:5d} {r['cos_min']:10.6f} "
                     f"{r['cos_mean']:10.6f}  {r['file']}{flag}")
    ret = report.get("retrieval")
    if ret:
        lines.append(f"{'R@K on eval split':24} {'t2i R@1':>8} {'t2i R@5':>8} {'i2t R@1':>8} "
                     f"{'i2t R@5':>8}")
        for p, m in ret.items():
            if isinstance(m, dict):
                lines.append(f"{p:24} {m['t2i_r1']:8.2f} {m['t2i_r5']:8.2f} {m['i2t_r1']:8.2f} "
                             f"{m['i2t_r5']:8.2f}")
    for f in report["failures"]:
        lines.append(f"FAIL: {f}")
    return "\n".join(lines)


def raise_on_failure(report: dict, report_path: Path) -> None:
    if report["failures"]:
        raise ExportValidationError(
            f"export verification failed ({'; '.join(report['failures'])}). Details in "
            f"{report_path}. Re-export (other calibration method/excluded nodes), or pass "
            f"--allow-degraded to keep the bundle anyway.")
