"""The frozen-MPNet text tower (``"type": "mpnet_frozen"``) with a tiny random MPNet (no real
weights in CI): the sentence-transformers recipe, the caption-feature cache, training of the
head only, checkpoints without the frozen weights, and distilling a student from such a teacher."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _distill_data import make_flickr_layout
from edgeclip.distill import mpnet_tower
from edgeclip.distill.checkpoint import load_dual_encoder, save_dual_encoder
from edgeclip.distill.config import load_config
from edgeclip.distill.models import build_student
from edgeclip.distill.tokens import load_tokenizer, tokenize
from edgeclip.distill.trainer import Trainer, train

TINY_MPNET = {"vocab_size": 128, "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 40,
              "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}
TEXT = {"type": "mpnet_frozen", "hf_config": TINY_MPNET, "init_seed": 7, "head_hidden": 16}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_flickr_layout(tmp_path_factory.mktemp("mpnetflickr"))


def _model():
    return build_student("tiny-test", pretrained=False, overrides={"text": TEXT})


def _tokens(model, texts):
    tok = load_tokenizer(model.tokenizer_file, model.context_length)
    ids, mask = tokenize(tok, texts)
    return torch.from_numpy(ids), torch.from_numpy(mask)


def _cfg(root, out, preset="clip", **train_):
    sets = [f'run.out="{out}"', 'model.name="tiny-test"', "model.pretrained=false",
            f'data.root="{root}"', f'data.cache_dir="{root / "cache"}"',
            f'loss.preset="{preset}"', "train.batch_size=8", "train.epochs=4",
            "train.log_every=1", "train.warmup_steps=2", "train.threads=1", "train.lr=0.003",
            "train.checkpoint_every=0"]
    sets += [f"train.{k}={v}" for k, v in train_.items()]
    cfg = load_config(None, sets)
    cfg["model"]["config"] = {"text": TEXT}
    return cfg


def test_features_are_the_sentence_transformers_recipe():
    from transformers import MPNetConfig, MPNetModel
    m = _model()
    tower = m.text_encoder
    ids, mask = _tokens(m, ["a red dog runs", "a blue dog sits on the grass today"])
    got = tower.sentence_features(ids, mask)
    torch.manual_seed(7)
    ref_model = MPNetModel(MPNetConfig(**TINY_MPNET), add_pooling_layer=False).eval()
    with torch.no_grad():
        h = ref_model(input_ids=ids, attention_mask=mask).last_hidden_state
    w = mask.unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((h * w).sum(1) / w.sum(1), dim=-1)
    assert got.shape == (2, 32)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # the tower's output from token ids is the head applied to those features
    out = tower(ids, mask)
    torch.testing.assert_close(out, tower(got, torch.zeros(2, 0, dtype=torch.int64)))
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_checkpoint_holds_the_head_only(tmp_path):
    m = _model()
    keys = [k for k in m.state_dict() if k.startswith("text_encoder.")]
    assert keys and all(k.startswith("text_encoder.proj.") for k in keys), keys
    assert all(not p.requires_grad for p in m.text_encoder.encoder().parameters())
    save_dual_encoder(m, tmp_path / "ck")
    back = load_dual_encoder(tmp_path / "ck")
    ids, mask = _tokens(m, ["a green dog plays", "a black dog"])
    with torch.no_grad():
        torch.testing.assert_close(back.encode_text(ids, mask), m.encode_text(ids, mask))


def test_caption_cache_and_training(tiny_data, tmp_path, monkeypatch):
    t = Trainer(_cfg(tiny_data, tmp_path / "a"))
    assert t.ids.is_floating_point() and t.ids.shape == (len(t.ds.captions), 32)
    files = sorted((tiny_data / "cache").glob("textfeat-*.npy"))
    assert len(files) == 1
    enc = t.model.text_encoder.encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    head0 = t.model.text_encoder.proj.lin.weight.detach().clone()
    res = t.fit()
    recs = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert res["steps"] == 12 and losses[-1] < losses[0]
    assert not torch.equal(t.model.text_encoder.proj.lin.weight, head0)  # the head learnt
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k]), k  # MPNet did not move
    # the dev captions were cached too (the evaluation ran the head only)
    assert len(sorted((tiny_data / "cache").glob("textfeat-*.npy"))) == 2
    # a second run reads both caches: the frozen encoder never runs
    def boom(*a, **k):
        raise AssertionError("the frozen encoder ran although its features were cached")
    monkeypatch.setattr(mpnet_tower.MpnetFrozenTower, "sentence_features", boom)
    res2 = train(_cfg(tiny_data, tmp_path / "b"))
    assert res2["best_mean_recall"] == pytest.approx(res["best_mean_recall"])


def test_a_student_distils_from_an_mpnet_teacher(tiny_data, tmp_path, monkeypatch):
    train(_cfg(tiny_data, tmp_path / "teacher", epochs=2))

    # the teacher's caption features come from the cache its training wrote: MPNet never reruns
    def boom(*a, **k):
        raise AssertionError("the frozen encoder ran although its features were cached")
    monkeypatch.setattr(mpnet_tower.MpnetFrozenTower, "sentence_features", boom)
    cfg = load_config(None, [f'run.out="{tmp_path / "student"}"', 'model.name="tiny-test"',
                             "model.pretrained=false", f'data.root="{tiny_data}"',
                             f'data.cache_dir="{tiny_data / "cache"}"',
                             f'teacher.path="{tmp_path / "teacher" / "final"}"',
                             'loss.preset="cona"', "train.batch_size=8", "train.epochs=2",
                             "train.log_every=1", "train.threads=1"])
    res = train(cfg)
    assert res["steps"] == 6 and np.isfinite(res["loss"])
    tfiles = sorted((tiny_data / "cache").glob("teacher-*.safetensors"))
    assert len(tfiles) == 1
    from safetensors.numpy import load_file
    t = load_file(str(tfiles[0]))
    assert t["text"].shape == (73, 32) and np.allclose(np.linalg.norm(t["text"], axis=1), 1,
                                                        atol=1e-4)


def test_an_mpnet_teacher_exports_to_onnx(tmp_path):
    """The frozen encoder is traced into the text graph (for timing a teacher beside students):
    the exported graph embeds captions as the torch model does."""
    pytest.importorskip("skimage", reason="verification photos come with scikit-image")
    from edgeclip import Embedder
    from edgeclip.export.pipeline import export_dual_encoder
    model = _model().eval()
    report = export_dual_encoder(model, tmp_path / "b", ("fp32",), "cpu", log=lambda *_: None)
    assert report["passed"]
    texts = ["a dog runs on the beach", "two children play football in a park"]
    ids, mask = _tokens(model, texts)
    with torch.no_grad():
        ref = model.encode_text(ids, mask).numpy()
    with Embedder(tmp_path / "b", backend="onnxruntime", threads=1) as e:
        got = e.embed_texts(texts)
    np.testing.assert_allclose((got * ref).sum(1), 1.0, atol=1e-5)
    import onnx
    g = onnx.load(str(tmp_path / "b" / "text.fp32.onnx"))
    n_weights = sum(int(np.prod(t.dims)) for t in g.graph.initializer)
    n_mpnet = sum(p.numel() for p in model.text_encoder.encoder().parameters())
    assert n_weights >= n_mpnet  # the frozen MPNet is in the graph, not left out


@pytest.mark.parametrize("damage", ["truncated", "wrong_shape", "pickle"])
def test_damaged_caption_cache_is_recomputed(tmp_path, damage):
    model = _model()
    tower = model.text_encoder
    ids, mask = _tokens(model, ["a dog runs", "two children play in a park", "a red car"])
    good = mpnet_tower.caption_features(tower, ids, mask, tmp_path)
    (path,) = tmp_path.glob("textfeat-*.npy")
    if damage == "truncated":  # a disk that filled up mid-write of an older version
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "wrong_shape":
        np.save(path, np.zeros((2, 5), np.float32))
    else:  # never unpickled
        np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    again = mpnet_tower.caption_features(tower, ids, mask, tmp_path)
    np.testing.assert_allclose(again, good, atol=1e-6)
    np.testing.assert_allclose(np.load(path), good, atol=1e-6)  # the file was replaced
