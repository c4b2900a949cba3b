"""Reliability and security of the runtime, the way a user meets it (issue 15, items 1-3, 9).

Each test checks the exact error class, that the CLI prints exactly one ``error:`` line and exits
1, and that nothing stored changed (every file hashed before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeclip import BundleError, Embedder, InputError
from edgeclip.manifest import load_bundle, read_manifest, sha256_file, write_manifest


# -- helpers -----------------------------------------------------------------------------------
def tree_hashes(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (or of the file itself), by path."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def cli(args, capfd) -> tuple[int, str, str]:
    """Run the ``edgeclip`` command in this process (edgeclip.cli:main, the console script)."""
    from edgeclip.cli import main
    capfd.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capfd.readouterr()
    return e.value.code, out, err


def assert_one_error_line(code, out, err, *words):
    assert code == 1, (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and out == ""
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def edit_manifest(bundle: Path, fn) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    fn(m)
    (bundle / "manifest.json").write_text(json.dumps(m, indent=1))


def load_and_embed(bundle: Path, tower: str, photo: Path) -> None:
    """Load a tower and embed one item (towers may load eagerly or on first use)."""
    e = Embedder(bundle, towers=(tower,), threads=1)
    e.embed_images([photo]) if tower == "image" else e.embed_texts(["a cat"])


@pytest.fixture
def bundle(tiny_bundle, tmp_path) -> Path:
    b = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, b)
    return b


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Three of scikit-image's photographs, copied into a folder."""
    skdata = pytest.importorskip("skimage.data", reason="scikit-image ships the test photos")
    d = tmp_path_factory.mktemp("photos")
    for name in ("chelsea.png", "coffee.png", "astronaut.png"):
        shutil.copy(Path(skdata.__file__).parent / name, d / name)
    return d


# -- 1. bundle files confined to the bundle ----------------------------------------------------
def _point_outside(bundle: Path, outside: Path, how: str) -> str:
    """Make the image model entry name ``outside`` (absolute, ``..`` or an in-bundle symlink),
    with the outside file's real sha256 in 'files' (as an attacker would write it)."""
    m = read_manifest(bundle)
    if how == "absolute":
        rel = str(outside)
    elif how == "dotdot":
        rel = os.path.relpath(outside, bundle)
        assert rel.startswith("..")
    else:  # a symlink inside the bundle
        rel = "image.fp32.onnx"
        (bundle / rel).unlink()
        (bundle / rel).symlink_to(outside)
    digest = sha256_file(outside) if outside.exists() else "0" * 64
    m.towers["image"].models[0].path = rel
    m.files.pop("image.fp32.onnx", None)
    m.files[rel] = digest
    d = m.to_dict()
    (bundle / "manifest.json").write_text(json.dumps(d, indent=1))
    return rel


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_bundle_paths_outside_the_bundle_are_refused(bundle, tmp_path, capfd, photos, how):
    outside = tmp_path / "elsewhere" / "model.onnx"
    outside.parent.mkdir()
    shutil.copy(bundle / "image.fp32.onnx", outside)  # a valid graph, matching sha256
    secret = sha256_file(outside)
    _point_outside(bundle, outside, how)
    before = tree_hashes(bundle, outside.parent)

    with pytest.raises(BundleError) as e:
        load_and_embed(bundle, "image", photos / "coffee.png")
    assert type(e.value) is BundleError
    msg = str(e.value)
    assert "towers.image.models[0].path" in msg and "outside" in msg
    assert secret[:8] not in msg  # never the outside file's hash

    for args in (["info", bundle], ["embed", "--model", bundle, "--image", photos / "coffee.png"]):
        line = assert_one_error_line(*cli(args, capfd), "towers.image.models[0].path", "outside")
        assert secret[:8] not in line
    assert tree_hashes(bundle, outside.parent) == before
    # whether the outside path exists is not revealed: the same message when it does not
    outside.unlink()
    with pytest.raises(BundleError) as e2:
        load_bundle(bundle)
    assert str(e2.value) == msg


def test_wrong_sha_of_an_outside_tokenizer_leaks_nothing(bundle, tmp_path, capfd):
    outside = tmp_path / "tok.json"
    shutil.copy(bundle / "tokenizer.json", outside)
    real = sha256_file(outside)
    edit_manifest(bundle, lambda m: (m["towers"]["text"]["tokenizer"].update(file="../tok.json"),
                                     m["files"].update({"../tok.json": "f" * 64})))
    before = tree_hashes(bundle, outside)
    with pytest.raises(BundleError) as e:
        load_bundle(bundle)
    assert type(e.value) is BundleError
    assert "towers.text.tokenizer.file" in str(e.value) and real[:6] not in str(e.value)
    line = assert_one_error_line(*cli(["embed", "--model", bundle, "--text", "a cat"], capfd),
                                 "towers.text.tokenizer.file")
    assert real[:6] not in line and "checksum" not in line
    assert tree_hashes(bundle, outside) == before


def test_symlinks_inside_the_bundle_still_load(bundle):
    (bundle / "graphs").mkdir()
    os.replace(bundle / "text.fp32.onnx", bundle / "graphs" / "text.onnx")
    (bundle / "text.fp32.onnx").symlink_to(Path("graphs") / "text.onnx")
    e = Embedder(bundle, towers=("text",), threads=1)
    assert e.embed_texts(["a cat"]).shape == (1, 16)


# -- 2. the manifest checked against its graphs ------------------------------------------------
@pytest.mark.parametrize("edit,args,words", [
    (lambda m: m.update(embed_dim=32), ["--text", "a cat"], ["embed_dim is 32", "16"]),
    (lambda m: (m.update(embed_dim=32),
                [m["towers"][t]["outputs"][0].update(shape=["batch", 32]) for t in m["towers"]]),
     ["--text", "a cat"], ["outputs[0]", "['batch', 32]", "['batch', 16]"]),
    (lambda m: m["towers"]["image"]["preprocess"].update(size=[64, 64]), ["--image", "PHOTO"],
     ["towers.image.preprocess.size is [64, 64]", "32"]),
    (lambda m: (m["towers"]["image"]["preprocess"].update(size=[64, 64]),
                m["towers"]["image"]["inputs"][0].update(shape=["batch", 3, 64, 64])),
     ["--image", "PHOTO"], ["towers.image.inputs[0]", "64, 64]", "32, 32]"]),
    (lambda m: m["towers"]["text"]["tokenizer"].update(context_length=32), ["--text", "a cat"],
     ["towers.text.tokenizer.context_length is 32", "16"]),
    (lambda m: m["towers"]["text"]["outputs"][0].update(dtype="int64"), ["--text", "a cat"],
     ["towers.text.outputs[0]", "float32 in the graph, int64"]),
])
def test_manifest_disagreeing_with_its_graph_is_refused_at_load(bundle, photos, capfd, edit,
                                                                 args, words):
    edit_manifest(bundle, edit)
    before = tree_hashes(bundle)
    with pytest.raises(BundleError) as e:
        load_and_embed(bundle, "text" if "--text" in args else "image", photos / "coffee.png")
    assert type(e.value) is BundleError
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    args = [str(photos / "coffee.png") if a == "PHOTO" else a for a in args]
    assert_one_error_line(*cli(["embed", "--model", bundle, *args], capfd), *words)
    assert_one_error_line(*cli(["info", bundle], capfd), *words)
    assert tree_hashes(bundle) == before


def _with_metadata(bundle: Path, created: str | None = None) -> None:
    """Write the exporter's ONNX metadata (edgeclip.export.onnx_export.set_metadata) into every
    graph of ``bundle``, as ``edgeclip export`` does."""
    from edgeclip.export.onnx_export import set_metadata
    m = read_manifest(bundle)
    if created:
        m.created = created
    for name, tower in m.towers.items():
        for mf in tower.models:
            set_metadata(bundle / mf.path, m.mirror_dict(), name)
    write_manifest(m, bundle)


def test_graph_of_another_model_with_the_same_io_is_caught(bundle, tmp_path, photos, capfd):
    pytest.importorskip("onnx", reason="writing ONNX metadata needs edgeclip[export]")
    from tiny_model import build_tiny_bundle
    _with_metadata(bundle, created="2026-11-01T10:00:00Z")
    mine = Embedder(bundle, threads=1)  # its own graphs pass
    assert mine.embed_images([photos / "coffee.png"]).shape == (1, 16)
    other = build_tiny_bundle(tmp_path / "other", seed=1)  # same I/O, other weights
    _with_metadata(other, created="2026-11-02T10:00:00Z")
    shutil.copy(other / "image.fp32.onnx", bundle / "image.fp32.onnx")
    write_manifest(read_manifest(bundle), bundle)  # checksums updated: only the metadata tells
    before = tree_hashes(bundle)
    words = ["image.fp32.onnx", "created", "2026-11-01T10:00:00Z", "2026-11-02T10:00:00Z"]
    with pytest.raises(BundleError) as e:
        load_and_embed(bundle, "image", photos / "coffee.png")
    assert type(e.value) is BundleError
    for w in words:
        assert w in str(e.value)
    load_and_embed(bundle, "text", photos / "coffee.png")  # the text graph is still this model's
    assert_one_error_line(*cli(["embed", "--model", bundle, "--image", photos / "coffee.png"],
                               capfd), *words)
    assert_one_error_line(*cli(["info", bundle], capfd), *words)
    assert tree_hashes(bundle) == before


def test_manifest_edited_away_from_its_graphs_metadata_is_caught(bundle, photos, capfd):
    """Preprocessing is not in a graph's I/O: only the exporter's metadata can tell."""
    pytest.importorskip("onnx", reason="writing ONNX metadata needs edgeclip[export]")
    _with_metadata(bundle)
    edit_manifest(bundle, lambda m: m["towers"]["image"]["preprocess"].update(
        mean=[0.5, 0.5, 0.5]))
    before = tree_hashes(bundle)
    words = ["towers.image.preprocess.mean[0]", "0.5", "0.485"]
    with pytest.raises(BundleError) as e:
        load_and_embed(bundle, "image", photos / "coffee.png")
    assert type(e.value) is BundleError
    for w in words:
        assert w in str(e.value)
    assert_one_error_line(*cli(["embed", "--model", bundle, "--image", photos / "coffee.png"],
                               capfd), *words)
    assert tree_hashes(bundle) == before


def test_tensorrt_towers_get_the_manifest_checks_before_tensorrt_loads(bundle):
    from edgeclip.backends import make_runner
    edit_manifest(bundle, lambda m: m.update(embed_dim=8))
    m, b = load_bundle(bundle)
    with pytest.raises(BundleError, match="embed_dim is 8") as e:
        make_runner(m, b, "text", backend="tensorrt")
    assert type(e.value) is BundleError
    from edgeclip.backends.tensorrt import IOTensor, check_engine_io
    m, b = load_bundle(bundle)
    io = [IOTensor("input_ids", True, "int64", (-1, 16)),
          IOTensor("attention_mask", True, "int64", (-1, 16)),
          IOTensor("text_embeds", False, "float32", (-1, 32))]  # an engine of another size
    with pytest.raises(BundleError, match=r"shape \[-1, 32\]"):
        check_engine_io(io, m.tower("text"), b / "text.fp16.plan")


# -- 3. text that is not valid text (undecodable bytes in argv) --------------------------------
def _argv_run(args: list[bytes]) -> subprocess.CompletedProcess:
    env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8", OMP_NUM_THREADS="1")
    env.pop("PYTHONUTF8", None)
    return subprocess.run([os.fsencode(sys.executable), b"-m", b"edgeclip.cli", *args],
                          capture_output=True, env=env, timeout=120)


def test_undecodable_argv_text_is_one_error_line(tiny_bundle, photos, tmp_path):
    bad = b"caf\xff au lait"  # Latin-1 bytes under a UTF-8 locale -> '\udcff' in sys.argv
    model = os.fsencode(tiny_bundle)
    r = _argv_run([b"embed", b"--model", model, b"--text", b"a cat", b"--text", bad])
    assert r.returncode == 1 and r.stdout == b""
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --text argument 2 "), r.stderr
    assert "not valid text" in lines[0] and "\\udcff" in lines[0]

    db = tmp_path / "photos.db"
    r = _argv_run([b"index", os.fsencode(photos), b"--db", os.fsencode(db), b"--model", model,
                   b"-q"])
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    before = tree_hashes(tmp_path)
    r = _argv_run([b"search", bad, b"--db", os.fsencode(db), b"--model", model])
    assert r.returncode == 1 and r.stdout == b""
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: TEXT argument "), r.stderr
    assert "not valid text" in lines[0]
    assert tree_hashes(tmp_path) == before


def test_surrogates_are_bad_items_in_the_api(tiny_bundle):
    e = Embedder(tiny_bundle, towers=("text",), threads=1)
    texts = ["a cat", "caf\udcff", "a dog"]
    with pytest.raises(InputError) as err:
        e.embed_texts(texts)
    assert type(err.value) is InputError and err.value.index == 1
    assert "text 1" in str(err.value) and "not valid text" in str(err.value)
    vecs, skipped = e.embed_texts(texts, on_error="skip")
    assert [s.index for s in skipped] == [1] and vecs.shape == (2, 16)
    np.testing.assert_allclose(vecs, e.embed_texts(["a cat", "a dog"]), atol=1e-6)
    with pytest.raises(InputError) as err:
        e.tokenize(["ok", "\udcff"])
    assert err.value.index == 1


# -- 9. one image passed where a list is expected ----------------------------------------------
def test_embed_images_with_one_path_says_pass_a_list(tiny_bundle, photos):
    e = Embedder(tiny_bundle, towers=("image",), threads=1)
    path = photos / "chelsea.png"
    for one in (str(path), path, path.read_bytes()):
        with pytest.raises(InputError) as err:
            e.embed_images(one)
        assert type(err.value) is InputError
        msg = str(err.value)
        assert "embed_images([image])" in msg and "embed_image(image)" in msg
    assert str(path) in str(pytest.raises(InputError, e.embed_images, str(path)).value)
    one = e.embed_image(path)
    np.testing.assert_allclose(e.embed_images([path])[0], one, atol=1e-6)
