"""Resuming ``edgeclip distill`` (issue 15, item 8): a changed config is refused with one line
naming the differing keys unless --restart / --resume-anyway is passed, and ``metrics.jsonl``
never repeats a step after an interrupted run resumes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="distillation needs edgeclip[train]")

from _distill_data import make_flickr_layout  # noqa: E402
from edgeclip.distill.checkpoint import load_dual_encoder  # noqa: E402
from edgeclip.distill.config import load_config  # noqa: E402
from edgeclip.distill.trainer import Trainer, train  # noqa: E402
from edgeclip.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_flickr_layout(tmp_path_factory.mktemp("resume_data"), n_train=12, n_dev=4)


def sets(root: Path, out: Path, **extra) -> list[str]:
    """--set assignments of a tiny-test student run (clip loss: no teacher), 2 epochs x 3 steps."""
    s = {"run.out": f'"{out}"', "model.name": '"tiny-test"', "model.pretrained": "false",
         "data.root": f'"{root}"', "data.cache_dir": f'"{root / "cache"}"',
         "loss.preset": '"clip"', "train.batch_size": "4", "train.epochs": "2",
         "train.log_every": "1", "train.warmup_steps": "2", "train.threads": "1",
         "train.eval_every_epochs": "0", "train.checkpoint_every": "2"}
    s.update(extra)
    return [f"{k}={v}" for k, v in s.items()]


def steps(out: Path) -> list[int]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in recs if "loss" in r]


def losses(out: Path) -> dict[int, float]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def cli(args, capfd) -> tuple[int, str, str]:
    from edgeclip.cli import main
    capfd.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capfd.readouterr()
    return e.value.code, out, err


def distill_args(cfg_file: Path, assignments: list[str], *flags) -> list[str]:
    return ["distill", "--config", str(cfg_file), *[f"--set={a}" for a in assignments], *flags]


def test_interrupted_run_resumes_without_repeating_steps(data, tmp_path, monkeypatch):
    full = train(load_config(None, sets(data, tmp_path / "full",
                                        **{"train.checkpoint_every": "0"})))
    n = full["steps"]
    assert n == 6 and steps(tmp_path / "full") == list(range(1, n + 1))

    out = tmp_path / "part"
    real_log = Trainer._log

    def log_then_ctrl_c(self, rec):  # Ctrl-C right after step 3 was logged (checkpoint: step 2)
        real_log(self, rec)
        if rec.get("step") == 3 and "loss" in rec:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_log", log_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, sets(data, out)))
    monkeypatch.setattr(Trainer, "_log", real_log)
    assert steps(out) == [1, 2, 3]
    assert json.loads((out / "checkpoint" / "train_state.json").read_text())["step"] == 2

    rest = train(load_config(None, sets(data, out)))  # the same command again
    assert rest["steps"] == n
    assert steps(out) == list(range(1, n + 1))  # step 3 trained again, logged once
    a, b = losses(tmp_path / "full"), losses(out)
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-6, abs=1e-7), s
    m1, m2 = load_dual_encoder(tmp_path / "full" / "final"), load_dual_encoder(out / "final")
    for (k, v), (_, w) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.allclose(v, w, atol=1e-6), k


def test_changed_config_is_refused_then_restart_or_resume_anyway(data, tmp_path, capfd):
    out = tmp_path / "run"
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text("")
    base = sets(data, out, **{"train.stop_at_step": "2"})
    code, _, err = cli(distill_args(cfg_file, base), capfd)
    assert code == 0, err
    assert steps(out) == [1, 2]
    before = tree_hashes(out)

    # another loss preset and schedule: refused, one line naming the keys, nothing touched
    changed = sets(data, out, **{"loss.preset": '"cona"', "train.epochs": "3",
                                 "teacher.path": f'"{data / "teacher"}"'})
    with pytest.raises(ConfigError) as e:
        Trainer(load_config(None, changed))
    assert type(e.value) is ConfigError
    code, stdout, err = cli(distill_args(cfg_file, changed), capfd)
    lines = err.splitlines()
    assert code == 1 and stdout == "" and len(lines) == 1 and lines[0].startswith("error: "), err
    for w in ("loss.preset \"clip\" -> \"cona\"", "train.epochs 2 -> 3", "teacher.path",
              "step 2", "--resume-anyway", "--restart"):
        assert w in lines[0], (w, lines[0])
    assert tree_hashes(out) == before

    # what only changes logging/stopping is not a config change
    code, _, err = cli(distill_args(cfg_file, sets(data, out, **{"train.log_every": "2",
                                                                 "train.stop_at_step": "3"})),
                       capfd)
    assert code == 0, err
    assert steps(out) == [1, 2]  # log_every=2: step 3 not logged
    before = tree_hashes(out)

    # --resume-anyway: continues from the checkpoint under the new schedule
    longer = sets(data, out, **{"train.epochs": "3", "train.lr": "0.002"})
    code, _, err = cli(distill_args(cfg_file, longer), capfd)
    assert code == 1 and "train.epochs 2 -> 3" in err and "train.lr" in err
    assert tree_hashes(out) == before
    code, _, err = cli(distill_args(cfg_file, longer, "--resume-anyway"), capfd)
    assert code == 0, err
    assert "resuming" in err and "train.epochs 2 -> 3" in err
    assert steps(out) == [1, 2] + list(range(4, 10))  # 9 steps now; no step logged twice
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 3
    assert json.loads((out / "config.until-step-3.json").read_text())["train"]["epochs"] == 2
    state = json.loads((out / "checkpoint" / "train_state.json").read_text())
    assert state["step"] == 9 and state["param_groups"][0]["base_lr"] == pytest.approx(0.002)

    # --restart: starts over under the (changed) config
    cona = sets(data, out, **{"loss.preset": '"cona"', "teacher.path": f'"{data / "teacher"}"',
                              "train.stop_at_step": "2"})
    from edgeclip.distill.checkpoint import save_dual_encoder
    from edgeclip.distill.models import build_student
    save_dual_encoder(build_student("tiny-test", pretrained=False), data / "teacher")
    code, _, err = cli(distill_args(cfg_file, cona), capfd)
    assert code == 1 and "loss.preset" in err
    code, _, err = cli(distill_args(cfg_file, cona, "--restart"), capfd)
    assert code == 0, err
    assert steps(out) == [1, 2]
    assert json.loads((out / "checkpoint" / "train_state.json").read_text())["step"] == 2
    assert json.loads((out / "config.json").read_text())["loss"]["preset"] == "cona"

    code, _, err = cli(distill_args(cfg_file, cona, "--restart", "--resume-anyway"), capfd)
    assert code == 1 and len(err.splitlines()) == 1 and "contradict" in err
