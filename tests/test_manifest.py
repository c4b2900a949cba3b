import json
import shutil

import pytest

from edgeclip import BundleError, Embedder
from edgeclip.manifest import (FORMAT_VERSION, Manifest, load_bundle, read_manifest,
                               resolve_bundle_path, write_manifest)


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle, dst)
    return dst


def _edit(bundle, fn):
    m = json.loads((bundle / "manifest.json").read_text())
    fn(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


def test_round_trip(bundle):
    m = read_manifest(bundle)
    again = Manifest.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again.to_dict() == m.to_dict()
    assert set(m.towers) == {"image", "text"}
    assert m.towers["image"].inputs[0].batch_axis == 0
    assert m.identity() == again.identity()
    assert all(len(h) == 64 for h in m.files.values())


def test_resolve_paths(bundle):
    assert resolve_bundle_path(bundle) == (bundle, None)
    assert resolve_bundle_path(bundle / "manifest.json")[0] == bundle
    assert resolve_bundle_path(bundle / "image.fp32.onnx") == (bundle, bundle / "image.fp32.onnx")
    e = Embedder(bundle / "image.fp32.onnx")  # a model file with its manifest beside it
    assert e.dim == 16


def test_missing_file(bundle):
    (bundle / "text.fp32.onnx").unlink()
    with pytest.raises(BundleError, match=r"text\.fp32\.onnx: missing from the bundle"):
        load_bundle(bundle)


def test_checksum_mismatch(bundle):
    with open(bundle / "image.fp32.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"image\.fp32\.onnx: checksum mismatch.*re-export"):
        Embedder(bundle)


def test_unknown_format_version(bundle):
    _edit(bundle, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(BundleError, match="unknown bundle format version 2.*Upgrade edgeclip"):
        load_bundle(bundle)


def test_corrupt_manifest_json(bundle):
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json: not valid JSON"):
        load_bundle(bundle)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no manifest.json in this directory"):
        load_bundle(tmp_path)
    with pytest.raises(BundleError, match="no such file or directory"):
        Embedder(tmp_path / "nope")


def test_graph_io_disagrees_with_manifest(bundle):
    _edit(bundle, lambda m: m["towers"]["image"]["inputs"][0].update(name="pixels"))
    with pytest.raises(BundleError, match=r"image\.fp32\.onnx: graph inputs \['pixel_values'\]"):
        Embedder(bundle)


def test_graph_shape_disagrees_with_manifest(bundle):
    _edit(bundle, lambda m: m["towers"]["image"]["inputs"][0].update(shape=["batch", 3, 64, 64]))
    with pytest.raises(BundleError, match="has shape"):
        Embedder(bundle)


def test_graph_dtype_disagrees_with_manifest(bundle):
    _edit(bundle, lambda m: m["towers"]["text"]["inputs"][0].update(dtype="int32"))
    with pytest.raises(BundleError, match="is int64 in the graph, int32 in the manifest"):
        Embedder(bundle)


def test_single_tower_bundle(bundle):
    m = read_manifest(bundle)
    del m.towers["text"]
    (bundle / "text.fp32.onnx").unlink()
    (bundle / "tokenizer.json").unlink()
    m.files = {}
    write_manifest(m, bundle)
    e = Embedder(bundle)
    assert e.towers == ("image",)
    with pytest.raises(BundleError, match="has no text tower"):
        Embedder(bundle, towers=("text",))
    with pytest.raises(BundleError, match="text tower .* is not loaded"):
        e.embed_texts(["a dog"])


def test_bad_values_are_named(bundle):
    _edit(bundle, lambda m: m["towers"]["image"]["preprocess"].update(resize_mode="stretch"))
    with pytest.raises(BundleError, match="unknown resize_mode 'stretch'"):
        load_bundle(bundle)
