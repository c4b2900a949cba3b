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


def test_text_alpha_interpolates_the_text_tower_on_its_own(pair, tmp_path):
    from edgeclip.distill.merge import TEXT_PREFIX
    a, b = pair
    sa, sb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert any(k.startswith(TEXT_PREFIX) for k in sa) and any(not k.startswith(TEXT_PREFIX) for k in sa)
    out = merge_checkpoints(a, b, 0.25, tmp_path / "m", text_alpha=0.75)
    sm = load_file(str(out / "model.safetensors"))
    for k in sa:
        w = 0.75 if k.startswith(TEXT_PREFIX) else 0.25
        if sa[k].is_floating_point():
            torch.testing.assert_close(sm[k], sa[k] + w * (sb[k] - sa[k]), rtol=0, atol=1e-6)
    cfg = json.loads((out / "config.json").read_text())["merge"]
    assert (cfg["image_alpha"], cfg["text_alpha"]) == (0.25, 0.75)
    with pytest.raises(ConfigError, match="--text-alpha 1.5 is outside"):
        merge_checkpoints(a, b, 0.25, tmp_path / "m2", text_alpha=1.5)


def test_soup_is_the_uniform_mean(pair, tmp_path, capsys):
    from edgeclip.distill.merge import soup_checkpoints
    a, b = pair
    c = _ckpt(tmp_path / "c", 5)
    states = [load_file(str(p / "model.safetensors")) for p in (a, b, c)]
    out = soup_checkpoints([a, b, c], tmp_path / "soup")
    sm = load_file(str(out / "model.safetensors"))
    for k, v in states[0].items():
        if v.is_floating_point():
            torch.testing.assert_close(sm[k], (states[0][k] + states[1][k] + states[2][k]) / 3,
                                       rtol=0, atol=1e-6)
    assert json.loads((out / "config.json").read_text())["merge"]["inputs"] == [str(a), str(b), str(c)]
    load_dual_encoder(out)  # an ordinary checkpoint
    with pytest.raises(ConfigError, match="given twice"):
        soup_checkpoints([a, b, a], tmp_path / "s2")
    other = _ckpt(tmp_path / "other", 2, text={"layers": 2})
    with pytest.raises(ConfigError, match="config differs at text.layers"):
        soup_checkpoints([a, b, other], tmp_path / "s2")
    assert not (tmp_path / "s2").exists()
    # the CLI: several checkpoints without --alpha are averaged; --alpha needs exactly two
    with pytest.raises(SystemExit) as e:
        cli_main(["merge", str(a), str(b), str(c), "--out", str(tmp_path / "s3")])
    assert e.value.code == 0 and "mean of 3 checkpoints" in capsys.readouterr().out
    assert torch.equal(load_file(str(tmp_path / "s3" / "model.safetensors"))[k], sm[k])
    for args, msg in ((["--alpha", "0.5"], "interpolates two checkpoints A B; 3 were given"),
                      (["--text-alpha", "0.5"], "--text-alpha needs --alpha")):
        with pytest.raises(SystemExit) as e:
            cli_main(["merge", str(a), str(b), str(c), *args, "--out", str(tmp_path / "s4")])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 1 and len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "s4").exists()
