import csv

import numpy as np
import pytest

from edgeclip.tokenize import Tokenizer
from tiny_model import minilm_tokenizer_json


def test_parity_with_transformers_on_every_flickr8k_caption(flickr8k):
    transformers = pytest.importorskip("transformers")
    path = minilm_tokenizer_json()
    ref = transformers.AutoTokenizer.from_pretrained(str(path.parent))
    with open(flickr8k / "captions.csv", newline="", encoding="utf-8") as f:
        captions = [row["caption"] for row in csv.DictReader(f)]
    assert len(captions) == 40455
    ctx = 32
    ours = Tokenizer(path, ctx)
    ids, mask = ours(captions)
    want = ref(captions, padding="max_length", truncation=True, max_length=ctx,
               return_tensors="np")
    assert ids.shape == (len(captions), ctx)
    mismatched = np.nonzero((ids != want["input_ids"]).any(axis=1))[0]
    assert mismatched.size == 0, [captions[i] for i in mismatched[:5]]
    assert (mask == want["attention_mask"]).all()


def test_truncation_and_padding():
    tok = Tokenizer(minilm_tokenizer_json(), 8)
    ids, mask = tok(["a dog", "word " * 10000, ""])
    assert ids.shape == mask.shape == (3, 8)
    assert ids[0, 0] == 101 and ids[0, 3] == 102 and mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert mask[1].all() and ids[1, -1] == 102  # truncated, still ends with [SEP]
    assert ids.dtype == np.int64
