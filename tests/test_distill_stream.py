"""Tar shards streamed with webdataset: the same pairs as the CSV, shard shuffling, a disjoint split
across ranks, and training that streams (no start-up scan, no cache)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("webdataset", reason="streaming shards needs webdataset (edgeclip[train])")

from _distill_data import make_flickr_layout  # noqa: E402
from edgeclip.distill.checkpoint import save_dual_encoder  # noqa: E402
from edgeclip.distill.config import load_config  # noqa: E402
from edgeclip.distill.data import (open_dataset, shard_sizes, stream_pairs,  # noqa: E402
                                   write_shards)
from edgeclip.distill.models import build_student  # noqa: E402
from edgeclip.distill.stream import ShardStream, use_stream  # noqa: E402
from edgeclip.distill.trainer import _Dist, train  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory, request):
    """A CSV dataset (real Flickr8k photos when present, else drawn ones) and its shards."""
    root = tmp_path_factory.mktemp("stream")
    try:
        flickr = request.getfixturevalue("flickr8k")
    except pytest.skip.Exception:
        flickr = None
    if flickr is not None:
        import shutil
        csv_root = root / "csv"
        (csv_root / "images").mkdir(parents=True)
        (csv_root / "splits").mkdir()
        names = (flickr / "splits" / "train.txt").read_text().split()[:24]
        for n in names:
            shutil.copyfile(flickr / "images" / n, csv_root / "images" / n)
        lines = [ln for ln in (flickr / "captions.csv").read_text().splitlines()[1:]
                 if ln.split(",", 1)[0] in set(names)]
        (csv_root / "captions.csv").write_text("image,caption\n" + "\n".join(lines) + "\n")
        (csv_root / "splits" / "train.txt").write_text("\n".join(names) + "\n")
        (csv_root / "splits" / "dev.txt").write_text("\n".join(names[:8]) + "\n")
    else:
        csv_root = make_flickr_layout(root / "csv", corrupt=False)
    csv_ds = open_dataset({"root": str(csv_root)}, "train")
    files = write_shards(csv_ds, root / "shards" / "train", per_shard=5)
    write_shards(open_dataset({"root": str(csv_root)}, "dev"), root / "shards" / "dev",
                 per_shard=5)
    return csv_root, csv_ds, root / "shards", files


def _as_pairs(stream):
    return [(x["key"], tuple(x["captions"]), x["image"]) for x in stream]


def test_stream_gives_the_csv_pairs(data):
    _, csv_ds, _, files = data
    want = [(Path(s.key).stem, tuple(s.captions), Path(s.path).read_bytes())
            for s in csv_ds.samples]
    assert len(files) == 5 and shard_sizes(files) == len(want) == 24
    got = _as_pairs(stream_pairs(files, shuffle_shards=False))
    assert got == want  # same images (bytes), same captions, same order
    shuffled = _as_pairs(stream_pairs(files, seed=3, shuffle_buffer=8))
    assert sorted(shuffled) == sorted(want) and shuffled != want
    again = _as_pairs(stream_pairs(files, seed=3, shuffle_buffer=8))
    assert again == shuffled  # deterministic for a seed
    ranks = [_as_pairs(stream_pairs(files, rank=r, world=2, seed=7)) for r in range(2)]
    keys = [{k for k, _, _ in p} for p in ranks]
    assert not keys[0] & keys[1] and sorted(ranks[0] + ranks[1]) == sorted(want)


def test_workers_split_a_ranks_shards(data):
    csv_root, csv_ds, shards, files = data
    cfg = load_config(None, [f'data.root="{shards}"', 'model.name="tiny-test"',
                             "model.pretrained=false", "data.workers=2", "data.shuffle_buffer=0"])
    assert use_stream(cfg["data"])
    model = build_student("tiny-test", pretrained=False)
    s = ShardStream(cfg, model, None, _Dist(), "cpu")
    assert s.epoch_samples == 24
    loader = torch.utils.data.DataLoader(s.pairs(0), batch_size=None, num_workers=2)
    keys = [x["key"] for x in loader]
    assert sorted(keys) == sorted(Path(x.key).stem for x in csv_ds.samples)  # each pair once


def test_training_streams_shards(data, tmp_path, monkeypatch):
    csv_root, _, shards, files = data
    opened = []
    real_open = tarfile.open
    monkeypatch.setattr(tarfile, "open",
                        lambda *a, **k: opened.append((a, k)) or real_open(*a, **k))
    torch.manual_seed(0)
    save_dual_encoder(build_student("tiny-test", pretrained=False), tmp_path / "teacher")
    sets = [f'run.out="{tmp_path / "run"}"', 'model.name="tiny-test"', "model.pretrained=false",
            f'data.root="{shards}"', f'data.cache_dir="{tmp_path / "cache"}"',
            f'teacher.path="{tmp_path / "teacher"}"', "train.batch_size=8", "train.epochs=2",
            "train.log_every=1", "train.warmup_steps=1", "train.threads=1",
            "train.eval_every_epochs=0"]
    res = train(load_config(None, sets))
    assert res["steps"] == 6  # 24 samples / batch 8 x 2 epochs
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert len(losses) == 6 and all(0 < v < 100 for v in losses)
    edges = {k.split("/")[1] for k in recs[-1] if k.startswith("loss/")}
    assert {"TI-SI", "TT-ST", "TI-ST", "SI-ST"} <= edges  # teacher edges, computed live
    # every shard was read as a stream ("r|*": sequential, as consumed), none opened for a
    # random-access scan (the indexed path's tarfile.open(shard, "r:"))
    modes = [k.get("mode", a[1] if len(a) > 1 else "r") for a, k in opened]
    assert modes and all(m.startswith("r|") for m in modes), modes
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    # several captions per image need the indexed path: refused with the fix named
    from edgeclip.errors import ConfigError as _CE
    with pytest.raises(_CE, match="captions_per_image > 1 needs an indexed dataset"):
        train(load_config(None, sets + [f'run.out="{tmp_path / "k2"}"', 'loss.preset="clip"',
                                        "data.captions_per_image=2"]))
    # without sizes.json the epoch length must be given
    (shards / "train" / "sizes.json").rename(shards / "train" / "sizes.bak")
    try:
        from edgeclip.errors import ConfigError
        with pytest.raises(ConfigError, match="epoch_samples"):
            train(load_config(None, sets + [f'run.out="{tmp_path / "run2"}"']))
        res = train(load_config(None, sets + [f'run.out="{tmp_path / "run3"}"',
                                              "data.epoch_samples=16", "train.epochs=1"]))
        assert res["steps"] == 2
    finally:
        (shards / "train" / "sizes.bak").rename(shards / "train" / "sizes.json")
