"""INT8 on x86 CPUs without VNNI: ORT's default U8S8 kernels vs ``session.x64quantprecision``.

On SSE4.1/AVX2/AVX-512 CPUs without VNNI, ONNX Runtime's U8S8 kernels sum uint8 x int8 pairs into
int16 (VPMADDUBSW), which saturates; ``session.x64quantprecision=1`` (what the runtime now sets for
every INT8 graph, edgeclip.backends.onnxruntime.INT8_CPU_CONFIG) converts the weights to uint8 and
uses the U8U8 kernels. This measures, for each tower of a bundle: cosine to the FP32 graph (the
FP16 graph upcast, as the runtime runs fp32) on Flickr8k dev photos and captions, and latency at
batch 1 and 8 in interleaved rounds (FP32, INT8 default, INT8 precise).

    python benchmarks/int8_precision.py [--bundle edgeclip/models/default] [--threads 1] [--out FILE]
        -> benchmarks/results/int8_precision.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgeclip.backends.fp16_upcast import upcast_fp16_model
from edgeclip.manifest import read_manifest
from edgeclip.preprocess import load_image, preprocess_image
from edgeclip.tokenize import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "int8_precision.json"


def _cpu_flags() -> set[str]:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _session(src, threads: int, precise: bool):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if precise:
        so.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def _captions(data: Path, names: list[str]) -> list[str]:
    want, out = set(names), []
    with open(data / "captions.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["image"] in want:
                out.append(row["caption"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "edgeclip" / "models" / "default")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "flickr8k")
    ap.add_argument("--count", type=int, default=200, help="dev photos (and their 5 captions)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.6, help="per cell per round")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    man = read_manifest(a.bundle)
    dev = [s.strip() for s in open(a.data / "splits" / "dev.txt") if s.strip()][:a.count]
    icfg = man.towers["image"].preprocess
    imgs = np.stack([preprocess_image(load_image(a.data / "images" / n), icfg)
                     for n in dev]).astype(np.float32)
    tcfg = man.towers["text"].tokenizer
    tok = Tokenizer(a.bundle / tcfg.file, tcfg.context_length)
    caps = _captions(a.data, dev)
    out = {"command": "python benchmarks/int8_precision.py " + " ".join(argv or []),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": {"cpu": platform.processor() or platform.machine(),
                       "vnni": bool(_cpu_flags() & {"avx512_vnni", "avx_vnni"}),
                       "avx2": "avx2" in _cpu_flags(), "onnxruntime": ort.__version__},
           "threads": a.threads, "load_average_start": os.getloadavg(), "towers": {}}
    for tower in ("image", "text"):
        spec = man.towers[tower]
        fp16 = spec.find_model("onnx", "fp16")[0]
        int8 = spec.find_model("onnx", "int8", "cpu")[0]
        fp32_bytes = upcast_fp16_model((a.bundle / fp16.path).read_bytes())
        sessions = {"fp32": _session(fp32_bytes, a.threads, False),
                    "int8": _session(str(a.bundle / int8.path), a.threads, False),
                    "int8_precise": _session(str(a.bundle / int8.path), a.threads, True)}
        if tower == "image":
            feeds = [{"pixel_values": imgs[i:i + 8]} for i in range(0, len(imgs), 8)]
            b1 = {"pixel_values": imgs[:1]}
        else:
            feeds = []
            for i in range(0, len(caps), 8):
                ids, mask = tok(caps[i:i + 8])
                feeds.append({"input_ids": ids, "attention_mask": mask})
            ids, mask = tok(caps[:1])
            b1 = {"input_ids": ids, "attention_mask": mask}
        emb = {}
        for k, s in sessions.items():
            e = np.concatenate([s.run(None, f)[0] for f in feeds])
            emb[k] = e / np.linalg.norm(e, axis=1, keepdims=True)
        row = {"items": int(len(emb["fp32"]))}
        for k in ("int8", "int8_precise"):
            c = (emb[k] * emb["fp32"]).sum(1)
            row[f"{k}_cos_min"] = round(float(c.min()), 5)
            row[f"{k}_cos_mean"] = round(float(c.mean()), 5)
        times = {(k, b): [] for k in sessions for b in (1, 8)}
        for _ in range(a.rounds):  # interleaved: every cell once per round
            for b, feed in ((1, b1), (8, feeds[0])):
                for k, s in sessions.items():
                    s.run(None, feed)
                    t, n = time.perf_counter(), 0
                    while time.perf_counter() - t < a.seconds:
                        s.run(None, feed)
                        n += 1
                    times[(k, b)].append((time.perf_counter() - t) / n * 1000)
        for (k, b), v in times.items():
            row[f"{k}_b{b}_ms"] = round(statistics.median(v), 2)
        for b in (1, 8):
            ratios_d = [f / i for f, i in zip(times[("fp32", b)], times[("int8", b)])]
            ratios_p = [f / i for f, i in zip(times[("fp32", b)], times[("int8_precise", b)])]
            row[f"speedup_int8_vs_fp32_b{b}"] = round(statistics.median(ratios_d), 3)
            row[f"speedup_int8_precise_vs_fp32_b{b}"] = round(statistics.median(ratios_p), 3)
        out["towers"][tower] = row
        print(tower, json.dumps(row), flush=True)
    out["load_average_end"] = os.getloadavg()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
