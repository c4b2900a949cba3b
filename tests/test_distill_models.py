import json

import numpy as np
import pytest
import torch

from edgeclip.distill.checkpoint import load_dual_encoder, save_dual_encoder
from edgeclip.distill.models import build_student, count_parameters, list_models
from edgeclip.errors import BundleError, ConfigError


def _tokens(model, texts):
    from edgeclip.distill.tokens import load_tokenizer, tokenize
    ids, mask = tokenize(load_tokenizer(model.tokenizer_file, model.context_length), texts)
    return torch.from_numpy(ids), torch.from_numpy(mask)


def test_registry_and_tiny_roundtrip(tmp_path):
    assert {"lite0-minilm2", "lite2-minilm6", "tiny-test"} <= set(list_models())
    m = build_student("tiny-test", pretrained=False).eval()
    assert count_parameters(m) < 20_000 and m.embed_dim == 32 and m.context_length == 16
    save_dual_encoder(m, tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["name"] == "tiny-test" and cfg["preprocess"]["size"] == [64, 64]
    m2 = load_dual_encoder(tmp_path / "ck")
    px = torch.randn(2, 3, 64, 64)
    ids, mask = _tokens(m, ["a red dog", "two men on a beach in the snow"])
    assert torch.equal(m.encode_image(px), m2.encode_image(px))
    t = m2.encode_text(ids, mask)
    assert torch.equal(m.encode_text(ids, mask), t)
    assert torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert mask[0].sum() == 5 and mask.shape == (2, 16)  # [CLS] a red dog [SEP]
    with pytest.raises(BundleError, match="not a dual-encoder checkpoint"):
        load_dual_encoder(tmp_path)
    with pytest.raises(ConfigError, match="unknown model"):
        build_student("no-such-model")


@pytest.mark.slow
def test_default_student_pretrained_minilm_parity_and_size():
    from transformers import BertModel
    from edgeclip.distill.text_towers import masked_mean, minilm_dir
    m = build_student("lite0-minilm2", overrides={"text": {"layers": 6, "token_embed_rank": 0}})
    hf = BertModel.from_pretrained(str(minilm_dir())).eval()
    ids, mask = _tokens(m, ["a dog runs on the beach", "two men"])
    with torch.no_grad():
        want = masked_mean(hf(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
        got = masked_mean(m.text_encoder.encoder(ids, mask), mask)
    assert torch.allclose(want, got, atol=1e-4)
    d = build_student("lite0-minilm2").eval()  # shipped default: 2 layers, rank-128 embedding
    n = count_parameters(d)
    assert n * (2 + 1) / 2**20 <= 40, n  # fp16 + int8 files together
    emb = d.text_encoder.encoder.embeddings.word_embeddings
    assert emb.low.weight.shape == (30522, 128)
    # the SVD keeps the pretrained table close: relative error of the rank-128 reconstruction
    from safetensors.torch import load_file
    w = load_file(str(minilm_dir() / "model.safetensors"))["embeddings.word_embeddings.weight"]
    with torch.no_grad():
        rec = emb.up(emb.low.weight)
    assert ((rec - w).norm() / w.norm()) < 0.6
    # frozen prefix + tail == forward, and the prefix stays frozen
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(d.image_encoder(x), d.image_encoder.tail(d.image_encoder.prefix(x)))
    d.train()
    assert not d.image_encoder.blocks[0].training and d.image_encoder.blocks[-1].training
    assert not any(p.requires_grad for p in d.image_encoder.blocks[:11].parameters())


def test_hf_clip_teacher_tiny_random(tmp_path):
    import importlib.util

    from edgeclip.distill.teachers import load_teacher
    from hf_tiny import build_hf_clip
    build_hf_clip(tmp_path / "clip", image_size=32)  # real tokenizer + preprocessor files
    t = load_teacher({"type": "hf_clip", "path": str(tmp_path / "clip"), "context_length": 8})
    assert t.embed_dim == 16 and t.preprocess.size == (32, 32)
    ids, mask = t.tokenize(["a red dog", "a cat"])
    assert ids.shape == (2, 8)
    e = t.encode_text(torch.from_numpy(ids), torch.from_numpy(mask))
    i = t.encode_image(torch.randn(3, 3, 32, 32))
    assert e.shape == (2, 16) and i.shape == (3, 16) and not e.requires_grad
    assert torch.allclose(i.norm(dim=-1), torch.ones(3), atol=1e-5)
    if importlib.util.find_spec("open_clip") is None:
        with pytest.raises(ConfigError, match="open_clip"):
            load_teacher({"type": "open_clip", "model": "ViT-B-32"})


def test_prefix_runner_matches_torch_and_leaves_no_temp_files(tmp_path, monkeypatch):
    import tempfile

    from edgeclip.distill.cache import _ort_prefix_runner
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    d = build_student("tiny-test", pretrained=False,
                      overrides={"image": {"freeze_blocks": 1}}).eval()
    run = _ort_prefix_runner(d.image_encoder, d.preprocess)
    assert run is not None
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        want = d.image_encoder.prefix(x).numpy()
    got = run(x)
    assert got.dtype == np.float16 and got.shape == want.shape
    assert np.abs(got.astype(np.float32) - want).max() < 1e-2
    assert list(tmp_path.iterdir()) == []  # the exported graph's folder is removed
