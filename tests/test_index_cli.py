"""``edgeclip index`` / ``edgeclip search`` through the real click group."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeclip.cli import cli
from test_index import make_gallery


def run(args, env=None):
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


def test_index_status_search_json_and_image(tmp_path, tiny_bundle):
    photos = tmp_path / "photos"
    gallery = make_gallery(photos, 6)
    db = tmp_path / "i.db"
    r = run(["index", str(photos), "--db", str(db), "--model", str(tiny_bundle), "-q"])
    assert r.exit_code == 0, r.output
    assert "added 6" in r.output
    r = run(["index", "--status", "--db", str(db)])
    assert r.exit_code == 0 and "images" in r.output and "tiny-test" in r.output
    r = run(["search", "a dog on the beach", "--db", str(db), "-k", "3", "--json"])
    hits = json.loads(r.output)
    assert len(hits) == 3 and {"path", "score"} <= set(hits[0])
    r = run(["search", "--image", str(gallery[2]), "--db", str(db), "-k", "2"])
    assert r.exit_code == 0
    assert r.output.splitlines()[1].split()[-1] == str(gallery[2])  # the image itself first


def test_default_db_under_edgeclip_home_and_demo_photos(tmp_path, tiny_bundle):
    pytest.importorskip("skimage", reason="the demo photos come with scikit-image")
    env = {"EDGECLIP_HOME": str(tmp_path / "home")}
    r = run(["index", "--model", str(tiny_bundle), "-q"], env=env)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "home" / "index.db").is_file()
    r = run(["search", "a cat", "--json", "-k", "100"], env=env)
    names = {p["path"].rsplit("/", 1)[-1] for p in json.loads(r.output)}
    assert {"chelsea.png", "astronaut.png", "coffee.png", "rocket.jpg"} <= names
    assert "camera.png" not in names  # grey test images are not demo photos
    assert "EDGECLIP_HOME" in run(["index", "--help"]).output


def test_cli_user_errors_are_one_line(tmp_path):
    from edgeclip.cli import run_main
    with pytest.raises(SystemExit) as e:
        run_main(cli, ["search", "x", "--db", str(tmp_path / "none.db")])
    assert e.value.code == 1
    with pytest.raises(SystemExit) as e:
        run_main(cli, ["index", "--status", "--db", str(tmp_path / "none.db")])
    assert e.value.code == 1
    r = CliRunner().invoke(cli, ["search", "--db", str(tmp_path / "x.db")])
    assert r.exit_code == 2 and "TEXT or --image" in r.output
