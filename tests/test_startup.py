"""Start-up: checksums cached by file identity, ORT optimized-graph cache, lazy towers, and the
FP16 -> FP32 upcast that makes precision="fp32" the fast float path on the CPU."""

import json
import os
import shutil

import numpy as np
import pytest

import edgeclip
from edgeclip import cache
from edgeclip.embedder import default_model_path
from edgeclip.errors import BundleError


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("EDGECLIP_HOME", str(h))
    monkeypatch.delenv("EDGECLIP_CACHE", raising=False)
    cache.forget()
    yield h
    cache.forget()


def _no_hashing(monkeypatch):
    import edgeclip.manifest as m

    def refuse(path):
        raise AssertionError(f"hashed {path}")
    monkeypatch.setattr(m, "sha256_file", refuse)


def test_checksum_cache_hits_and_catches_changes(home, tmp_path, monkeypatch):
    f = tmp_path / "graph.onnx"
    f.write_bytes(b"a" * 4096)
    first = cache.file_sha256(f)
    assert (home / "cache" / "sha256.json").is_file()
    cache.forget()  # a new process: only the disk cache is left
    with monkeypatch.context() as mp:
        _no_hashing(mp)
        assert cache.file_sha256(f) == first  # stat unchanged: no hashing
    # same size, mtime set back: ctime still moves, so the change is caught
    st = os.stat(f)
    f.write_bytes(b"b" * 4096)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(f).st_size == st.st_size and os.stat(f).st_mtime_ns == st.st_mtime_ns
    changed = cache.file_sha256(f)
    assert changed != first
    import hashlib
    assert changed == hashlib.sha256(b"b" * 4096).hexdigest()
    # a replaced file (new inode) is hashed again too
    g = tmp_path / "other"
    g.write_bytes(b"a" * 4096)
    os.replace(g, f)
    assert cache.file_sha256(f) == first


def test_cache_off(home, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECLIP_CACHE", "0")
    f = tmp_path / "x"
    f.write_bytes(b"x")
    cache.file_sha256(f)
    assert not home.exists()


def test_lazy_towers_after_first_load(home, tiny_bundle, flickr_images):
    first = edgeclip.Embedder(tiny_bundle, backend="onnxruntime", threads=1)
    assert not any(r.deferred for r in first._runners.values())  # never seen: checked at once
    want_i, want_t = first.embed_images(flickr_images[:2]), first.embed_texts(["a dog"])
    graphs = sorted((home / "cache" / "ort").glob("*.onnx"))
    assert len(graphs) == 2
    cache.forget()  # as a new process
    emb = edgeclip.Embedder(tiny_bundle, backend="onnxruntime", threads=1)
    img, txt = emb._runners["image"], emb._runners["text"]
    assert img.deferred and txt.deferred and emb._tokenizer is None
    assert emb.precision == "fp32" and emb.towers == ("image", "text")
    np.testing.assert_allclose(emb.embed_images(flickr_images[:2]), want_i, atol=1e-5)
    assert img._session is not None and img.cache_hit
    assert txt._session is None and emb._tokenizer is None  # an image-only app: no text graph
    np.testing.assert_allclose(emb.embed_texts(["a dog"]), want_t, atol=1e-5)
    assert txt._session is not None and emb._tokenizer is not None


def test_edited_manifest_is_still_refused_at_load(home, tiny_bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    edgeclip.Embedder(b, backend="onnxruntime", threads=1)  # caches graph and checks
    m = json.loads((b / "manifest.json").read_text())
    m["towers"]["image"]["inputs"][0]["name"] = "pixels"
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="graph inputs"):
        edgeclip.Embedder(b, backend="onnxruntime", threads=1)


def test_damaged_cached_graph_is_rebuilt(home, tiny_bundle, flickr_images):
    want = edgeclip.Embedder(tiny_bundle, backend="onnxruntime", threads=1,
                             towers=("image",)).embed_images(flickr_images[:2])
    (graph,) = (home / "cache" / "ort").glob("*.onnx")
    graph.write_bytes(b"garbage")
    cache.forget()
    emb = edgeclip.Embedder(tiny_bundle, backend="onnxruntime", threads=1, towers=("image",))
    assert not emb._runners["image"].deferred  # its checksum no longer matches: not trusted
    np.testing.assert_allclose(emb.embed_images(flickr_images[:2]), want, atol=1e-5)
    assert emb._runners["image"].cache_hit is False and graph.stat().st_size > 1000


def test_fp16_graph_runs_as_fp32_on_cpu(home, fp16_bundle, flickr_images):
    onnx = pytest.importorskip("onnx")
    from edgeclip.backends.fp16_upcast import upcast_fp16_model
    up = onnx.load_from_string(upcast_fp16_model((fp16_bundle / "image.fp16.onnx").read_bytes()))
    onnx.checker.check_model(up)
    assert {t.data_type for t in up.graph.initializer} <= {1, 6, 7}  # float, int32, int64
    assert not [n for n in up.graph.node if n.op_type == "Cast"
                and any(a.name == "to" and a.i == 10 for a in n.attribute)]
    # the bundle without its fp32 graphs: fp16 is the only float graph, as in the default model
    from edgeclip.manifest import load_bundle, write_manifest
    m, _ = load_bundle(fp16_bundle)
    fp32 = edgeclip.Embedder(fp16_bundle, backend="onnxruntime", precision="fp32", threads=1)
    ref_i, ref_t = fp32.embed_images(flickr_images[:4]), fp32.embed_texts(["a dog", "a cat"])
    for t in ("image", "text"):
        m.towers[t].models = [x for x in m.towers[t].models if x.precision != "fp32"]
        (fp16_bundle / f"{t}.fp32.onnx").unlink()
    m.files = {}
    write_manifest(m, fp16_bundle)
    for precision in ("fp32", None):
        emb = edgeclip.Embedder(fp16_bundle, backend="onnxruntime", precision=precision,
                                threads=1)
        assert emb.precision == "fp32", precision
        assert all(r.upcast_from == "fp16" for r in emb._runners.values())
        assert (emb.embed_images(flickr_images[:4]) * ref_i).sum(1).min() > 0.9999
        assert (emb.embed_texts(["a dog", "a cat"]) * ref_t).sum(1).min() > 0.9999
    assert edgeclip.Embedder(fp16_bundle, backend="onnxruntime", precision="fp16",
                             threads=1).precision == "fp16"  # asked for: kept


@pytest.mark.skipif(not (default_model_path() / "manifest.json").is_file(),
                    reason="this checkout ships no default model")
def test_default_model_fp32_is_the_upcast_fp16(home, flickr_images):
    auto = edgeclip.Embedder(backend="onnxruntime", threads=1, towers=("image",))
    assert auto.precision == "int8"
    fp32 = edgeclip.Embedder(backend="onnxruntime", precision="fp32", threads=1,
                             towers=("image",))
    fp16 = edgeclip.Embedder(backend="onnxruntime", precision="fp16", threads=1,
                             towers=("image",))
    assert fp32.precision == "fp32" and fp32._runners["image"].upcast_from == "fp16"
    a, b = fp32.embed_images(flickr_images[:8]), fp16.embed_images(flickr_images[:8])
    assert (a * b).sum(1).min() > 0.999
