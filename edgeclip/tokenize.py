"""Tokenization with the `tokenizers` library from the bundle's ``tokenizer.json``.

Truncates and pads to the bundle's context length, so the ids are identical to what the model saw
in training (the same file, the same library).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import BundleError, InputError

#: Strings longer than this are cut before tokenizing: the context is at most a few hundred tokens,
#: so nothing a model can see is lost, and a 10 MB string cannot stall the tokenizer.
MAX_CHARS = 4096


def invalid_text_reason(text: str) -> str | None:
    """Why ``text`` cannot be tokenized, or None. A ``str`` holding unpaired surrogates (what
    undecodable bytes in ``sys.argv`` or a file name become, e.g. ``'\\udcff'``) has no UTF-8 form:
    the tokenizer cannot take it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start:e.end]
        return (f"not valid text: unpaired surrogate {ascii(bad)} at character {e.start} "
                f"(undecodable bytes, e.g. text in another encoding than UTF-8); pass UTF-8 text")
    return None


class Tokenizer:
    def __init__(self, path: str | Path, context_length: int):
        from tokenizers import Tokenizer as _HFTokenizer

        path = Path(path)
        try:
            tok = _HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a plain Exception on bad JSON
            raise BundleError(f"{path}: not a valid tokenizer.json ({str(e)[:200]}). Re-export the "
                              f"bundle.") from None
        self.path = path
        self.context_length = int(context_length)
        # the pad id the file itself declares (a Hugging Face CLIP/SigLIP export records its
        # model's, e.g. <|endoftext|> or </s>), else [PAD], <pad>, 0
        pad_id = tok.padding["pad_id"] if tok.padding else None
        if pad_id is None:
            pad_id = tok.token_to_id("[PAD]")
        if pad_id is None:
            pad_id = tok.token_to_id("<pad>")
        if pad_id is None:
            pad_id = 0
        self.pad_id = pad_id
        tok.enable_truncation(max_length=self.context_length)
        tok.enable_padding(length=self.context_length, pad_id=pad_id,
                           pad_token=tok.id_to_token(pad_id) or "[PAD]")
        self._tok = tok

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(input_ids, attention_mask)``, both int64 ``(N, context_length)``.
        A text that is not a string or not valid text raises :class:`InputError` naming it."""
        for i, t in enumerate(texts):
            reason = (f"not a string ({type(t).__name__})" if not isinstance(t, str)
                      else invalid_text_reason(t))
            if reason is not None:
                raise InputError(f"text {i}: {reason}", index=i, item=ascii(t)[:80],
                                 reason=reason)
        encs = self._tok.encode_batch([t[:MAX_CHARS] for t in texts])
        ids = np.asarray([e.ids for e in encs], dtype=np.int64).reshape(len(texts),
                                                                          self.context_length)
        mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64).reshape(
            len(texts), self.context_length)
        return ids, mask
