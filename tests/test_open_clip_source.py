"""open_clip architectures through the model-source grammar (``open_clip:ARCH --weights FILE``).

Tiny random models registered with open_clip (a ViT and a MobileCLIP2-style FastViT-MCi0 +
bidirectional text transformer, both with open_clip's own CLIP BPE tokenizer): exported at
fp32/fp16/int8, the bundle's ``edgeclip.Embedder`` embeddings match open_clip's own pipeline
(``create_model_and_transforms`` from the weights file, its transform, its tokenizer,
``encode_image``/``encode_text``) on real photos and captions; the bundle's tokenizer.json gives
open_clip's ids on real captions; eval on the source equals eval on its fp32 bundle; a
distillation run from the open_clip teacher; bad architectures/weights give one ``error:`` line.

Needs open_clip_torch + timm, which import torchvision: the main CI job (CPU torch 2.13.0, whose
package-index torchvision does not load) skips this file; `.ci/run`'s open_clip job runs it.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.open_clip

open_clip = pytest.importorskip(
    "open_clip", reason="open_clip_torch (+ a torchvision that loads beside torch) is not "
                        "installed; .ci/run's open_clip job installs it")
pytest.importorskip("timm", reason="MobileCLIP's image tower needs timm")
pytest.importorskip("onnxslim")
pytest.importorskip("skimage", reason="verification photos come from scikit-image")

import torch  # noqa: E402

from edgeclip import Embedder  # noqa: E402
from edgeclip.export.data import builtin_samples  # noqa: E402

GATES = {"fp32": 0.9999, "fp16": 0.995, "int8": 0.95}  # edgeclip.export.verify.Thresholds
TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}
CONFIGS = {
    # open_clip's CLIP ViT (causal text transformer, arg-max EOT pooling), tiny widths
    "edgeclip-tiny-ViT": {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2,
                                                          "width": 64, "patch_size": 16,
                                                          "head_width": 32},
                          "text_cfg": dict(TEXT)},
    # MobileCLIP2-S0's towers (timm fastvit_mci0, re-parameterisable; text without causal mask)
    # at 64 px with a tiny text transformer
    "edgeclip-tiny-MobileCLIP2": {"embed_dim": 32, "custom_text": True,
                                  "vision_cfg": {"timm_model_name": "fastvit_mci0",
                                                 "timm_model_pretrained": False,
                                                 "timm_pool": "avg", "timm_proj": None,
                                                 "image_size": 64},
                                  "text_cfg": {**TEXT, "no_causal_mask": True}},
    # same family as the tiny ViT, other widths: weights that do not fit
    "edgeclip-tiny-ViT-wide": {"embed_dim": 48, "vision_cfg": {"image_size": 64, "layers": 2,
                                                               "width": 96, "patch_size": 16,
                                                               "head_width": 32},
                               "text_cfg": dict(TEXT)},
}
ARCHS = ["edgeclip-tiny-ViT", "edgeclip-tiny-MobileCLIP2"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Register the tiny configs; random weights as safetensors (ViT) and as a torch.save state
    dict (MobileCLIP2: the weights_only=True path)."""
    from safetensors.torch import save_file
    root = tmp_path_factory.mktemp("open_clip")
    for name, cfg in CONFIGS.items():
        (root / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(root)
    out = {}
    for i, arch in enumerate(ARCHS):
        torch.manual_seed(i)
        m = open_clip.create_model(arch, pretrained_text=False)
        with torch.no_grad():  # FastViT initialises its layer scales at 1e-5: every photo then
            for n, p in m.named_parameters():  # gets nearly the same embedding (cos > 0.9999)
                if n.endswith("layer_scale.gamma"):
                    p.fill_(1.0)
        sd = {k: v.contiguous() for k, v in m.state_dict().items()}
        if arch.endswith("ViT"):
            out[arch] = root / f"{arch}.safetensors"
            save_file(sd, str(out[arch]))
        else:
            out[arch] = root / f"{arch}.pt"
            torch.save({"state_dict": sd, "epoch": 3}, out[arch])
    return out


@pytest.fixture(scope="module")
def photos():
    """Real photos and captions: Flickr8k's first 16 when present, else scikit-image's."""
    from conftest import flickr8k_dir
    root = flickr8k_dir()
    if root is None:
        s = builtin_samples()
        return s.images, s.captions
    rows = list(csv.DictReader(open(root / "captions.csv", encoding="utf-8")))[:80:5]
    return [root / "images" / r["image"] for r in rows], [r["caption"] for r in rows]


def _cli(args, capsys):
    """The real `edgeclip` entry point (in this process, where the tiny configs are
    registered); -> (exit code, stdout, stderr)."""
    from edgeclip.cli import main
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture(scope="module")
def bundles(models, tmp_path_factory):
    """`edgeclip export open_clip:ARCH --weights FILE` at fp32,fp16,int8 (cpu)."""
    from edgeclip.cli import main
    root = tmp_path_factory.mktemp("oc_bundles")
    out = {}
    for arch in ARCHS:
        with pytest.raises(SystemExit) as e:
            main(["export", f"open_clip:{arch}", "--weights", str(models[arch]), "--out",
                  str(root / arch), "--precision", "fp32,fp16,int8", "--verify-count", "16",
                  "--calib-count", "32", "--threads", "1"])
        assert e.value.code in (0, None)
        out[arch] = root / arch
    return out


def library_embeddings(arch, weights, images, captions):
    """open_clip's own pipeline from the weights file: its transform, tokenizer and encoders."""
    from PIL import Image
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(weights))
    model.eval()
    tok = open_clip.get_tokenizer(arch)
    pix = torch.stack([preprocess(Image.open(p)) for p in images])
    with torch.no_grad():
        img = model.encode_image(pix, normalize=True).numpy()
        txt = model.encode_text(tok(captions), normalize=True).numpy()
    return img, txt


@pytest.mark.parametrize("arch", ARCHS)
def test_bundle_matches_open_clip(arch, models, bundles, photos):
    images, captions = photos
    ref_img, ref_txt = library_embeddings(arch, models[arch], images, captions)
    from PIL import Image
    # fully decoded photos, as open_clip's transform gets them: the export's parity. Files given
    # by path are JPEG-draft decoded by the runtime when they are >= 1.5x the input size (a
    # separate, tested approximation; edgeclip.preprocess.DRAFT_MARGIN): checked more loosely.
    decoded = [Image.open(p).convert("RGB") for p in images]
    seen = {}
    for precision, gate in GATES.items():
        emb = Embedder(bundles[arch], backend="onnxruntime", precision=precision)
        img = emb.embed_images(decoded)
        txt = emb.embed_texts(captions)
        cos_i, cos_t = np.sum(img * ref_img, axis=1), np.sum(txt * ref_txt, axis=1)
        seen[precision] = (round(float(cos_i.min()), 6), round(float(cos_t.min()), 6))
        assert cos_i.min() >= gate and cos_t.min() >= gate, (precision, seen[precision])
        if precision == "fp32":
            drafted = np.sum(emb.embed_images([str(p) for p in images]) * ref_img, axis=1)
            seen["fp32-files"] = round(float(drafted.min()), 6)
            assert drafted.min() >= 0.999, seen
    # the embeddings are not degenerate: different photos/captions get different vectors
    assert np.sum(ref_img[0] * ref_img[1:], axis=-1).min() < 0.9999
    assert np.sum(ref_txt[0] * ref_txt[1:], axis=-1).min() < 0.999
    print(arch, seen)


@pytest.mark.parametrize("arch", ARCHS)
def test_manifest_and_report_record_the_source(arch, models, bundles):
    from edgeclip.manifest import load_bundle, sha256_file
    manifest, _ = load_bundle(bundles[arch])
    src = manifest.extra["source"]
    assert src["source"] == f"open_clip:{arch}"
    assert (src["library"], src["architecture"]) == ("open_clip", arch)
    assert src["library_version"] == open_clip.__version__
    assert src["weights_sha256"] == sha256_file(models[arch])
    assert src["reparameterized"] is arch.endswith("MobileCLIP2")
    report = json.loads((bundles[arch] / "report.json").read_text())
    assert report["passed"] and report["source"] == src
    lib = open_clip.create_model(arch, pretrained=str(models[arch]))
    assert manifest.extra["logit_scale"] == pytest.approx(float(lib.logit_scale.exp()))
    pre = manifest.tower("image").preprocess
    cfg = lib.visual.preprocess_cfg
    assert list(pre.size) == [64, 64]
    assert (pre.resize_mode, pre.interpolation) == (cfg["resize_mode"], cfg["interpolation"])
    assert pre.mean == pytest.approx(cfg["mean"]) and pre.std == pytest.approx(cfg["std"])
    assert manifest.tower("text").tokenizer.context_length == 77


def test_tokenizer_json_gives_open_clips_ids(bundles):
    """The bundle's tokenizer.json (edgeclip.tokenize, the runtime's) against
    open_clip.get_tokenizer on the captions of Flickr8k's test split (when present) and on text
    that exercises the cleaning: curly quotes, HTML entities, ligatures, full-width forms,
    whitespace, accents, CJK, emoji, over-long text (truncation keeps the end-of-text token)."""
    from conftest import flickr8k_dir
    from edgeclip.tokenize import Tokenizer
    texts = ["Don\u2019t \u201cquote\u201d me &amp; you", "\ufb01sh \uff21\uff22\uff23\uff11\uff12",
             "  spaces\tand\nnewlines  ", "\u00c9mile's caf\u00e9 na\u00efve",
             "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8", "emoji \U0001f436\U0001f431",
             "", "&amp;amp; &lt;b&gt; x", "It's 3:45PM, OK?", "a " + "very " * 100 + "long one"]
    root = flickr8k_dir()
    if root is not None:
        test = set((root / "splits" / "test.txt").read_text().split())
        texts += [r["caption"] for r in csv.DictReader(open(root / "captions.csv",
                                                            encoding="utf-8"))
                  if r["image"] in test]
        assert len(texts) > 5000
    for arch in ARCHS:
        ids, mask = Tokenizer(bundles[arch] / "tokenizer.json", 77)(texts)
        want = open_clip.get_tokenizer(arch)(texts).numpy()
        bad = np.where((ids != want).any(axis=1))[0]
        assert len(bad) == 0, [texts[i] for i in bad[:5]]
        assert (mask == (want != 0)).all()
        long = texts.index("a " + "very " * 100 + "long one")
        assert ids[long, -1] == want[long, -1] == 49407  # truncated: ends with <end_of_text>


def _tiny_eval_data(root: Path, photos) -> Path:
    images, captions = photos
    (root / "images").mkdir(parents=True)
    (root / "splits").mkdir()
    names = []
    with open(root / "captions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for i, (p, c) in enumerate(zip(images, captions)):
            name = f"{i:02d}{Path(p).suffix}"
            shutil.copyfile(p, root / "images" / name)
            w.writerow([name, c])
            names.append(name)
    (root / "splits" / "test.txt").write_text("\n".join(names) + "\n")
    return root


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_on_the_source_equals_eval_on_its_fp32_bundle(arch, models, bundles, photos,
                                                           tmp_path, capsys):
    data = _tiny_eval_data(tmp_path / "data", photos)
    code, out_src, _ = _cli(["eval", "--model", f"open_clip:{arch}", "--weights", models[arch],
                             "--data", data, "--json"], capsys)
    assert code in (0, None)
    code, out_b, _ = _cli(["eval", "--model", bundles[arch], "--data", data, "--precision",
                           "fp32", "--backend", "onnxruntime", "--json"], capsys)
    assert code in (0, None)
    a, b = json.loads(out_src), json.loads(out_b)
    assert (a["backend"], b["precision"]) == ("torch", "fp32")
    keys = [k for k in a if k.startswith(("t2i_r", "i2t_r"))]
    assert len(keys) >= 6
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}


def test_distill_from_an_open_clip_teacher(models, tmp_path):
    from _distill_data import make_flickr_layout
    from edgeclip.distill.cache import teacher_embeddings
    from edgeclip.distill.config import load_config
    from edgeclip.distill.data import open_dataset
    from edgeclip.distill.evaluate import evaluate_path, metrics_from
    from edgeclip.distill.teachers import load_teacher
    from edgeclip.distill.trainer import train
    arch = "edgeclip-tiny-ViT"
    data = make_flickr_layout(tmp_path / "data", n_train=16, n_dev=8)
    sets = [f'run.out="{tmp_path / "run"}"', 'model.name="tiny-test"', "model.pretrained=false",
            f'data.root="{data}"', f'data.cache_dir="{tmp_path / "cache"}"',
            f'teacher.path="open_clip:{arch}"', f'teacher.weights="{models[arch]}"',
            'loss.preset="cona"', "train.batch_size=8", "train.epochs=1", "train.log_every=1",
            "train.warmup_steps=1", "train.threads=1", "train.checkpoint_every=0"]
    result = train(load_config(None, sets))
    assert result["steps"] == 2 and result["skipped_images"] == 1  # 16 good + 1 corrupt image
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses))
    cached = sorted((tmp_path / "cache").glob("teacher-*.safetensors"))
    assert len(cached) == 1

    # the cache holds open_clip's own embeddings (its model from the file, its tokenizer)
    teacher = load_teacher({"type": "open_clip", "model": arch, "checkpoint": str(models[arch])})
    ds = open_dataset({"root": str(data)}, "train")
    again = teacher_embeddings(teacher, ds, tmp_path / "cache")
    assert again["path"] == cached[0]
    lib = open_clip.create_model(arch, pretrained=str(models[arch])).eval()
    px = torch.from_numpy(ds.pixels(0, teacher.preprocess))[None]
    ids = open_clip.get_tokenizer(arch)(ds.captions[:3])
    with torch.no_grad():
        want_i = lib.encode_image(px, normalize=True)[0].numpy()
        want_t = lib.encode_text(ids, normalize=True).numpy()
    assert np.dot(again["image"][0], want_i) > 0.99999
    assert np.allclose(again["text"][:3], want_t, atol=1e-5)

    # eval on the teacher source = the recall of exactly the embeddings distillation used
    m = evaluate_path(f"open_clip:{arch}", ds, weights=str(models[arch]))
    ref = metrics_from(again["image"], again["ok"], again["text"], ds)
    for k in ("t2i_r1", "t2i_r5", "i2t_r1", "i2t_r5"):
        assert m[k] == pytest.approx(ref[k]), k


def test_bad_open_clip_sources_give_one_error_line(models, tmp_path, capsys):
    not_weights = tmp_path / "notes.safetensors"
    not_weights.write_text("not a tensor file")
    pickled = tmp_path / "model.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, pickled)  # a pickled module, not a state dict
    vit, mc = models["edgeclip-tiny-ViT"], models["edgeclip-tiny-MobileCLIP2"]
    cases = {
        "unknown": (["open_clip:ViT-B-33", "--weights", vit],
                    ["open_clip architecture 'ViT-B-33' is unknown", "close matches: ViT-B-32",
                     "open_clip.list_models()"]),
        "mismatch": (["open_clip:edgeclip-tiny-ViT-wide", "--weights", vit],
                     ["weights do not fit open_clip architecture 'edgeclip-tiny-ViT-wide'",
                      "shape mismatch (file vs edgeclip-tiny-ViT-wide): ",
                      "(64,) vs (96,)", "pass the architecture these weights were trained"]),
        "other-family": (["open_clip:edgeclip-tiny-ViT", "--weights", mc],
                         ["weights do not fit open_clip architecture 'edgeclip-tiny-ViT'",
                          " missing: positional_embedding, text_projection, "
                          "visual.class_embedding ...", " unexpected: visual.trunk."]),
        "missing": (["open_clip:edgeclip-tiny-ViT", "--weights", tmp_path / "nope.safetensors"],
                    ["nope.safetensors: no such file", "open_clip checkpoint of"]),
        "not-weights": (["open_clip:edgeclip-tiny-ViT", "--weights", not_weights],
                        ["notes.safetensors: cannot read open_clip weights",
                         "torch.load(weights_only=True)"]),
        "pickle": (["open_clip:edgeclip-tiny-ViT", "--weights", pickled],
                   ["model.pt: cannot read open_clip weights", "weights_only"]),
    }
    for case, (args, needles) in cases.items():
        out = tmp_path / f"out-{case}"
        code, _, err = _cli(["export", *args, "--out", out, "--precision", "fp32"], capsys)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), (case, err)
        for n in needles:
            assert n in lines[0], (case, lines[0])
        assert not out.exists(), case
    from _distill_data import make_flickr_layout
    data = make_flickr_layout(tmp_path / "data", n_train=2, n_dev=2, corrupt=False)
    code, _, err = _cli(["eval", "--model", "open_clip:MobileCLIP-S0", "--weights", vit,
                         "--data", data, "--split", "dev"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "'MobileCLIP-S0' is unknown" in err and "close matches: MobileCLIP2-S0" in err
    assert "MobileCLIP-S0's text tower is not in open_clip" in err


def test_full_size_architectures_are_registered():
    """The architectures the README names exist in this open_clip (built without weights)."""
    from edgeclip.export.sources.open_clip import open_clip_config
    for arch in ("ViT-B-32", "MobileCLIP2-S0"):
        cfg = open_clip_config(arch)
        assert cfg["embed_dim"] == 512 and cfg["text_cfg"]["context_length"] == 77
    assert open_clip_config("MobileCLIP2-S0")["vision_cfg"]["timm_model_name"] == "fastvit_mci0"
