"""Export a full-size Hugging Face CLIP ViT-B/32 / SigLIP base architecture (random weights: no
pretrained weights can be downloaded here; said in the output) through ``edgeclip export``'s
pipeline and record the verification cosines per precision (fp32 / fp16 / int8 cpu).

    python benchmarks/hf_export_check.py [--arch clip|siglip|both] [--json benchmarks/results/hf_export_check.json]

The tokenizer is the real MiniLM WordPiece tokenizer.json (no CLIP BPE vocabulary ships in any
installed package); verification uses scikit-image's photographs and captions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def build(arch: str, out: Path) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    import hf_tiny
    torch.manual_seed(0)
    if arch == "clip":  # openai/clip-vit-base-patch32's dimensions
        cfg = CLIPConfig(text_config=dict(vocab_size=30522, max_position_embeddings=77,
                                          bos_token_id=101, eos_token_id=102, pad_token_id=0),
                         vision_config=dict(image_size=224, patch_size=32), projection_dim=512)
        model = CLIPModel(cfg)
    else:  # google/siglip-base-patch16-224's dimensions
        cfg = SiglipConfig(text_config=dict(vocab_size=30522, max_position_embeddings=64,
                                            pad_token_id=0, eos_token_id=102),
                           vision_config=dict(image_size=224, patch_size=16))
        model = SiglipModel(cfg)
    hf_tiny._randomise_biases(model)
    model.eval().save_pretrained(str(out))
    # tokenizer + preprocessor files from the tiny builders (same formats)
    tmp = out.parent / f"{arch}-files"
    (hf_tiny.build_hf_clip if arch == "clip" else hf_tiny.build_hf_siglip)(tmp, image_size=224)
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        (out / name).write_bytes((tmp / name).read_bytes())
    if arch == "clip":  # the tiny builder's tokenizer is capped at 24 positions
        tc = json.loads((out / "tokenizer_config.json").read_text())
        tc["model_max_length"] = 77
        (out / "tokenizer_config.json").write_text(json.dumps(tc))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="both", choices=["clip", "siglip", "both"])
    ap.add_argument("--json", default="benchmarks/results/hf_export_check.json")
    args = ap.parse_args()
    from edgeclip.export.pipeline import export_dual_encoder
    from edgeclip.export.sources import load_source
    rows = []
    for arch in (["clip", "siglip"] if args.arch == "both" else [args.arch]):
        with tempfile.TemporaryDirectory() as tmp:
            src = build(arch, Path(tmp) / arch)
            model = load_source(str(src))
            t0 = time.perf_counter()
            try:
                report = export_dual_encoder(model, Path(tmp) / "bundle", ("fp32", "fp16", "int8"),
                                             "cpu", log=lambda *_: None)
            except Exception as e:  # a failed gate still has its report
                report = json.loads((Path(tmp) / "bundle.report.json").read_text())
                report["error"] = str(e)
            rows.append({"arch": model.provenance["architecture"], "weights": "random",
                         "export_s": round(time.perf_counter() - t0, 1),
                         "passed": report["passed"], "failures": report["failures"],
                         "cosine": [{k: r[k] for k in ("tower", "precision", "cos_min",
                                                         "cos_mean")}
                                    for r in report["cosine"]]})
            print(json.dumps(rows[-1]))
    out = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                          time.gmtime()),
           "machine": {"cpu": platform.processor() or platform.machine(),
                       "cores": os.cpu_count(), "load_average": os.getloadavg()},
           "note": "random weights (none can be downloaded here): cosines measure the export "
                   "path (graph, fp16 blocking, int8 quantization) on real photos, not the "
                   "quality of a trained model's int8", "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
