"""Distillation from a Hugging Face CLIP / SigLIP teacher (tiny random models, a few steps): the
teacher's embeddings are cached as for edgeclip teachers, and `edgeclip eval` on the teacher
directory gives the recall the report's "% of teacher" is computed from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch  # noqa: E402

from _distill_data import make_flickr_layout  # noqa: E402
from edgeclip.distill.cache import teacher_embeddings  # noqa: E402
from edgeclip.distill.config import load_config  # noqa: E402
from edgeclip.distill.data import open_dataset  # noqa: E402
from edgeclip.distill.evaluate import evaluate_path, metrics_from  # noqa: E402
from edgeclip.distill.teachers import SourceTeacher, load_teacher  # noqa: E402
from edgeclip.distill.trainer import train  # noqa: E402
from edgeclip.errors import ConfigError  # noqa: E402
from hf_tiny import build_hf_clip, build_hf_siglip  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher_data")
    make_flickr_layout(root, n_train=16, n_dev=8)
    build_hf_clip(root / "clip", image_size=64)
    build_hf_siglip(root / "siglip", image_size=64)
    return root


@pytest.mark.parametrize("name,ttype", [("clip", "hf_clip"), ("siglip", None)])
def test_distill_from_a_hugging_face_teacher(name, ttype, data, tmp_path):
    sets = [f'run.out="{tmp_path / "run"}"', 'model.name="tiny-test"', "model.pretrained=false",
            f'data.root="{data}"', f'data.cache_dir="{tmp_path / "cache"}"',
            f'teacher.path="{data / name}"', 'loss.preset="cona"', "train.batch_size=8",
            "train.epochs=1", "train.log_every=1", "train.warmup_steps=1", "train.threads=1",
            "train.checkpoint_every=0"]
    if ttype:  # the older type name keeps working; without a type any source is accepted
        sets.append(f'teacher.type="{ttype}"')
    result = train(load_config(None, sets))
    assert result["steps"] == 2 and result["skipped_images"] == 1  # 16 good + 1 corrupt image
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text()
              .splitlines() if "loss" in json.loads(x)]
    assert len(losses) == 2 and all(np.isfinite(losses))
    cached = sorted((tmp_path / "cache").glob("teacher-*.safetensors"))
    assert len(cached) == 1

    # the cache holds this teacher's own (library) embeddings, and a second run reuses it
    teacher = load_teacher({"path": str(data / name)})
    assert isinstance(teacher, SourceTeacher)
    ds = open_dataset({"root": str(data)}, "train")
    again = teacher_embeddings(teacher, ds, tmp_path / "cache")
    assert again["path"] == cached[0]
    hf = teacher.model.hf_model
    px = torch.from_numpy(ds.pixels(0, teacher.preprocess))[None]
    with torch.no_grad():
        want = hf.get_image_features(pixel_values=px)
    want = torch.nn.functional.normalize(getattr(want, "pooler_output", want), dim=-1)[0]
    assert np.dot(again["image"][0], want.numpy()) > 0.99999
    ids, mask = teacher.tokenize(ds.captions[:3])
    with torch.no_grad():
        kw = {"attention_mask": torch.from_numpy(mask)} if name == "clip" else {}
        t = hf.get_text_features(input_ids=torch.from_numpy(ids), **kw)
    t = torch.nn.functional.normalize(getattr(t, "pooler_output", t), dim=-1).numpy()
    assert np.allclose(again["text"][:3], t, atol=1e-5)

    # eval on the teacher directory = the recall of exactly the embeddings distillation used
    m = evaluate_path(str(data / name), ds)
    ref = metrics_from(again["image"], again["ok"], again["text"], ds)
    for k in ("t2i_r1", "t2i_r5", "i2t_r1", "i2t_r5"):
        assert m[k] == pytest.approx(ref[k]), k


def test_teacher_type_must_fit_the_path(data):
    with pytest.raises(ConfigError, match="teacher.type = 'hf_siglip' but teacher.path .* "
                                          "Hugging Face CLIPModel directory"):
        load_teacher({"type": "hf_siglip", "path": str(data / "clip")})
    with pytest.raises(ConfigError, match="teacher.type 'bogus' is unknown"):
        load_teacher({"type": "bogus", "path": str(data / "clip")})
    with pytest.raises(ConfigError, match="not a model edgeclip can load"):
        load_teacher({"path": str(data / "images")})


def test_teacher_identity_keys_weights_and_context(data, tmp_path):
    a = load_teacher({"path": str(data / "siglip")})
    b = load_teacher({"type": "hf_siglip", "path": str(data / "siglip"), "context_length": 32})
    assert a.identity != b.identity and b.context_length == 32
    c = load_teacher({"path": str(data / "siglip")})
    assert a.identity == c.identity
    assert Path(a.model.tokenizer_file).is_file()
