"""`~` and $VARS in every path a user passes (outside the index): Embedder, --model, configs and
the paths inside them, --calib-data / --eval-data, `edgeclip eval --data`, checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeclip import Embedder
from edgeclip.paths import expand_path


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.setenv("EDGECLIP_TEST_DIR", str(h / "envdir"))
    monkeypatch.chdir(tmp_path)  # nothing may appear under ./~ or ./$EDGECLIP_TEST_DIR
    return h


def _no_literal_dirs(cwd: Path):
    assert not (cwd / "~").exists() and not (cwd / "$EDGECLIP_TEST_DIR").exists()


def test_expand_path(home):
    assert expand_path("~/x.db") == home / "x.db"
    assert expand_path("$EDGECLIP_TEST_DIR/b") == home / "envdir" / "b"
    assert expand_path("${EDGECLIP_TEST_DIR}/b") == home / "envdir" / "b"
    assert expand_path("rel/p") == Path("rel/p")  # relative stays relative (working directory)


def test_embedder_and_cli_model(home, tiny_bundle, tmp_path):
    shutil.copytree(tiny_bundle, home / "bundle")
    with Embedder("~/bundle") as e:
        assert e.bundle_dir == home / "bundle"
    shutil.copytree(tiny_bundle, home / "envdir" / "b")
    with Embedder("$EDGECLIP_TEST_DIR/b/manifest.json") as e:
        assert e.bundle_dir == home / "envdir" / "b"
    env = dict(os.environ)
    for args in (["info", "~/bundle"], ["embed", "--model", "~/bundle", "--text", "a dog"],
                 ["embed", "--model", "$EDGECLIP_TEST_DIR/b", "--text", "a dog"]):
        r = subprocess.run([sys.executable, "-m", "edgeclip.cli", *args], capture_output=True,
                           text=True, env=env, timeout=120, cwd=tmp_path)
        assert r.returncode == 0, (args, r.stderr)
    r = subprocess.run([sys.executable, "-m", "edgeclip.cli", "embed", "--model", "~/nope",
                        "--text", "x"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and str(home / "nope") in r.stderr  # the expanded path is named
    _no_literal_dirs(tmp_path)


def test_config_paths(home, tmp_path):
    pytest.importorskip("torch")
    from edgeclip.distill.config import load_config
    cfg_file = home / "cfgs" / "s.toml"
    cfg_file.parent.mkdir()
    cfg_file.write_text('[run]\nout = "~/runs/s"\n[teacher]\ntype = "checkpoint"\n'
                        'path = "$EDGECLIP_TEST_DIR/teacher"\n[data]\nroot = "~/data"\n'
                        'cache_dir = "${EDGECLIP_TEST_DIR}/cache"\n')
    cfg = load_config("~/cfgs/s.toml", ['data.karpathy_json="~/k.json"'])
    assert cfg["run"]["out"] == str(home / "runs" / "s")
    assert cfg["teacher"]["path"] == str(home / "envdir" / "teacher")
    assert cfg["data"]["root"] == str(home / "data")
    assert cfg["data"]["cache_dir"] == str(home / "envdir" / "cache")
    assert cfg["data"]["karpathy_json"] == str(home / "k.json")
    # relative paths stay relative to the working directory (stated in configs and README)
    cfg = load_config("$HOME/cfgs/s.toml", ['run.out="runs/x"'])
    assert cfg["run"]["out"] == "runs/x"


def test_data_checkpoint_and_export_paths(home, tmp_path):
    pytest.importorskip("torch")
    from click.testing import CliRunner

    from _distill_data import make_flickr_layout
    from edgeclip.distill.checkpoint import is_checkpoint, load_dual_encoder, save_dual_encoder
    from edgeclip.distill.cli import eval_cmd
    from edgeclip.distill.data import open_dataset
    from edgeclip.distill.models import build_student
    from edgeclip.export.data import load_split

    make_flickr_layout(home / "data", n_train=8, n_dev=8, corrupt=False)
    ds = open_dataset({"root": "~/data"}, "dev")
    assert len(ds) == 8
    assert len(load_split("~/data", "dev").images) == 8  # --calib-data / --eval-data
    save_dual_encoder(build_student("tiny-test", pretrained=False), home / "envdir" / "ckpt")
    assert is_checkpoint("$EDGECLIP_TEST_DIR/ckpt")
    assert load_dual_encoder("$EDGECLIP_TEST_DIR/ckpt").name
    r = CliRunner().invoke(eval_cmd, ["--model", "$EDGECLIP_TEST_DIR/ckpt", "--data", "~/data",
                                      "--split", "dev", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["n_images"] == 8
    _no_literal_dirs(tmp_path)


def test_image_paths_with_tilde_and_spaces(tmp_path, monkeypatch):
    """embed_images(["~/my photos/x.jpg"]) reads $HOME/my photos/x.jpg (a real Flickr8k-free
    photo from scikit-image); the CLI's quoted --image too."""
    import shutil
    import subprocess
    import sys

    import numpy as np
    from edgeclip import Embedder
    from edgeclip.index.scan import demo_photos_dir
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "my photos").mkdir()
    shutil.copy(demo_photos_dir() / "chelsea.png", tmp_path / "my photos" / "cat photo.png")
    with Embedder(threads=1) as e:
        a = e.embed_images(["~/my photos/cat photo.png"])
        b = e.embed_images([tmp_path / "my photos" / "cat photo.png"])
    np.testing.assert_array_equal(a, b)
    out = subprocess.run([sys.executable, "-m", "edgeclip.cli", "embed", "--image",
                          "~/my photos/cat photo.png", "--json"], capture_output=True, text=True,
                         env={**__import__("os").environ, "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "cat photo.png" in out.stdout
