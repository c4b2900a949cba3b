"""`edgeclip merge`: weight-space interpolation of two checkpoints of one architecture."""

import json

import pytest
import torch
from safetensors.torch import load_file

from edgeclip.cli import main as cli_main
from edgeclip.distill.checkpoint import load_dual_encoder, save_dual_encoder
from edgeclip.distill.merge import merge_checkpoints
from edgeclip.distill.models import build_student
from edgeclip.errors import BundleError, ConfigError


def _ckpt(path, seed, **overrides):
    torch.manual_seed(seed)
    save_dual_encoder(build_student("tiny-test", pretrained=False, overrides=overrides or None), path)
    return path


@pytest.fixture
def pair(tmp_path):
    return _ckpt(tmp_path / "a", 0), _ckpt(tmp_path / "b", 1)


def test_merge_is_the_interpolation_tensor_by_tensor(pair, tmp_path):
    a, b = pair
    sa, sb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert any(not torch.equal(sa[k], sb[k]) for k in sa)  # two different models
    for alpha in (0.0, 0.25, 1.0):
        out = merge_checkpoints(a, b, alpha, tmp_path / f"m{alpha}")
        sm = load_file(str(out / "model.safetensors"))
        assert sm.keys() == sa.keys()
        for k in sa:
            want = sa[k] + alpha * (sb[k] - sa[k])
            torch.testing.assert_close(sm[k], want, rtol=0, atol=1e-6)
        if alpha in (0.0, 1.0):  # the ends are the inputs themselves
            ref = sa if alpha == 0.0 else sb
            assert all(torch.equal(sm[k], ref[k]) for k in sa)
    cfg = json.loads((tmp_path / "m0.25" / "config.json").read_text())
    assert cfg["merge"]["alpha"] == 0.25 and cfg["merge"]["a"].endswith("a")
    # the merged checkpoint is an ordinary one: it loads and embeds
    m = load_dual_encoder(tmp_path / "m0.25")
    e = m.encode_image(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(2), rtol=0, atol=1e-5)


@pytest.mark.parametrize("alpha,match", [(1.5, "outside"), (-0.1, "outside"), ("half", "not a number")])
def test_merge_refuses_bad_alpha(pair, tmp_path, alpha, match):
    with pytest.raises(ConfigError, match=match):
        merge_checkpoints(*pair, alpha, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_merge_refuses_other_architectures_and_non_checkpoints(pair, tmp_path):
    a, _ = pair
    other = _ckpt(tmp_path / "other", 2, text={"layers": 2})
    with pytest.raises(ConfigError, match=r"different models \(config differs at text.layers\)"):
        merge_checkpoints(a, other, 0.5, tmp_path / "m")
    with pytest.raises(BundleError, match="not a dual-encoder checkpoint"):
        merge_checkpoints(a, tmp_path, 0.5, tmp_path / "m")
    with pytest.raises(ConfigError, match="is one of the inputs"):
        merge_checkpoints(a, pair[1], 0.5, a)
    assert not (tmp_path / "m").exists()
    # a checkpoint with another vocabulary
    (other_tok := _ckpt(tmp_path / "tok", 3))
    (other_tok / "tokenizer.json").write_text((other_tok / "tokenizer.json").read_text().replace("[UNK]", "[UNKNOWN]"))
    with pytest.raises(ConfigError, match="no single vocabulary"):
        merge_checkpoints(a, other_tok, 0.5, tmp_path / "m")


def test_merge_cli_writes_and_reports_one_line_errors(pair, tmp_path, capsys):
    a, b = pair
    with pytest.raises(SystemExit) as e:
        cli_main(["merge", str(a), str(b), "--alpha", "0.5", "--out", str(tmp_path / "m")])
    assert e.value.code == 0
    assert "wrote" in capsys.readouterr().out
    assert load_file(str(tmp_path / "m" / "model.safetensors")).keys() == load_file(str(a / "model.safetensors")).keys()
    with pytest.raises(SystemExit) as e:
        cli_main(["merge", str(a), str(b), "--alpha", "2", "--out", str(tmp_path / "m2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and len(err) == 1 and "--alpha 2.0 is outside [0, 1]" in err[0]
    assert not (tmp_path / "m2").exists()


def test_merge_refuses_damaged_inputs_and_keeps_an_existing_out(pair, tmp_path):
    a, b = pair
    bad = _ckpt(tmp_path / "dir with space" / "bad", 4)
    (bad / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(BundleError, match="not a readable safetensors file"):
        merge_checkpoints(a, bad, 0.5, tmp_path / "m")
    (bad / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes())
    (bad / "config.json").write_text("{ not json")
    with pytest.raises(BundleError, match=r"config.json: not valid JSON"):
        merge_checkpoints(a, bad, 0.5, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    # an existing, non-empty --out is refused and left as it was
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        merge_checkpoints(a, b, 0.5, keep)
    assert [p.name for p in keep.iterdir()] == ["notes.txt"] and (keep / "notes.txt").read_text() == "mine"
    # `~` in a path is expanded
    out = merge_checkpoints(a, b, 0.5, "~/merged")  # HOME points into tmp_path (fixture below)
    assert out == tmp_path / "home" / "merged" and (out / "model.safetensors").is_file()


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
