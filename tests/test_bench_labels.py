"""edgeclip-bench: models that share a name are labelled by path, the progress bar, the p50 plot
with its p10-p90 band, and `~` in MODEL paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("onnx")
pytest.importorskip("matplotlib")
from test_bench import _run, make_tiny_bundle  # noqa: E402

from edgeclip.profiling.report import _ms_label  # noqa: E402


@pytest.fixture(scope="module")
def same_name(tmp_path_factory):
    root = tmp_path_factory.mktemp("samename")
    make_tiny_bundle(root / "a" / "model", "same", side=32)
    make_tiny_bundle(root / "b" / "model", "same", side=64, seed=3)
    return root


def test_same_name_labelled_by_path_plot_and_progress(same_name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(same_name)
    png, js = tmp_path / "lat.png", tmp_path / "r.json"
    code, out, err = _run(["a/model", "b/model", "a/model", "--iters", "4", "--warmup", "1",
                           "--batch-sizes", "1,4", "--tower", "image", "--no-isolate", "--plot",
                           str(png), "--json", str(js)], capsys)
    assert code == 0, err
    report = json.loads(js.read_text())
    assert [m["label"] for m in report["models"]] == ["a/model", "b/model", "a/model#2"]
    assert {r["model"] for r in report["rows"]} == {"a/model", "b/model", "a/model#2"}
    for r in report["rows"]:
        assert r["latency_min_ms"] <= r["latency_p10_ms"] <= r["latency_p50_ms"] \
            <= r["latency_p90_ms"] <= r["latency_max_ms"]
    assert "a/model" in out and "b/model" in out
    # one tqdm bar (count and ETA), not one line per phase: 3 models x 2 batches
    assert "6/6" in err and "[bench]" not in err
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    with Image.open(png) as im:
        assert im.size[0] >= 700 and im.size[1] >= 500


def test_quiet_has_no_bar_and_home_paths(same_name, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(same_name))
    monkeypatch.setenv("EDGECLIP_BENCH_DIR", str(same_name / "b"))
    js = tmp_path / "q.json"
    code, _, err = _run(["~/a/model", "$EDGECLIP_BENCH_DIR/model", "--tower", "image", "--iters",
                         "3", "--warmup", "1", "--batch-sizes", "2", "--no-isolate", "--quiet",
                         "--json", str(js)], capsys)
    assert code == 0, err
    assert "cell" not in err and "%|" not in err  # no bar (cv warnings may be printed)
    rows = json.loads(js.read_text())["rows"]
    # same name, both outside the working directory: labelled by path, home shown as ~
    assert {r["model"] for r in rows} == {"~/a/model", "~/b/model"}
    assert {Path(r["path"]) for r in rows} == {same_name / "a" / "model", same_name / "b" / "model"}


def test_tick_labels_are_plain_numbers():
    assert [_ms_label(v) for v in (0.02, 0.5, 1, 20, 500, 2000)] == \
        ["0.02", "0.5", "1", "20", "500", "2k"]
