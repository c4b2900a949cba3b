"""Text-image retrieval metrics (numpy only; the runtime may import this).

Standard protocol: every caption is a text query whose one correct answer is its image
(text-to-image); every image is a query whose correct answers are all of its captions, and it
hits at K if any of them is in the top K (image-to-text). Recalls are percentages.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

KS = (1, 5, 10)


def _check(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray) -> None:
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise InputError(f"embeddings must be (N, D) with the same D; got image "
                         f"{image_emb.shape} and text {text_emb.shape}")
    if text_image.shape != (text_emb.shape[0],):
        raise InputError(f"text_image must give one image index per caption: shape "
                         f"{text_image.shape}, expected ({text_emb.shape[0]},)")
    if len(text_image) and (text_image.min() < 0 or text_image.max() >= image_emb.shape[0]):
        raise InputError("text_image holds an index outside the image embeddings")


def ranks(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray,
          chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Zero-based rank of the correct answer: (t2i per caption, i2t per image (best caption)).

    A rank counts the candidates scored strictly higher than the correct one.
    """
    image_emb = np.asarray(image_emb, dtype=np.float32)
    text_emb = np.asarray(text_emb, dtype=np.float32)
    text_image = np.asarray(text_image, dtype=np.int64)
    _check(image_emb, text_emb, text_image)
    n_img, n_txt = image_emb.shape[0], text_emb.shape[0]
    t2i = np.empty(n_txt, dtype=np.int64)
    for s in range(0, n_txt, chunk):
        sims = text_emb[s:s + chunk] @ image_emb.T  # (c, n_img)
        own = sims[np.arange(sims.shape[0]), text_image[s:s + chunk]]
        t2i[s:s + chunk] = (sims > own[:, None]).sum(axis=1)
    i2t = np.full(n_img, np.iinfo(np.int64).max, dtype=np.int64)
    for s in range(0, n_img, chunk):
        sims = image_emb[s:s + chunk] @ text_emb.T  # (c, n_txt)
        rows = text_image - s
        mine = (rows >= 0) & (rows < sims.shape[0])
        cap_idx = np.nonzero(mine)[0]
        own = sims[rows[cap_idx], cap_idx]  # score of each own caption
        higher = (sims[rows[cap_idx]] > own[:, None]).sum(axis=1)
        np.minimum.at(i2t, rows[cap_idx] + s, higher)
    return t2i, i2t


def recall_at_k(image_emb: np.ndarray, text_emb: np.ndarray, text_image, ks=KS) -> dict:
    """t2i_r{K}, i2t_r{K} (percent) and ``mean_recall`` over both directions and all K.

    Images without any caption are left out of image-to-text.
    """
    t2i, i2t = ranks(image_emb, text_emb, np.asarray(text_image))
    has_caption = i2t != np.iinfo(np.int64).max
    i2t = i2t[has_caption]
    out: dict = {}
    for k in ks:
        out[f"t2i_r{k}"] = float(100.0 * np.mean(t2i < k)) if len(t2i) else 0.0
    for k in ks:
        out[f"i2t_r{k}"] = float(100.0 * np.mean(i2t < k)) if len(i2t) else 0.0
    out["mean_recall"] = float(np.mean([out[f"t2i_r{k}"] for k in ks]
                                       + [out[f"i2t_r{k}"] for k in ks]))
    out["n_images"] = int(has_caption.sum())
    out["n_texts"] = int(len(t2i))
    return out


def format_table(metrics: dict, ks=KS) -> str:
    head = " ".join(f"R@{k:<5}" for k in ks)
    rows = [f"{'':14}{head}"]
    for d, name in (("t2i", "text->image"), ("i2t", "image->text")):
        rows.append(f"{name:14}" + " ".join(f"{metrics[f'{d}_r{k}']:<7.2f}" for k in ks))
    rows.append(f"mean recall   {metrics['mean_recall']:.2f}  ({metrics.get('n_images', '?')} "
                f"images, {metrics.get('n_texts', '?')} captions)")
    return "\n".join(rows)
