"""benchmarks/peers.py: peer architectures at their published sizes, and --extra wrapping."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the peers script is torch-side (edgeclip[train])")
pytest.importorskip("onnx", reason="the peers script exports ONNX (edgeclip[export])")

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_models  # noqa: E402
import peers  # noqa: E402
from test_bench import _image_graph, _text_graph  # noqa: E402


def _params(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


@pytest.mark.parametrize("name, image_m, text_m", [
    ("vit-b-32", 87.8, 63.4), ("mobileclip-s0", 11.4, 42.4)])
def test_peer_sizes_match_published(name, image_m, text_m):
    make_image, size, make_text = peer_models.PEERS[name]
    image, text = make_image().eval(), make_text().eval()
    assert _params(image) == pytest.approx(image_m, rel=0.03)
    assert _params(text) == pytest.approx(text_m, rel=0.03)
    with torch.no_grad():
        ids = torch.randint(1, 1000, (2, peer_models.CONTEXT))
        assert text(ids).shape == (2, peer_models.EMBED)
    if name == "mobileclip-s0":  # the ViT forward is slower; its shapes are covered by export
        with torch.no_grad():
            assert image(torch.randn(1, 3, size, size)).shape == (1, peer_models.EMBED)


def test_extra_graphs_become_a_benchmarkable_bundle(tmp_path, capsys):
    _image_graph(tmp_path / "t_image.onnx", 32, 0)
    _text_graph(tmp_path / "t_text.onnx", 16, 1)
    extra = f"teacher={tmp_path / 't_image.onnx'},{tmp_path / 't_text.onnx'}"
    code = peers.main(["--out", str(tmp_path / "peers"), "--peers", "", "--calib", "8",
                       "--extra", extra])
    assert code == 0
    bundle = tmp_path / "peers" / "teacher"
    manifest = json.loads((bundle / "manifest.json").read_text())
    for tower in ("image", "text"):
        precs = {m["precision"]: m for m in manifest["towers"][tower]["models"]}
        assert set(precs) == {"fp32", "int8"} and precs["int8"]["target"] == "cpu"
    from edgeclip.bench import main as bench_main
    js = tmp_path / "teacher.json"
    with pytest.raises(SystemExit) as exc:
        bench_main([str(bundle), "--iters", "3", "--warmup", "1", "--batch-sizes", "2",
                    "--no-isolate", "--quiet", "--json", str(js)])
    assert exc.value.code == 0, capsys.readouterr().err
    rows = json.loads(js.read_text())["rows"]
    assert {(r["tower"], r["precision"]) for r in rows} == {
        ("image", "fp32"), ("image", "int8"), ("text", "fp32"), ("text", "int8")}


def test_extra_bad_spec_is_one_line_error(tmp_path, capsys):
    assert peers.main(["--out", str(tmp_path), "--peers", "", "--extra", "nofile"]) == 1
    assert capsys.readouterr().err.startswith("error: --extra")
