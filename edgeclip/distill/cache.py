"""Caches of what is frozen, computed once per (weights, dataset, split):

- teacher embeddings: one per image, one per caption (``teacher-<key>.safetensors``);
- the student's frozen image prefix output, fp16 (``prefix-<key>.npy``).

Each also stores which images could be read (``ok``): unreadable images are skipped and counted,
never fatal. Keys hash the weights, the preprocessing and the dataset identity.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from tqdm import tqdm

from ..preprocess import ImageLoadError
from .data import PairDataset


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def module_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _PixelSet(torch.utils.data.Dataset):
    def __init__(self, ds: PairDataset, cfg):
        self.ds, self.cfg = ds, cfg

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        try:
            return i, torch.from_numpy(self.ds.pixels(i, self.cfg)), ""
        except ImageLoadError as e:
            return i, None, str(e)


def _collate(items):
    idx = [i for i, x, _ in items if x is not None]
    bad = [(i, r) for i, x, r in items if x is None]
    pix = torch.stack([x for _, x, _ in items if x is not None]) if idx else None
    return idx, pix, bad


def pixel_batches(ds: PairDataset, cfg, batch_size: int, workers: int = 0, indices=None):
    """Yield (indices, pixel tensor, [(index, reason) of unreadable images]) in order."""
    base = _PixelSet(ds, cfg)
    if indices is not None:
        base = torch.utils.data.Subset(base, list(indices))
    loader = torch.utils.data.DataLoader(base, batch_size=batch_size, shuffle=False,
                                         num_workers=workers, collate_fn=_collate)
    yield from loader


def _map_images(ds, cfg, fn, batch_size, workers, desc):
    """Run ``fn(pixels) -> np.ndarray`` over every image; returns (list of arrays, ok mask)."""
    ok = np.zeros(len(ds), dtype=bool)
    out: list = [None] * len(ds)
    n_bad = 0
    for idx, pix, bad in tqdm(pixel_batches(ds, cfg, batch_size, workers), desc=desc,
                              total=(len(ds) + batch_size - 1) // batch_size, leave=False):
        n_bad += len(bad)
        if pix is not None:
            res = fn(pix)
            for j, i in enumerate(idx):
                out[i] = res[j]
                ok[i] = True
    if n_bad:
        tqdm.write(f"{desc}: skipped {n_bad} unreadable image(s) of {len(ds)}")
    return out, ok


def _save_atomic(path: Path, writer) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    writer(tmp)
    os.replace(tmp, path)


def _save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    """``np.save`` to ``path`` through a temporary file that is closed before it replaces ``path``
    (``np.save`` on a file name would append ``.npy`` to the temporary name)."""
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, arr)
    _save_atomic(path, write)


def teacher_embeddings(teacher, ds: PairDataset, cache_dir, batch_size: int = 64,
                       workers: int = 0) -> dict:
    """{"image": (Ni, D) float32, "text": (Nc, D) float32, "ok": (Ni,) bool}, cached."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _key("teacher", teacher.identity, teacher.preprocess.to_dict(), ds.identity)
    path = cache_dir / f"teacher-{key}.safetensors"
    if path.is_file():
        d = load_file(str(path))
        return {"image": d["image"], "text": d["text"], "ok": d["ok"].astype(bool), "path": path}
    dev = teacher.device

    def enc_img(pix):
        return teacher.encode_image(pix.to(dev)).float().cpu().numpy()

    model = getattr(teacher, "model", None)
    enc = getattr(model, "image_encoder", None)
    if getattr(enc, "freeze_blocks", 0) and hasattr(enc, "tail"):
        # an edgeclip teacher with a frozen prefix: reuse (or fill) the prefix cache that its
        # own training wrote, then run only the tail
        pre = prefix_features(enc, teacher.preprocess, ds, cache_dir, batch_size, workers, dev)
        ok = pre["ok"].copy()
        imgs = []
        with torch.no_grad():
            for s in range(0, len(ds), batch_size):
                h = torch.from_numpy(np.array(pre["features"][s:s + batch_size])).float()
                imgs.extend(enc.tail(h.to(dev)).float().cpu().numpy())
        imgs = [x if k else None for x, k in zip(imgs, ok)]
    else:
        imgs, ok = _map_images(ds, teacher.preprocess, enc_img, batch_size, workers,
                               f"teacher images ({teacher.name})")
    dim = next((x.shape[0] for x in imgs if x is not None), teacher.embed_dim)
    image = np.stack([x if x is not None else np.zeros(dim, np.float32) for x in imgs])
    if model is not None and getattr(getattr(model, "text_encoder", None), "frozen_features",
                                     False):
        # a frozen text tower (e.g. all-mpnet-base-v2): its caption features are cached on disk
        # by the teacher's own training; load them instead of running the encoder again
        from .mpnet_tower import prime_text_cache
        prime_text_cache(model, ds.captions, cache_dir)
    texts = []
    for s in tqdm(range(0, len(ds.captions), 256), desc="teacher captions", leave=False):
        ids, mask = teacher.tokenize(ds.captions[s:s + 256])
        texts.append(teacher.encode_text(torch.from_numpy(ids).to(dev),
                                         torch.from_numpy(mask).to(dev)).float().cpu().numpy())
    text = np.concatenate(texts) if texts else np.zeros((0, dim), np.float32)
    _save_atomic(path, lambda p: save_file({"image": image.astype(np.float32),
                                            "text": text.astype(np.float32),
                                            "ok": ok.astype(np.uint8)}, str(p)))
    return {"image": image, "text": text, "ok": ok, "path": path}


def prefix_features(tower, preprocess, ds: PairDataset, cache_dir, batch_size: int = 64,
                    workers: int = 0, device: str = "cpu") -> dict:
    """The frozen prefix output of every image, fp16 (memory-mapped), and the ok mask."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    frozen = torch.nn.ModuleList(tower.blocks[:tower.freeze_blocks])
    key = _key("prefix", type(tower).__name__, tower.freeze_blocks, module_digest(frozen),
               preprocess.to_dict(), ds.identity)
    path, ok_path = cache_dir / f"prefix-{key}.npy", cache_dir / f"prefix-{key}.ok.npy"
    if path.is_file() and ok_path.is_file():
        return {"features": np.load(path, mmap_mode="r"), "ok": np.load(ok_path), "path": path}
    was_training = tower.training
    tower.eval()

    run = prefix_runner(tower, preprocess, device)
    feats, ok = _map_images(ds, preprocess, run, batch_size, workers, "image prefix cache")
    tower.train(was_training)
    shape = next(x.shape for x in feats if x is not None)
    arr = np.lib.format.open_memmap(str(path) + ".tmp.npy", mode="w+", dtype=np.float16,
                                    shape=(len(ds),) + tuple(shape))
    for i, x in enumerate(feats):
        arr[i] = x if x is not None else 0
    arr.flush()
    del arr
    os.replace(str(path) + ".tmp.npy", path)
    _save_npy_atomic(ok_path, ok)
    return {"features": np.load(path, mmap_mode="r"), "ok": ok, "path": path}


def prefix_runner(tower, preprocess, device: str):
    """pixels -> fp16 numpy features of the frozen prefix: ONNX Runtime on the CPU (faster than
    eager PyTorch there), the tower itself on other devices."""
    run = _ort_prefix_runner(tower, preprocess) if device == "cpu" else None
    if run is None:
        @torch.no_grad()
        def run(pix):
            return tower.prefix(pix.to(device)).half().cpu().numpy()
    return run


class _Prefix(torch.nn.Module):
    def __init__(self, tower):
        super().__init__()
        self.tower = tower

    def forward(self, x):
        return self.tower.prefix(x)


def _ort_prefix_runner(tower, preprocess):
    """The frozen prefix exported to ONNX and run by ONNX Runtime: several times faster than
    PyTorch eager on a CPU, and the prefix is frozen so the numbers are the same (float32).
    Returns None (use PyTorch) when the export or the session fails."""
    import shutil
    import tempfile
    import warnings

    tmp_dir = Path(tempfile.mkdtemp(prefix="edgeclip-prefix-"))
    try:
        import onnxruntime as ort
        h, w = preprocess.size
        tmp = tmp_dir / "prefix.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Prefix(tower).eval(), (torch.zeros(1, 3, h, w),), str(tmp),
                              input_names=["x"], output_names=["h"],
                              dynamic_axes={"x": {0: "b"}, "h": {0: "b"}}, opset_version=17,
                              dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(str(tmp), opts, providers=["CPUExecutionProvider"])
        with torch.no_grad():
            probe = torch.randn(2, 3, h, w)
            want = tower.prefix(probe).numpy()
        got = sess.run(None, {"x": probe.numpy()})[0]
        if not np.allclose(got, want, atol=1e-3, rtol=1e-3):
            return None
    except Exception as e:  # any exporter/runtime failure: PyTorch computes the same thing
        tqdm.write(f"image prefix cache: ONNX Runtime path unavailable ({type(e).__name__}), "
                   f"using PyTorch")
        return None
    finally:  # the session holds the graph in memory: the file is not needed once it is built
        shutil.rmtree(tmp_dir, ignore_errors=True)

    def run(pix):
        return sess.run(None, {"x": pix.numpy()})[0].astype(np.float16)
    return run
