"""A frozen all-mpnet-base-v2 text tower with a trainable head (``"type": "mpnet_frozen"``).

Fine-tuning MPNet's 110M parameters does not fit a small CPU, so the encoder stays frozen and
only a head trains. The frozen part is the sentence-transformers recipe of all-mpnet-base-v2:
``MPNetModel`` (transformers) -> mean pooling over the attention mask -> L2 normalisation, a
768-d sentence embedding per caption. It is computed once per caption set and cached
(``textfeat-<key>.npy``, keyed by the weights' sha256 and the token ids, the style of
:mod:`.cache`); training then runs only the head. The weights are not part of a checkpoint (they
are frozen and found again by :func:`edgeclip.distill.mpnet.mpnet_dir`, hash-checked), so a
teacher checkpoint holds the head only.

Model config (``text``)::

    {"type": "mpnet_frozen",
     "head_hidden": 0,        # 0: a linear head; N: linear + a residual GELU MLP of width N
     "hf_config": {...},      # tests only: a random MPNet of this MPNetConfig, no weights read
     "init_seed": 0}          # the seed of that random MPNet

with ``"tokenizer": "mpnet"`` at the top of the model config (MPNet's own tokenizer.json).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..errors import ConfigError

log = logging.getLogger(__name__)


def _masked_mean(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class _Head(nn.Module):
    """x -> W x + MLP(x) (a linear map plus a residual GELU MLP)."""

    def __init__(self, dim_in: int, dim_out: int, hidden: int):
        super().__init__()
        self.lin = nn.Linear(dim_in, dim_out, bias=False)
        self.mlp = nn.Sequential(nn.Linear(dim_in, hidden), nn.GELU(), nn.Linear(hidden, dim_out))

    def forward(self, x):
        return self.lin(x) + self.mlp(x)


class MpnetFrozenTower(nn.Module):
    """input_ids, attention_mask (int64) -> L2-normalised (B, D); or cached sentence features
    (float, (B, 768)) -> the head only (what training feeds it)."""

    frozen_features = True

    def __init__(self, cfg: dict, embed_dim: int, pretrained: bool = True):
        super().__init__()
        self.cfg = dict(cfg)
        self.hf_config = cfg.get("hf_config")
        if self.hf_config is not None and not isinstance(self.hf_config, dict):
            raise ConfigError(f"text.hf_config must be a table of MPNetConfig fields, got "
                              f"{self.hf_config!r}")
        if self.hf_config:
            self.feat_dim = int(self.hf_config.get("hidden_size", 768))
            seed = int(cfg.get("init_seed", 0))
            self.weights_id = "random:" + hashlib.sha256(json.dumps(
                [self.hf_config, seed], sort_keys=True).encode()).hexdigest()
        else:
            from .mpnet import WEIGHTS_SHA256
            self.feat_dim = 768
            self.weights_id = WEIGHTS_SHA256
        hidden = int(cfg.get("head_hidden", 0) or 0)
        self.proj = (nn.Linear(self.feat_dim, embed_dim, bias=False) if not hidden
                     else _Head(self.feat_dim, embed_dim, hidden))
        # the frozen encoder is kept outside the module tree: not in state_dict / parameters
        object.__setattr__(self, "_enc", None)
        object.__setattr__(self, "_memo", {})

    # -- the frozen part -------------------------------------------------------------------
    def encoder(self):
        if self._enc is None:
            from transformers import MPNetConfig, MPNetModel
            if self.hf_config:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(self.cfg.get("init_seed", 0)))
                    enc = MPNetModel(MPNetConfig(**self.hf_config), add_pooling_layer=False)
            else:
                from .mpnet import mpnet_dir
                enc = MPNetModel.from_pretrained(str(mpnet_dir()), add_pooling_layer=False)
            enc.eval().requires_grad_(False)
            object.__setattr__(self, "_enc", enc)
        return self._enc

    @torch.no_grad()
    def sentence_features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The frozen sentence embedding (mean pooling + L2 norm), float32 (B, 768)."""
        enc = self.encoder()
        dev = ids.device
        if next(enc.parameters()).device != dev:
            enc.to(dev)
        n = int(mask.sum(1).max()) if mask.numel() else 1
        ids, mask = ids[:, :max(n, 1)], mask[:, :max(n, 1)]
        h = enc(input_ids=ids, attention_mask=mask).last_hidden_state
        return F.normalize(_masked_mean(h.float(), mask), dim=-1)

    @staticmethod
    def _row_key(ids_row: np.ndarray, mask_row: np.ndarray) -> bytes:
        return ids_row[mask_row.astype(bool)].tobytes()

    def remember(self, ids: torch.Tensor, mask: torch.Tensor, feats: np.ndarray) -> None:
        """Keep ``feats`` for these token rows: later calls with them skip the encoder."""
        i, m = ids.cpu().numpy(), mask.cpu().numpy()
        for r in range(len(i)):
            self._memo[self._row_key(i[r], m[r])] = feats[r]

    def features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        i, m = ids.cpu().numpy(), mask.cpu().numpy()
        keys = [self._row_key(i[r], m[r]) for r in range(len(i))]
        todo = [r for r, k in enumerate(keys) if k not in self._memo]
        if todo:
            f = self.sentence_features(ids[todo], mask[todo]).cpu().numpy()
            for r, x in zip(todo, f):
                self._memo[keys[r]] = x
        return torch.from_numpy(np.stack([self._memo[k] for k in keys])).to(ids.device)

    def prepare_export(self) -> None:
        """Load the frozen encoder now, before an export traces :meth:`forward`."""
        self.encoder()

    def traceable_features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """:meth:`sentence_features` in torch ops only (no memo, no data-dependent slicing):
        what an ONNX export traces. The frozen weights become the graph's initializers."""
        h = self.encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        return F.normalize(_masked_mean(h.float(), mask), dim=-1)

    # -- the trainable part ----------------------------------------------------------------
    def forward(self, input_ids, attention_mask):
        if input_ids.is_floating_point():
            f = input_ids
        elif torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            f = self.traceable_features(input_ids, attention_mask)
        else:
            f = self.features(input_ids, attention_mask)
        return F.normalize(self.proj(f.to(self.proj_dtype())), dim=-1)

    def proj_dtype(self):
        return next(self.proj.parameters()).dtype


def caption_features(tower: MpnetFrozenTower, ids: torch.Tensor, mask: torch.Tensor, cache_dir,
                     batch_size: int = 128) -> np.ndarray:
    """The frozen sentence features of every token row, (N, 768) float32, cached on disk
    (keyed by the weights' sha256 and the token ids, so by tokenizer, captions and length)."""
    from .cache import _key, _save_npy_atomic

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    ids_np, mask_np = ids.cpu().numpy(), mask.cpu().numpy()
    tokens = hashlib.sha256(ids_np.tobytes() + mask_np.tobytes()).hexdigest()
    key = _key("textfeat", "mpnet-mean-l2", tower.weights_id, tokens, ids_np.shape)
    path = cache_dir / f"textfeat-{key}.npy"
    if path.is_file():
        try:
            cached = np.load(path)  # never pickles (allow_pickle=False)
            if cached.shape == (len(ids_np), tower.feat_dim) and cached.dtype == np.float32:
                return cached
        except (OSError, ValueError, EOFError):
            pass
        # damaged (e.g. a disk that filled up) or foreign: recompute, then replace it atomically
        log.warning("%s: unreadable or the wrong shape; recomputing the caption features", path)
    out = np.zeros((len(ids_np), tower.feat_dim), np.float32)
    order = np.argsort(mask_np.sum(1), kind="stable")  # similar lengths together: less padding
    for s in tqdm(range(0, len(order), batch_size), desc="mpnet caption features", leave=False):
        rows = torch.from_numpy(order[s:s + batch_size])
        out[rows.numpy()] = tower.sentence_features(ids[rows], mask[rows]).cpu().numpy()
    _save_npy_atomic(path, out)
    return out


def cached_text_inputs(tower, ids: torch.Tensor, mask: torch.Tensor, cache_dir):
    """What the trainer feeds the text tower: the token ids, or for a frozen tower its cached
    features (float (N, 768)) with an empty mask."""
    if not getattr(tower, "frozen_features", False):
        return ids, mask
    feats = caption_features(tower, ids, mask, cache_dir)
    return torch.from_numpy(feats), torch.zeros((len(ids), 0), dtype=torch.int64)


def prime_text_cache(model, captions: list, cache_dir) -> None:
    """Fill a frozen text tower's in-memory features for ``captions`` from the disk cache (an
    evaluation then runs only the head); a no-op for other towers."""
    tower = model.text_encoder
    if not getattr(tower, "frozen_features", False):
        return
    from .tokens import load_tokenizer, tokenize
    tok = load_tokenizer(model.tokenizer_file, model.context_length)
    ids, mask = tokenize(tok, captions)
    ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
    tower.remember(ids, mask, caption_features(tower, ids, mask, cache_dir))


__all__ = ["MpnetFrozenTower", "caption_features", "cached_text_inputs", "prime_text_cache"]
