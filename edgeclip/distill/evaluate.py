"""Retrieval evaluation of a PyTorch checkpoint or an exported bundle on a dataset split, with
the same metric code (:func:`edgeclip.retrieval.recall_at_k`). Unreadable images are skipped,
with their captions, and counted."""

from __future__ import annotations

import numpy as np
import torch

from ..retrieval import recall_at_k
from .cache import pixel_batches
from .data import PairDataset
from .tokens import load_tokenizer, tokenize


def _unit(x: torch.Tensor) -> torch.Tensor:
    """L2-normalised float32 (students' encoders already are; foreign models' features not)."""
    return torch.nn.functional.normalize(x.float(), dim=-1)


@torch.no_grad()
def embed_images(model, ds: PairDataset, batch_size=64, device="cpu", prefix=None, workers=0):
    """-> (N, D) float32, ok mask. ``prefix``: cached frozen-prefix features to start from."""
    model.eval()
    out = np.zeros((len(ds), model.embed_dim), np.float32)
    ok = np.zeros(len(ds), bool)
    if prefix is not None:
        feats, pok = prefix["features"], prefix["ok"]
        for s in range(0, len(ds), batch_size):
            h = torch.from_numpy(np.array(feats[s:s + batch_size])).float().to(device)
            out[s:s + batch_size] = _unit(model.image_encoder.tail(h)).cpu().numpy()
        return out, pok.copy()
    for idx, pix, _bad in pixel_batches(ds, model.preprocess, batch_size, workers):
        if pix is not None:
            out[idx] = _unit(model.encode_image(pix.to(device))).cpu().numpy()
            ok[idx] = True
    return out, ok


@torch.no_grad()
def embed_texts(model, texts, batch_size=256, device="cpu"):
    model.eval()
    tok = load_tokenizer(model.tokenizer_file, model.context_length)
    res = []
    for s in range(0, len(texts), batch_size):
        ids, mask = tokenize(tok, texts[s:s + batch_size])
        res.append(_unit(model.encode_text(torch.from_numpy(ids).to(device),
                                           torch.from_numpy(mask).to(device))).cpu().numpy())
    return np.concatenate(res) if res else np.zeros((0, model.embed_dim), np.float32)


def metrics_from(image_emb, ok, text_emb, ds: PairDataset) -> dict:
    keep_img = np.nonzero(ok)[0]
    remap = -np.ones(len(ds), np.int64)
    remap[keep_img] = np.arange(len(keep_img))
    cap_img = remap[ds.caption_image]
    keep_cap = cap_img >= 0
    m = recall_at_k(image_emb[keep_img], text_emb[keep_cap], cap_img[keep_cap])
    m["skipped_images"] = int(len(ds) - len(keep_img))
    return m


def evaluate_model(model, ds: PairDataset, device="cpu", batch_size=64, prefix=None,
                   workers=0) -> dict:
    img, ok = embed_images(model, ds, batch_size, device, prefix, workers)
    txt = embed_texts(model, ds.captions, 256, device)
    return metrics_from(img, ok, txt, ds)


def evaluate_bundle(path, ds: PairDataset, backend="auto", precision=None, batch_size=32) -> dict:
    from ..embedder import Embedder
    emb = Embedder(path, backend=backend, precision=precision)
    items = [s.read() for s in ds.samples]
    img, skipped = emb.embed_images(items, batch_size=batch_size, on_error="skip",
                                    progress=len(items) > 64)
    ok = np.ones(len(ds), bool)
    for i, _item, _reason in skipped:
        ok[i] = False
    full = np.zeros((len(ds), img.shape[1]), np.float32)
    full[ok] = img
    txt = emb.embed_texts(ds.captions, batch_size=batch_size, progress=len(ds.captions) > 256)
    m = metrics_from(full, ok, np.asarray(txt), ds)
    m.update(backend=emb.backend, precision=emb.precision)
    return m


def evaluate_path(path, ds: PairDataset, device="cpu", weights=None, **kw) -> dict:
    """Any model source (:mod:`edgeclip.model_source`): a bundle runs on its runtime, a checkpoint,
    Hugging Face directory or ``open_clip:ARCH`` in PyTorch (fp32)."""
    from ..model_source import ModelSource, parse_source
    src = path if isinstance(path, ModelSource) else parse_source(path, weights)
    if src.is_bundle:
        return evaluate_bundle(src.path, ds, **kw)
    from ..export.sources import load_source
    model = load_source(src).to(device)
    m = evaluate_model(model, ds, device)
    m.update(backend="torch", precision="fp32")
    return m
