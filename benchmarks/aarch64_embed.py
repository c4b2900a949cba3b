"""Helper of ``benchmarks/aarch64_check.sh``: embed the same Flickr8k photos and captions on two
machines (x86-64 natively, aarch64 under qemu-user) and compare the embeddings.

Subcommands (each runs with the edgeclip runtime only: numpy, Pillow, onnxruntime, tokenizers):

    prepare --data DIR --n 32 --out DIR     copy the first N test-split photos + one caption each
    embed --inputs DIR --out FILE.npz       embed them at every precision Embedder() has
          [--ort-config KEY=VALUE]          (diagnostic: an ONNX Runtime session config entry)
    compare --ref X86.npz --test ARM.npz    cosine per row, same precision; write the result JSON

``embed`` writes ``FILE.npz`` (``{precision}_{image,text}`` arrays) and ``FILE.json`` (machine,
Python, library versions, CPU features, model file hashes, seconds per precision).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "int8")

# Linux arm64 AT_HWCAP / AT_HWCAP2 bits (arch/arm64/include/uapi/asm/hwcap.h) that decide which
# ONNX Runtime (MLAS) kernels run: fp16 arithmetic, int8 dot products, int8 matrix multiply, SVE.
_HWCAP = {"fp": 0, "asimd": 1, "fphp": 9, "asimdhp": 10, "asimddp": 20, "sve": 22}
_HWCAP2 = {"sve2": 1, "i8mm": 13, "bf16": 14}


def _cpu_features() -> dict:
    """What the CPU (or qemu's emulated CPU) reports to programs, from /proc/self/auxv."""
    out: dict = {"machine": platform.machine()}
    if platform.machine() != "aarch64":
        try:
            flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags"))
            have = set(flags.split(":", 1)[1].split())
            out["x86_flags"] = sorted(have & {"avx2", "avx512f", "avx512_vnni", "avx_vnni",
                                              "f16c", "fma", "amx_int8"})
        except (OSError, StopIteration):
            pass
        return out
    try:
        raw = Path("/proc/self/auxv").read_bytes()
    except OSError as e:
        out["error"] = str(e)
        return out
    vals = {}
    for i in range(0, len(raw) - 15, 16):
        key = int.from_bytes(raw[i:i + 8], "little")
        vals[key] = int.from_bytes(raw[i + 8:i + 16], "little")
    hw, hw2 = vals.get(16, 0), vals.get(26, 0)
    out["hwcap"] = sorted([n for n, b in _HWCAP.items() if hw >> b & 1]
                          + [n for n, b in _HWCAP2.items() if hw2 >> b & 1])
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cmd_prepare(args) -> int:
    data = Path(args.data)
    names = [n.strip() for n in (data / "splits" / "test.txt").read_text().splitlines()
             if n.strip()][:args.n]
    first_caption: dict[str, str] = {}
    with open(data / "captions.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            first_caption.setdefault(row["image"], row["caption"])
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copyfile(data / "images" / n, out / "images" / n)
    spec = {"source": str(data), "split": "test", "images": names,
            "captions": [first_caption[n] for n in names]}
    (out / "inputs.json").write_text(json.dumps(spec, indent=1) + "\n")
    print(f"prepared {len(names)} photos and {len(names)} captions in {out}")
    return 0


def _add_session_config(ort, entries: list[str]) -> None:
    """Diagnostic only: add session config entries (e.g. ``session.x64quantprecision=1``) to
    every ONNX Runtime session this process creates."""
    pairs = [e.split("=", 1) for e in entries]
    original = ort.InferenceSession.__init__

    def init(self, path_or_bytes, sess_options=None, *a, **k):
        sess_options = sess_options or ort.SessionOptions()
        for key, value in pairs:
            sess_options.add_session_config_entry(key, value)
        original(self, path_or_bytes, sess_options, *a, **k)

    ort.InferenceSession.__init__ = init


def cmd_embed(args) -> int:
    # The optimized-graph cache would carry one run's session state into the next: every run
    # here optimizes its graphs itself.
    os.environ["EDGECLIP_CACHE"] = "0"
    import numpy as np
    import onnxruntime as ort

    if args.ort_config:
        _add_session_config(ort, args.ort_config)

    import edgeclip
    from edgeclip.embedder import Embedder, default_model_path
    from edgeclip.errors import BundleError

    inputs = Path(args.inputs)
    spec = json.loads((inputs / "inputs.json").read_text())
    paths = [str(inputs / "images" / n) for n in spec["images"]]
    captions = spec["captions"]
    bundle = Path(args.model) if args.model else default_model_path()
    meta: dict = {
        "machine": platform.machine(), "python": platform.python_version(),
        "onnxruntime": ort.__version__, "numpy": np.__version__,
        "libc": "-".join(platform.libc_ver()), "cpu": _cpu_features(),
        "edgeclip": getattr(edgeclip, "__version__", "?"), "edgeclip_file": edgeclip.__file__,
        "bundle": str(bundle), "threads": args.threads, "ort_config": args.ort_config or [],
        "precisions": {},
    }
    try:
        import PIL
        import tokenizers
        meta["pillow"], meta["tokenizers"] = PIL.__version__, tokenizers.__version__
    except ImportError:  # pragma: no cover - base dependencies
        pass
    print(f"[{meta['machine']}] Python {meta['python']}, onnxruntime {meta['onnxruntime']}, "
          f"numpy {meta['numpy']}, cpu {meta['cpu']}", flush=True)
    arrays = {}
    for prec in args.precisions.split(","):
        t0 = time.perf_counter()
        try:
            emb = Embedder(bundle, backend="onnxruntime", precision=prec, threads=args.threads,
                           workers=1)
        except BundleError as e:
            meta["precisions"][prec] = {"skipped": str(e)}
            print(f"[{meta['machine']}] {prec}: skipped ({e})", flush=True)
            continue
        t1 = time.perf_counter()
        with emb:
            files = {t: r.model.path for t, r in emb._runners.items()}
            runs_as = {t: r.precision for t, r in emb._runners.items()}
            img = emb.embed_images(paths, batch_size=args.batch_size)
            t2 = time.perf_counter()
            txt = emb.embed_texts(captions, batch_size=args.batch_size)
            t3 = time.perf_counter()
        arrays[f"{prec}_image"], arrays[f"{prec}_text"] = img, txt
        meta["precisions"][prec] = {
            "files": {t: {"path": p, "sha256": _sha256(bundle / p)} for t, p in files.items()},
            "runs_as": runs_as,
            "seconds": {"load": round(t1 - t0, 2), "images": round(t2 - t1, 2),
                        "texts": round(t3 - t2, 2)},
        }
        print(f"[{meta['machine']}] {prec}: {files} load {t1 - t0:.1f}s, {len(paths)} images "
              f"{t2 - t1:.1f}s, {len(captions)} texts {t3 - t2:.1f}s", flush=True)
        # after every precision: an interrupted (slow, emulated) run keeps what it finished
        out = Path(args.out)
        np.savez(out, **arrays)
        out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    out = Path(args.out)
    np.savez(out, **arrays)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return 0


def _cos(a, b):
    import numpy as np
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def cmd_compare(args) -> int:
    import numpy as np

    ref, test = np.load(args.ref), np.load(args.test)
    ref_meta = json.loads(Path(args.ref).with_suffix(".json").read_text())
    test_meta = json.loads(Path(args.test).with_suffix(".json").read_text())
    stages = json.loads(args.stage_seconds) if args.stage_seconds else {}
    result: dict = {
        "machine": test_meta["machine"], "python": test_meta["python"],
        "onnxruntime": test_meta["onnxruntime"], "numpy": test_meta["numpy"],
        "libc": test_meta["libc"], "cpu": test_meta["cpu"],
        "emulator": args.emulator, "qemu_cpu": args.qemu_cpu,
        "reference": {k: ref_meta[k] for k in ("machine", "python", "onnxruntime", "numpy",
                                               "libc", "cpu")},
        "threshold": args.threshold, "n_images": None, "n_texts": None,
        "image_cos_min": {}, "text_cos_min": {}, "precisions": {},
    }
    ok = True
    for prec, tm in test_meta["precisions"].items():
        rm = ref_meta["precisions"].get(prec, {})
        if "skipped" in tm or "skipped" in rm:
            result["precisions"][prec] = {"skipped": tm.get("skipped") or rm.get("skipped")}
            continue
        if tm["files"] != rm["files"]:
            print(f"error: {prec}: the two machines ran different model files: {tm['files']} vs "
                  f"{rm['files']}", file=sys.stderr)
            return 2
        row: dict = {"files": {t: f["path"] for t, f in tm["files"].items()}}
        for tower in ("image", "text"):
            a, b = ref[f"{prec}_{tower}"], test[f"{prec}_{tower}"]
            c = _cos(a, b)
            result[f"n_{tower}s"] = int(len(c))
            row[f"{tower}_cos_min"] = float(c.min())
            row[f"{tower}_cos_mean"] = float(c.mean())
            row[f"{tower}_max_abs_diff"] = float(np.abs(a - b).max())
            result[f"{tower}_cos_min"][prec] = float(c.min())
        # does the tiny difference change any retrieval decision? (text->image top-1)
        s_ref = ref[f"{prec}_text"] @ ref[f"{prec}_image"].T
        s_test = test[f"{prec}_text"] @ test[f"{prec}_image"].T
        row["top1_text_to_image_agree"] = int((s_ref.argmax(1) == s_test.argmax(1)).sum())
        # Which side is nearer the graph's float reference? (INT8 vs the FP16 graph on x86.)
        if prec != "fp16" and "fp16_image" in ref.files:
            row["cos_min_to_x86_fp16"] = {
                side: {t: float(_cos(arr[f"{prec}_{t}"], ref[f"fp16_{t}"]).min())
                       for t in ("image", "text")}
                for side, arr in (("x86", ref), ("aarch64", test))}
        # The aarch64 embeddings against x86 runs with other ONNX Runtime settings (diagnostic).
        for extra in args.extra or []:
            name, path = extra.split("=", 1)
            e = np.load(path)
            if f"{prec}_image" in e.files:
                e_meta = json.loads(Path(path).with_suffix(".json").read_text())
                row[f"vs_x86_{name}"] = {"ort_config": e_meta.get("ort_config", [])}
                for t in ("image", "text"):
                    row[f"vs_x86_{name}"][f"{t}_cos_min"] = float(
                        _cos(e[f"{prec}_{t}"], test[f"{prec}_{t}"]).min())
                    row[f"vs_x86_{name}"][f"{t}_cos_min_to_x86_fp16"] = float(
                        _cos(e[f"{prec}_{t}"], ref[f"fp16_{t}"]).min()) if (
                        "fp16_image" in ref.files and prec != "fp16") else None
        row["pass"] = bool(row["image_cos_min"] >= args.threshold
                           and row["text_cos_min"] >= args.threshold)
        row["aarch64_seconds"] = tm["seconds"]
        row["x86_seconds"] = ref_meta["precisions"][prec]["seconds"]
        ok &= row["pass"]
        result["precisions"][prec] = row
        print(f"{prec:5s} image cos min {row['image_cos_min']:.6f} mean {row['image_cos_mean']:.6f}"
              f" | text cos min {row['text_cos_min']:.6f} mean {row['text_cos_mean']:.6f} | "
              f"top-1 agree {row['top1_text_to_image_agree']}/{len(s_ref)} | "
              f"{'PASS' if row['pass'] else 'FAIL'} (>= {args.threshold})")
    for prec in ref_meta["precisions"]:
        if prec not in result["precisions"]:
            result["precisions"][prec] = {"skipped": "the aarch64 run did not reach it "
                                                     "(interrupted)"}
            ok = False
    result["pass"] = bool(ok and any("pass" in r for r in result["precisions"].values()))
    result["seconds"] = round(time.time() - args.started, 1) if args.started else None
    result["stage_seconds"] = stages
    result["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    result["command"] = args.command
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["notes"] = args.note or []
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0 if result["pass"] else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--data", required=True)
    a.add_argument("--n", type=int, default=32)
    a.add_argument("--out", required=True)
    a = sub.add_parser("embed")
    a.add_argument("--inputs", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--model", default=None, help="bundle (default: the built-in default model)")
    a.add_argument("--precisions", default=",".join(PRECISIONS))
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--batch-size", type=int, default=32)
    a.add_argument("--ort-config", action="append", metavar="KEY=VALUE")
    a = sub.add_parser("compare")
    a.add_argument("--ref", required=True, help="x86 embeddings (.npz)")
    a.add_argument("--test", required=True, help="aarch64 embeddings (.npz)")
    a.add_argument("--out", required=True)
    a.add_argument("--threshold", type=float, default=0.9999)
    a.add_argument("--emulator", default="")
    a.add_argument("--qemu-cpu", default="max")
    a.add_argument("--started", type=float, default=None, help="epoch seconds the run began")
    a.add_argument("--stage-seconds", default=None, help="JSON object of stage timings")
    a.add_argument("--command", default="")
    a.add_argument("--note", action="append")
    a.add_argument("--extra", action="append", metavar="NAME=X86_VARIANT.npz",
                   help="more x86 embeddings (other ORT settings) to compare aarch64 with")
    args = p.parse_args(argv)
    return {"prepare": cmd_prepare, "embed": cmd_embed, "compare": cmd_compare}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
