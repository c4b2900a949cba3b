"""TensorRT INT8 graph quantized over the FP16 graph vs over the FP32 graph, on the shipped
default model (real distilled weights), measured through ONNX Runtime CPU.

The default bundle ships fp16 graphs; their weights are widened back to float32 (exactly: every
float16 value is a float32 value) to get the float32 reference graph both INT8 graphs are
quantized from, with the Jetson profiles' settings (symmetric S8S8 Q/DQ, exclusions, calibration
on Flickr8k train). Reported per tower: cosine to the float32 graph (min/mean) on Flickr8k
``--split`` images and captions, R@1/5/10 of each precision on that split, the Q/DQ lint and the
float types of the INT8 graphs. Gates (edgeclip.export.verify): int8 min cosine >= 0.95 and
R@1 drop <= 2 points.

    python benchmarks/int8_tensorrt_fp16.py [--data ../shared/data/flickr8k] [--split dev]
        [--images 500] [--method entropy] [--count 256]
        [--json benchmarks/results/int8_tensorrt_fp16.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

REPO = Path(__file__).resolve().parents[1]


def widen_fp16_graph(src: Path, dst: Path) -> None:
    """float16 initializers/constants/casts/types -> float32: the float32 twin of an fp16 graph."""
    m = onnx.load(str(src))
    F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    g = m.graph
    for i, init in enumerate(g.initializer):
        if init.data_type == F16:
            g.initializer[i].CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(init).astype(np.float32), init.name))
    for n in g.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == F16:
                a.i = F32
            if n.op_type == "Constant" and a.name == "value" and a.t.data_type == F16:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float32),
                                                     a.t.name))
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        if vi.type.tensor_type.elem_type == F16:
            vi.type.tensor_type.elem_type = F32
    # the fp16 converter's casts are float32 -> float32 now: bypass them
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(onnx.shape_inference.infer_shapes(m).graph.value_info) + list(g.input)}
    types.update({i.name: i.data_type for i in g.initializer})
    outputs = {o.name for o in g.output}
    rename: dict[str, str] = {}
    keep = []
    for n in g.node:
        n.input[:] = [rename.get(x, x) for x in n.input]
        to = next((a.i for a in n.attribute if a.name == "to"), None)
        if n.op_type == "Cast" and to == F32 and types.get(n.input[0]) == F32 \
                and n.output[0] not in outputs:
            rename[n.output[0]] = n.input[0]
            continue
        keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    del g.value_info[:]
    # names the fp16 converter gave (X_output_cast_0, ...) would collide when it runs again
    def fresh(name: str) -> str:
        return name.replace("_output_cast", "_w_oc").replace("_input_cast", "_w_ic")
    for n in g.node:
        n.name = fresh(n.name)
        n.input[:] = [fresh(x) for x in n.input]
        n.output[:] = [fresh(x) for x in n.output]
    for i in g.initializer:
        i.name = fresh(i.name)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(dst))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/flickr8k")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--images", type=int, default=500, help="images of the split (all captions "
                    "of those images)")
    ap.add_argument("--method", default="entropy", choices=("minmax", "entropy", "percentile"))
    ap.add_argument("--count", type=int, default=256, help="calibration images and captions")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path,
                    default=REPO / "benchmarks/results/int8_tensorrt_fp16.json")
    a = ap.parse_args(argv)

    from edgeclip.embedder import default_model_path
    from edgeclip.export.calibration import image_batches, image_reader, text_batches, text_reader
    from edgeclip.export.data import SplitData, load_split, sample
    from edgeclip.export.int8 import quantize_int8
    from edgeclip.export.qdq_lint import float_summary, lint
    from edgeclip.export.verify import cosine, ort_embed
    from edgeclip.manifest import load_bundle
    from edgeclip.retrieval import recall_at_k
    from edgeclip.tokenize import Tokenizer

    t_start = time.time()
    manifest, bundle = load_bundle(default_model_path())
    pre = manifest.tower("image").preprocess
    tok_cfg = manifest.tower("text").tokenizer
    tok = Tokenizer(bundle / tok_cfg.file, tok_cfg.context_length)
    train = load_split(a.data, "train")
    ev = load_split(a.data, a.split)
    imgs = sample(ev.images, a.images)
    keep = {p: i for i, p in enumerate(imgs)}
    caps, owners = [], []
    for c, o in zip(ev.captions, ev.txt_to_img):
        if o >= 0 and ev.images[o] in keep:
            caps.append(c)
            owners.append(keep[ev.images[o]])
    owners = np.asarray(owners)
    feeds = {"image": lambda: image_batches(imgs, pre, 16),
             "text": lambda: text_batches(caps, tok, 64)}
    out: dict = {"model": manifest.model_name, "bundle": "edgeclip/models/default",
                 "data": f"{a.data.name} {a.split}: {len(imgs)} images, {len(caps)} captions",
                 "calibration": f"{a.method}, {a.count} items of {a.data.name} train",
                 "towers": {}, "recall": {}}
    emb: dict[str, dict[str, np.ndarray]] = {"fp32": {}, "int8-fp16": {}, "int8-fp32": {}}
    with tempfile.TemporaryDirectory(prefix="edgeclip-int8trt-") as tmp:
        tmp = Path(tmp)
        for tower in ("image", "text"):
            fp16 = next(m for m in manifest.tower(tower).models if m.precision == "fp16")
            fp32 = tmp / f"{tower}.fp32.onnx"
            widen_fp16_graph(bundle / fp16.path, fp32)
            emb["fp32"][tower] = ort_embed(fp32, feeds[tower](), a.threads)
            widened = onnx.load(str(fp32))
            row_casts = sum(n.op_type == "Cast" for n in widened.graph.node)
            row = {}
            for base in ("fp16", "fp32"):
                if tower == "image":
                    reader = image_reader(sample(train.images, a.count), pre)
                else:
                    reader = text_reader(sample(train.captions, a.count), bundle / tok_cfg.file,
                                         tok_cfg.context_length)
                dst = tmp / f"{tower}.int8.{base}.onnx"
                t0 = time.time()
                info = quantize_int8(fp32, dst, reader, "tensorrt", a.method, float_dtype=base)
                q_s = time.time() - t0
                # reference Q/DQ semantics (ORT's CPU Q/DQ fusions are other kernels)
                e = ort_embed(dst, feeds[tower](), a.threads, optimize=False)
                emb[f"int8-{base}"][tower] = e
                cos = cosine(emb["fp32"][tower], e)
                expect = "float16" if base == "fp16" else None
                row[f"int8 over {base}"] = {
                    "cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
                    "quantize_s": round(q_s, 1), "excluded_nodes": len(info["excluded_nodes"]),
                    "lint_findings": [str(f) for f in lint(dst, expect_float=expect)],
                    "float_types": float_summary(dst)}
                print(f"{tower} int8 over {base}: cos min {cos.min():.5f} mean {cos.mean():.5f} "
                      f"(quantize {q_s:.0f} s)", flush=True)
            row["float32 graph casts"] = row_casts
            out["towers"][tower] = row
    for name, e in emb.items():
        out["recall"][name] = recall_at_k(e["image"], e["text"], owners, ks=(1, 5, 10))
    for base in ("fp16", "fp32"):
        r = out["recall"][f"int8-{base}"]
        f = out["recall"]["fp32"]
        out["recall"][f"int8-{base} R@1 drop"] = {
            d: round(f[f"{d}_r1"] - r[f"{d}_r1"], 3) for d in ("t2i", "i2t")}
    gates = {}
    for base in ("fp16", "fp32"):
        cmin = min(out["towers"][t][f"int8 over {base}"]["cos_min"] for t in ("image", "text"))
        drop = max(out["recall"][f"int8-{base} R@1 drop"].values())
        gates[f"int8 over {base}"] = {"min_cosine": cmin, "max_r1_drop": drop,
                                      "passed": cmin >= 0.95 and drop <= 2.0}
    out["gates"] = gates
    out.update({"command": "python benchmarks/int8_tensorrt_fp16.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "date": datetime.date.today().isoformat(),
        "seconds": round(time.time() - t_start, 1), "loadavg": os.getloadavg(),
        "runtime": "ONNX Runtime CPU (the graphs' float16/Q-DQ semantics; not TensorRT speed)"})
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({"gates": gates, "recall": {k: (v.get("mean_recall") if "mean_recall" in v
                                                      else v) for k, v in out["recall"].items()}},
                     indent=1))
    return 0 if all(g["passed"] for g in gates.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
