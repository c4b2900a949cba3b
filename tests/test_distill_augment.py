"""Train-time augmentation through the frozen-prefix cache (edgeclip.distill.augment):
deterministic per seed, really applied in training, never at evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _distill_data import make_flickr_layout
from edgeclip.distill.augment import augment_settings, augmented_view, crop_box
from edgeclip.distill.checkpoint import load_dual_encoder
from edgeclip.distill.config import load_config
from edgeclip.distill.data import open_dataset
from edgeclip.distill.evaluate import evaluate_model
from edgeclip.distill.trainer import Trainer
from edgeclip.errors import ConfigError
from edgeclip.manifest import PreprocessCfg
from edgeclip.preprocess import load_image, preprocess_image


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_flickr_layout(tmp_path_factory.mktemp("augflickr"))


def _photo():
    from skimage import data
    return load_image(data.astronaut())  # 512 x 512, a real photograph


def _cfg(root, out, seed=0, views=2, **over):
    sets = [f'run.out="{out}"', f"run.seed={seed}", 'model.name="tiny-test"',
            "model.pretrained=false", f'data.root="{root}"', f'data.cache_dir="{root / "cache"}"',
            'loss.preset="clip"', "train.batch_size=8", "train.epochs=3", "train.log_every=1",
            "train.warmup_steps=2", "train.threads=1", "train.checkpoint_every=0",
            f"data.augment_views={views}"]
    sets += [f"{k}={v}" for k, v in over.items()]
    cfg = load_config(None, sets)
    cfg["model"]["config"] = {"image": {"freeze_blocks": 1}}  # a cached prefix, a trained tail
    return cfg


def _losses(out):
    recs = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


def test_views_are_a_function_of_seed_index_and_view():
    img, cfg = _photo(), PreprocessCfg(size=(64, 64))
    _, p = augment_settings({"augment_views": 3})
    a = augmented_view(img, cfg, p, 0, 5, 1)
    assert a.shape == (3, 64, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, augmented_view(img, cfg, p, 0, 5, 1))
    others = [augmented_view(img, cfg, p, s, i, v) for s, i, v in
              ((1, 5, 1), (0, 6, 1), (0, 5, 2))]
    for o in others:
        assert np.abs(o - a).mean() > 0.05  # another seed, image or view: another crop
    # crop boxes stay inside the image and within the area / ratio bounds
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, w, h = crop_box(300, 200, rng, (0.6, 1.0), (0.75, 4 / 3))
        assert 0 <= left and 0 <= top and left + w <= 300 and top + h <= 200
        assert 0.6 * 60000 * 0.97 <= w * h <= 60000


def test_identity_view_equals_plain_preprocessing():
    """crop = the whole (square) image and no flip: exactly the plain pipeline's pixels."""
    img, cfg = _photo(), PreprocessCfg(size=(96, 96), interpolation="bilinear")
    _, p = augment_settings({"augment_views": 1, "augment": {"crop_scale": [1.0, 1.0],
                                                             "crop_ratio": [1.0, 1.0],
                                                             "flip": False}})
    np.testing.assert_allclose(augmented_view(img, cfg, p, 0, 0, 1), preprocess_image(img, cfg),
                               atol=1e-6)
    _, p = augment_settings({"augment_views": 1, "augment": {"crop_scale": [1.0, 1.0],
                                                             "crop_ratio": [1.0, 1.0]}})
    flips = [np.allclose(augmented_view(img, cfg, p, 0, i, 1),
                         preprocess_image(img, cfg)[:, :, ::-1], atol=1e-6) for i in range(20)]
    assert 5 <= sum(flips) <= 15  # mirrored about half the time


def test_bad_settings_are_refused(tiny_data, tmp_path):
    for bad in ({"augment_views": -1}, {"augment_views": 2, "augment": {"crop_scale": [0.5, 2]}},
                {"augment_views": 2, "augment": {"rotate": 10}}):
        with pytest.raises(ConfigError, match="data.augment"):
            augment_settings(bad)
    cfg = _cfg(tiny_data, tmp_path / "noprefix")
    cfg["model"]["config"] = {}  # tiny-test: nothing frozen, so no prefix cache
    with pytest.raises(ConfigError, match="data.augment_views needs the frozen-prefix cache"):
        Trainer(cfg)


def test_augmented_training_is_deterministic_per_seed(tiny_data, tmp_path):
    a = Trainer(_cfg(tiny_data, tmp_path / "a"))
    a.fit()
    b = Trainer(_cfg(tiny_data, tmp_path / "b"))
    b.fit()
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")  # bit-identical
    ma, mb = (load_dual_encoder(tmp_path / r / "final") for r in ("a", "b"))
    for (k, v), (_, w) in zip(ma.state_dict().items(), mb.state_dict().items()):
        assert torch.equal(v, w), k
    # another run seed draws other views in each epoch, and each epoch draws anew
    c = Trainer(_cfg(tiny_data, tmp_path / "c", seed=1))
    assert (c.aug.choice(0, 1) != a.aug.choice(0, 0)).any()
    assert (a.aug.choice(1, 0) != a.aug.choice(0, 0)).any()
    # the views are really used: some rows of an epoch differ from the plain prefix, others not
    idx = np.arange(len(a.ds))
    v = a.aug.choice(0, 0)
    assert set(np.unique(v)) == {0, 1, 2}
    rows = a.aug.rows(idx, 0, 0).astype(np.float32)
    plain = np.asarray(a.prefix["features"], np.float32)
    same = np.all(rows == plain, axis=(1, 2, 3))
    ok = a.prefix["ok"]
    assert np.array_equal(same[ok], (v == 0)[ok])
    # and they change what is learnt: the same seed without augmentation trains otherwise
    Trainer(_cfg(tiny_data, tmp_path / "plain", views=0)).fit()
    assert _losses(tmp_path / "plain") != _losses(tmp_path / "a")


def test_evaluation_sees_the_plain_images_only(tiny_data, tmp_path):
    t = Trainer(_cfg(tiny_data, tmp_path / "ev", **{"train.epochs": 2}))
    t.fit()
    logged = [json.loads(x) for x in (tmp_path / "ev" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in logged if r.get("eval") == "dev"][-1]
    assert t.eval_prefix["path"] != t.aug.path
    # the checkpoint evaluated from the raw pixels (no cache, no views) scores what training logged
    model = load_dual_encoder(tmp_path / "ev" / "final")
    dev = open_dataset({"root": str(tiny_data)}, "dev")
    fresh = evaluate_model(model, dev)
    for k in ("t2i_r1", "t2i_r5", "i2t_r1", "i2t_r5", "mean_recall"):
        assert fresh[k] == pytest.approx(last[k], abs=1e-9), k


def test_train_images_picks_a_fixed_subset(tiny_data, tmp_path):
    """data.train_images (short pilots): the same N usable images whatever the run seed."""
    a = Trainer(_cfg(tiny_data, tmp_path / "s0", views=0, **{"data.train_images": 16}))
    b = Trainer(_cfg(tiny_data, tmp_path / "s1", seed=1, views=0, **{"data.train_images": 16}))
    full = Trainer(_cfg(tiny_data, tmp_path / "all", views=0))
    assert len(a.usable) == 16 and np.array_equal(a.usable, b.usable)
    assert set(a.usable) < set(full.usable) and len(full.usable) == 24
    assert a.mb_per_epoch == 2
