"""README "Distil your own": every command of the recipe block, read from README.md and run in
order (teacher, student, eval, export, eval, bench) on a 40/10/10-image subset of the real
Flickr8k laid out like ../shared/data/flickr8k, with the tiny test model and a few steps."""

from __future__ import annotations

import csv
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the recipe trains (edgeclip[train])")
pytest.importorskip("onnx", reason="the recipe exports (edgeclip[export])")
pytest.importorskip("matplotlib", reason="the recipe plots (edgeclip[plot])")

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- recipe:"
DATA = "../shared/data/flickr8k"
# tiny-test overrides appended to each command (a later option wins; --set applies last)
TINY = {
    "edgeclip distill": ['--set=model.name="tiny-test"', "--set=model.pretrained=false",
                         "--set=train.epochs=2", "--set=train.batch_size=8",
                         "--set=train.warmup_steps=2", "--set=train.threads=1",
                         "--set=train.log_every=1"],
    "edgeclip export": ["--calib-count", "16", "--verify-count", "8"],
    "edgeclip-bench": ["--batch-sizes", "1,2", "--iters", "3", "--warmup", "1", "--no-isolate"],
}


def recipe_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert MARKER in text, "README.md lost its recipe block"
    block = re.search(r"```bash\n(.*?)```", text[text.index(MARKER):], re.S).group(1)
    return [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]


def test_recipe_block_shape():
    cmds = recipe_commands()
    kinds = [" ".join(shlex.split(c)[:2]) for c in cmds]
    assert kinds[0] == "edgeclip distill" and "teacher.toml" in cmds[0]  # the teacher first
    assert kinds[1] == "edgeclip distill" and "student" in cmds[1]
    assert "edgeclip export" in kinds and "edgeclip eval" in kinds
    assert shlex.split(cmds[-1])[0] == "edgeclip-bench"
    assert all(shlex.split(c)[0] in ("edgeclip", "edgeclip-bench") for c in cmds)


def _subset(src: Path, dst: Path, counts=(("train", 40), ("dev", 10), ("test", 10))) -> None:
    (dst / "images").mkdir(parents=True)
    (dst / "splits").mkdir()
    keep = set()
    for split, n in counts:
        names = [ln.strip() for ln in (src / "splits" / f"{split}.txt").read_text().splitlines()
                 if ln.strip()][:n]
        (dst / "splits" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            shutil.copyfile(src / "images" / name, dst / "images" / name)
        keep.update(names)
    with open(src / "captions.csv", newline="", encoding="utf-8") as f, \
            open(dst / "captions.csv", "w", newline="", encoding="utf-8") as g:
        w = csv.writer(g)
        w.writerow(["image", "caption"])
        for row in csv.DictReader(f):
            if row["image"] in keep:
                w.writerow([row["image"], row["caption"]])


def _run(cmd: str) -> None:
    argv = shlex.split(cmd)
    key = " ".join(argv[:2]) if argv[0] == "edgeclip" else argv[0]
    args = argv[1:] + TINY.get(key, [])
    if argv[0] == "edgeclip-bench":
        from edgeclip.bench import bench as command
    else:
        from edgeclip.cli import cli as command
    command.main(args=args, prog_name=argv[0], standalone_mode=False)


def test_readme_recipe_runs(flickr8k, tmp_path, monkeypatch, capsys):
    repo = tmp_path / "edgeclip"  # a "fresh clone": the configs, data beside it as documented
    shutil.copytree(REPO / "configs", repo / "configs")
    _subset(flickr8k, tmp_path / "shared" / "data" / "flickr8k")
    monkeypatch.chdir(repo)
    assert (repo / DATA / "captions.csv").is_file()
    for cmd in recipe_commands():
        _run(cmd)
    out = capsys.readouterr().out
    assert (repo / "runs/teacher/best/model.safetensors").is_file()
    assert (repo / "runs/student-cona/best/model.safetensors").is_file()
    cfg = json.loads((repo / "runs/student-cona/config.json").read_text())
    assert cfg["teacher"]["path"] == "runs/teacher/best"  # read relative to the working dir
    manifest = json.loads((repo / "runs/export/student/manifest.json").read_text())
    assert {m["precision"] for m in manifest["towers"]["image"]["models"]} == {"fp32", "int8"}
    assert out.count("mean recall") == 2 and "(10 images, 50 captions)" in out
    bench = json.loads((repo / "runs/bench/student.json").read_text())
    assert {r["precision"] for r in bench["rows"]} == {"fp32", "int8"}
    assert (repo / "runs/bench/student.png").read_bytes()[:4] == b"\x89PNG"


def test_student_without_teacher_says_train_it_first(tmp_path, monkeypatch):
    from edgeclip.distill.config import load_config
    from edgeclip.distill.trainer import train
    from edgeclip.errors import ConfigError
    from _distill_data import make_flickr_layout
    make_flickr_layout(tmp_path / "data", n_train=8, n_dev=4, corrupt=False)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO / "configs" / "student_cona.toml",
                      ['data.root="data"', 'model.name="tiny-test"', "model.pretrained=false"])
    with pytest.raises(ConfigError, match="Train the teacher first") as e:
        train(cfg)
    assert "configs/teacher.toml" in str(e.value) and str(tmp_path) in str(e.value)
