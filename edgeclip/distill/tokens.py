"""Tokenization for training: the ``tokenizers`` library on the tokenizer.json the bundle ships,
truncated and padded to ``context_length``."""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer

from ..errors import ConfigError


def load_tokenizer(path, context_length: int) -> Tokenizer:
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on a bad file
        raise ConfigError(f"{path}: cannot load tokenizer ({e})") from None
    pad_id = tok.padding["pad_id"] if tok.padding else None  # the file's own (as the runtime)
    if pad_id is None:
        pad_id = tok.token_to_id("[PAD]")
    if pad_id is None:
        pad_id = tok.token_to_id("<pad>")
    if pad_id is None:
        pad_id = 0
    pad_tok = tok.id_to_token(pad_id) or "[PAD]"
    tok.enable_truncation(max_length=context_length)
    tok.enable_padding(length=context_length, pad_id=pad_id, pad_token=pad_tok)
    return tok


def tokenize(tok: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """-> input_ids, attention_mask: int64 (N, context_length)."""
    enc = tok.encode_batch(list(texts))
    ids = np.asarray([e.ids for e in enc], dtype=np.int64).reshape(len(enc), -1)
    mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64).reshape(len(enc), -1)
    return ids, mask
