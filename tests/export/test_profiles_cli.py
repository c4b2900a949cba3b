"""Target profiles and the `edgeclip export` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeclip.errors import ConfigError
from edgeclip.export.profiles import load_profile

TARGETS = Path(__file__).resolve().parents[2] / "export" / "targets"


@pytest.mark.parametrize("name,target", [("cpu-x86_64", "cpu"), ("cpu-aarch64", "cpu"),
                                         ("jetson-orin-nano", "tensorrt"),
                                         ("jetson-agx-orin", "tensorrt")])
def test_shipped_profiles_load(name, target):
    p = load_profile(TARGETS / f"{name}.toml")
    assert p.target == target and p.opset >= 17
    assert 1 <= p.batch_min <= p.batch_opt <= p.batch_max
    if target == "tensorrt":
        assert "int8" in p.precisions and p.workspace_mib >= 256


def test_unknown_key_is_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('target = "cpu"\n[batch]\nmin = 1\nmaxx = 8\n')
    with pytest.raises(ConfigError, match="maxx"):
        load_profile(bad)
    bad.write_text('target = "gpu"\n')
    with pytest.raises(ConfigError, match="gpu"):
        load_profile(bad)
    with pytest.raises(ConfigError, match="no such profile"):
        load_profile(tmp_path / "missing.toml")


def test_cli_exports_a_checkpoint(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("skimage")
    from edgeclip.distill.checkpoint import save_dual_encoder
    from edgeclip.export.bundle import tiny_model
    from edgeclip.export.cli import export
    ckpt = tmp_path / "ckpt"
    save_dual_encoder(tiny_model(), ckpt)
    out = tmp_path / "bundle"
    res = CliRunner().invoke(export, [str(ckpt), "--out", str(out), "--precision", "fp32,fp16",
                                      "--profile", str(TARGETS / "cpu-x86_64.toml")])
    assert res.exit_code == 0, res.output
    assert "cos min" in res.output and "verification passed" in res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["towers"]["image"]["max_batch"] == 64
    assert manifest["extra"]["export"]["profile"] == "cpu-x86_64"
    # int8 with no --calib-data: scikit-image's photographs, with a note naming --calib-data
    res = CliRunner().invoke(export, [str(ckpt), "--out", str(tmp_path / "b2"),
                                      "--precision", "int8"])
    assert res.exit_code == 0, res.output
    assert "no --calib-data given; int8 calibrates on scikit-image's 14 built-in" in res.output
    report = json.loads((tmp_path / "b2" / "report.json").read_text())
    assert report["passed"] and report["data"]["notes"] == ["cosine on the calibration items"]
    assert report["data"]["images"] == 14


@pytest.mark.slow
@pytest.mark.flickr8k
def test_int8_on_flickr8k_with_recall(tmp_path, flickr8k):
    pytest.importorskip("torch")
    from edgeclip.export.bundle import tiny_model
    from edgeclip.export.pipeline import export_dual_encoder
    report = export_dual_encoder(tiny_model(), tmp_path / "b", ("fp32", "int8"), "cpu",
                                 calib_data=flickr8k, calib_count=64, eval_data=flickr8k,
                                 eval_split="dev", verify_count=32, log=lambda *_: None)
    ret = report["retrieval"]
    assert ret["fp32"]["n_texts"] == 5000 and ret["fp32"]["n_images"] == 1000
    assert "int8_t2i_r1_drop" in ret
