import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from _distill_data import make_flickr_layout
from edgeclip.distill.checkpoint import load_dual_encoder, save_dual_encoder
from edgeclip.distill.config import load_config
from edgeclip.distill.data import open_dataset
from edgeclip.distill.models import build_student
from edgeclip.distill.trainer import train


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinyflickr")
    make_flickr_layout(root)
    torch.manual_seed(1)
    teacher = build_student("tiny-test", pretrained=False)
    save_dual_encoder(teacher, root / "teacher")
    return root


def _cfg(root, out, preset="cona", **train):
    sets = [f'run.out="{out}"', 'model.name="tiny-test"', "model.pretrained=false",
            f'data.root="{root}"', f'data.cache_dir="{root / "cache"}"',
            f'teacher.path="{root / "teacher"}"', f'loss.preset="{preset}"',
            "train.batch_size=8", "train.epochs=3", "train.log_every=1", "train.warmup_steps=2",
            "train.threads=1"]
    sets += [f"train.{k}={v}" for k, v in train.items()]
    return load_config(None, sets)


def _losses(out):
    recs = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def test_resume_continues_exactly(tiny_data, tmp_path):
    full = train(_cfg(tiny_data, tmp_path / "full", checkpoint_every=0))
    assert full["steps"] == 9 and full["skipped_images"] == 1  # the corrupt image
    part = train(_cfg(tiny_data, tmp_path / "part", stop_at_step=4, checkpoint_every=0))
    assert part["stopped_at"] == 4
    rest = train(_cfg(tiny_data, tmp_path / "part", checkpoint_every=0))
    assert rest["steps"] == 9
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "part")
    assert sorted(a) == sorted(b) == list(range(1, 10))
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-6, abs=1e-7), s
    m1 = load_dual_encoder(tmp_path / "full" / "final")
    m2 = load_dual_encoder(tmp_path / "part" / "final")
    for (k, v), (_, w) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.allclose(v, w, atol=1e-6), k
    assert (tmp_path / "full" / "best" / "model.safetensors").is_file()


def test_clip_preset_learns_and_eval_cli(tiny_data, tmp_path):
    res = train(_cfg(tiny_data, tmp_path / "clip", preset="clip", epochs=12, lr=3e-3))
    losses = _losses(tmp_path / "clip")
    first, last = losses[1], losses[max(losses)]
    assert last < first
    from edgeclip.distill.cli import eval_cmd
    r = CliRunner().invoke(eval_cmd, ["--model", str(tmp_path / "clip" / "final"), "--data",
                                      str(tiny_data), "--split", "dev", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    assert m["n_images"] == 8 and m["n_texts"] == 24 and m["backend"] == "torch"
    assert res["best_mean_recall"] >= 0 and 0 <= m["mean_recall"] <= 100
    r = CliRunner().invoke(eval_cmd, ["--model", str(tmp_path), "--data", str(tiny_data)])
    assert r.exit_code != 0


def test_data_formats_agree(tiny_data, tmp_path):
    csv_ds = open_dataset({"root": str(tiny_data)}, "dev")
    # Karpathy JSON
    kp = {"images": [{"filename": s.key, "split": "val",
                      "sentences": [{"raw": c} for c in s.captions]} for s in csv_ds.samples]}
    kdir = tmp_path / "kp"
    kdir.mkdir()
    (kdir / "dataset_flickr8k.json").write_text(json.dumps(kp))
    k_ds = open_dataset({"root": str(kdir), "image_root": str(tiny_data / "images")}, "dev")
    assert [s.captions for s in k_ds.samples] == [s.captions for s in csv_ds.samples]
    # webdataset shards
    wdir = tmp_path / "wds"
    wdir.mkdir()
    with tarfile.open(wdir / "shard-000.tar", "w") as tf:
        for s in csv_ds.samples:
            key = Path(s.key).stem
            for name, data in ((f"{key}.jpg", Path(s.path).read_bytes()),
                               (f"{key}.txt", "\n".join(s.captions).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    w_ds = open_dataset({"root": str(wdir)}, "")
    assert len(w_ds) == len(csv_ds) and w_ds.captions == csv_ds.captions
    cfg = csv_ds.samples and build_student("tiny-test", pretrained=False).preprocess
    assert (w_ds.pixels(0, cfg) == csv_ds.pixels(0, cfg)).all()
    assert (k_ds.pixels(3, cfg) == csv_ds.pixels(3, cfg)).all()


def test_ddp_two_processes_match_single(tiny_data, tmp_path):
    """torchrun, gloo, 2 processes x batch 4 == 1 process x batch 8 (features all-gathered)."""
    single = train(_cfg(tiny_data, tmp_path / "one", preset="cona", max_steps=1,
                        eval_every_epochs=0))
    cfg = tmp_path / "ddp.toml"
    cfg.write_text("")
    args = [f"--set={s}" for s in [f'run.out="{tmp_path / "two"}"', 'model.name="tiny-test"',
                                   "model.pretrained=false", f'data.root="{tiny_data}"',
                                   f'data.cache_dir="{tiny_data / "cache"}"',
                                   f'teacher.path="{tiny_data / "teacher"}"',
                                   "train.batch_size=8", "train.max_steps=1", "train.epochs=3",
                                   "train.log_every=1", "train.eval_every_epochs=0",
                                   "train.threads=1", "train.warmup_steps=2"]]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        "--master_port=29533", "-m", "edgeclip.distill", "--config", str(cfg),
                        *args], capture_output=True, text=True, env=env, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert set(a) == set(b) == {1}
    # same global batch (the union of the two ranks' batches) -> same loss
    assert b[1] == pytest.approx(a[1], rel=1e-5), (a, b)
    assert single["steps"] == 1


def test_teacher_cache_reuses_prefix_and_matches_teacher(tiny_data, tmp_path):
    from edgeclip.distill.cache import teacher_embeddings
    from edgeclip.distill.teachers import load_teacher
    torch.manual_seed(2)
    t_model = build_student("tiny-test", pretrained=False,
                            overrides={"image": {"freeze_blocks": 1}})
    save_dual_encoder(t_model, tmp_path / "t")
    teacher = load_teacher({"type": "checkpoint", "path": str(tmp_path / "t")})
    ds = open_dataset({"root": str(tiny_data)}, "train")
    got = teacher_embeddings(teacher, ds, tmp_path / "cache")
    assert got["ok"].sum() == len(ds) - 1 and not got["ok"][-1]  # broken.jpg skipped
    assert len(list((tmp_path / "cache").glob("prefix-*.npy"))) == 2  # features + ok mask
    px = torch.from_numpy(ds.pixels(0, teacher.preprocess))[None]
    want = teacher.encode_image(px)[0].numpy()
    assert abs(got["image"][0] - want).max() < 5e-3  # fp16 prefix
    ids, mask = teacher.tokenize(ds.captions[:2])
    tt = teacher.encode_text(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert abs(got["text"][:2] - tt).max() < 1e-5
    again = teacher_embeddings(teacher, ds, tmp_path / "cache")  # cache hit, same values
    assert (again["image"] == got["image"]).all() and str(again["path"]) == str(got["path"])


def test_captions_per_image_plan_and_training(tiny_data, tmp_path):
    """K captions per image: each step's text rows are K distinct captions of each image (all of
    them when it has fewer), the plan is a function of (seed, epoch), and the clip teacher
    recipe trains on it; other presets and bad values are refused with the key named."""
    from edgeclip.distill.trainer import Trainer
    from edgeclip.errors import ConfigError
    cfg = _cfg(tiny_data, tmp_path / "k2", preset="clip", epochs=12, lr=3e-3)
    cfg["data"]["captions_per_image"] = 2
    tr = Trainer(cfg)
    _imgs, pick = tr._epoch_plan(0)
    assert pick.shape == (len(tr.ds), 2)
    for i, (a, b) in enumerate(pick):
        own = set(range(tr.ds.caption_offsets[i], tr.ds.caption_offsets[i + 1]))
        if len(own) >= 2:
            assert a != b and {a, b} <= own
        else:  # one caption (the broken image's row): it, then nothing
            assert a in own and b == -1
    assert (Trainer(cfg)._epoch_plan(0)[1] == pick).all()
    assert not (tr._epoch_plan(1)[1] == pick).all()
    img, _fp, ids, _mask, _t, _e, group = tr._batch(0)
    n = img.shape[0]  # 8, or 7 when the broken image (dropped when decoded) is in the batch
    assert n >= 7 and ids.shape[0] == 2 * n and group.tolist() == sorted(list(range(n)) * 2)
    res = tr.fit()
    losses = _losses(tmp_path / "k2")
    assert res["steps"] == 36 and losses[max(losses)] < losses[1] - 0.2, losses
    cfg4 = _cfg(tiny_data, tmp_path / "k4", preset="clip", max_steps=1)
    cfg4["data"]["captions_per_image"] = 4  # more than the 3 each image has: all 3
    b4 = Trainer(cfg4)._batch(0)
    assert b4[2].shape[0] == 3 * b4[0].shape[0]
    for bad, match in ((0, "positive integer"), ("2", "positive integer")):
        c = _cfg(tiny_data, tmp_path / "bad", preset="clip")
        c["data"]["captions_per_image"] = bad
        with pytest.raises(ConfigError, match=match):
            Trainer(c)
    c = _cfg(tiny_data, tmp_path / "bad", preset="cona")
    c["data"]["captions_per_image"] = 2
    with pytest.raises(ConfigError, match="SI-ST InfoNCE edge only"):
        Trainer(c)


def test_ddp_with_captions_per_image_matches_single(tiny_data, tmp_path):
    """Two processes x 4 images (x 2 captions) == one process x 8: the caption -> image map is
    offset by each rank's images when the features are all-gathered."""
    sets = ['model.name="tiny-test"', "model.pretrained=false", f'data.root="{tiny_data}"',
            f'data.cache_dir="{tiny_data / "cache"}"', 'loss.preset="clip"',
            "data.captions_per_image=2", "train.batch_size=8", "train.max_steps=1",
            "train.epochs=3", "train.log_every=1", "train.eval_every_epochs=0",
            "train.threads=1", "train.warmup_steps=2"]
    train(load_config(None, sets + [f'run.out="{tmp_path / "one"}"']))
    cfg = tmp_path / "ddp.toml"
    cfg.write_text("")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        "--master_port=29534", "-m", "edgeclip.distill", "--config", str(cfg),
                        *[f"--set={s}" for s in sets + [f'run.out="{tmp_path / "two"}"']]],
                       capture_output=True, text=True, env=env, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert set(a) == set(b) == {1}
    assert b[1] == pytest.approx(a[1], rel=1e-5), (a, b)
