"""Training batches streamed from webdataset tar shards (``data.format = "wds"``).

Shards are read as a stream (``webdataset``), never scanned or indexed at start-up: each DDP rank
reads its own shards (one shuffled permutation per epoch, the same on every rank, split
``rank::world``), DataLoader workers split a rank's shards between them, and a shuffle buffer
(``data.shuffle_buffer``) mixes samples within a window. Nothing is cached: the teacher's
embeddings are computed per batch and the student's frozen prefix runs in the forward pass.

An epoch is ``data.epoch_samples`` samples (or the total of ``sizes.json`` beside the shards):
every rank takes ``epoch_samples // world // batch`` batches per epoch, so all ranks step
together; a rank whose shards run out restarts them with the next permutation. One caption per
image is drawn per epoch from (seed, epoch, key). Resuming skips the batches of the current epoch
already trained on (with ``data.workers = 0`` the resumed run sees the same batches).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from ..errors import ConfigError
from ..preprocess import ImageLoadError, load_image, preprocess_image
from .data import detect_format, shard_files, shard_sizes, stream_pairs
from .tokens import load_tokenizer, tokenize


def use_stream(data_cfg: dict) -> bool:
    """True when training should stream: tar shards and ``data.stream`` not false."""
    mode = data_cfg.get("stream", "auto")
    if mode is False or mode == "false":
        return False
    _, fmt = detect_format(data_cfg)
    if mode is True and fmt != "wds":
        raise ConfigError(f"data.stream = true needs tar shards (data.format wds), got {fmt}.")
    return fmt == "wds"


class _Decode:
    """Picklable per-sample decoder (runs in DataLoader workers)."""

    def __init__(self, student_pre, teacher_pre, seed: int, epoch: int):
        self.student_pre, self.teacher_pre = student_pre, teacher_pre
        self.seed, self.epoch = seed, epoch

    def __call__(self, pair: dict):
        try:
            img = load_image(pair["image"])
        except ImageLoadError:
            return None  # an unreadable image never stops training
        caps = pair["captions"]
        rng = np.random.default_rng([self.seed, self.epoch, zlib.crc32(pair["key"].encode())])
        out = {"key": pair["key"], "pixels": preprocess_image(img, self.student_pre),
               "caption": caps[int(rng.integers(len(caps)))]}
        if self.teacher_pre is not None:
            out["tpixels"] = preprocess_image(img, self.teacher_pre)
        return out


def _collate(items: list[dict]) -> dict:
    out = {"keys": [x["key"] for x in items], "captions": [x["caption"] for x in items],
           "pixels": torch.from_numpy(np.stack([x["pixels"] for x in items]))}
    if "tpixels" in items[0]:
        out["tpixels"] = torch.from_numpy(np.stack([x["tpixels"] for x in items]))
    return out


class ShardStream:
    def __init__(self, cfg: dict, model, teacher, dist_, device: str):
        data = cfg["data"]
        root, _ = detect_format(data)
        self.files = shard_files(root, data["train_split"])
        n = int(data.get("epoch_samples") or 0) or shard_sizes(self.files)
        if not n:
            raise ConfigError(f"{root}: streaming tar shards needs the number of samples per "
                              f"epoch: put sizes.json beside the shards "
                              f"(edgeclip.distill.data.write_shards writes it) or set "
                              f"data.epoch_samples.")
        self.epoch_samples = int(n)
        self.model, self.teacher, self.d, self.device = model, teacher, dist_, device
        self.seed = int(cfg["run"]["seed"])
        self.workers = int(data.get("workers", 0))
        self.buffer = int(data.get("shuffle_buffer", 0))
        self.tok = load_tokenizer(model.tokenizer_file, model.context_length)
        self.tdim = None
        if teacher is not None:
            with torch.no_grad():
                probe_ids, probe_mask = teacher.tokenize(["a"])
                self.tdim = int(teacher.encode_text(torch.from_numpy(probe_ids).to(device),
                                                    torch.from_numpy(probe_mask).to(device)
                                                    ).shape[1])
        self._it, self._at = None, (-1, -1)

    def pairs(self, epoch: int, rep: int = 0):
        """This rank's decoded samples of ``epoch`` (``rep``: restarts within the epoch)."""
        seed = self.seed * 1_000_003 + epoch * 1009 + rep
        dec = _Decode(self.model.preprocess,
                      self.teacher.preprocess if self.teacher is not None else None,
                      self.seed, epoch)
        return stream_pairs(self.files, self.d.rank, self.d.world, seed=seed,
                            shuffle_buffer=self.buffer).map(dec).select(lambda x: x is not None)

    def _batches(self, epoch: int, local_b: int):
        rep = 0
        while True:
            loader = torch.utils.data.DataLoader(self.pairs(epoch, rep), batch_size=local_b,
                                                 num_workers=self.workers, collate_fn=_collate,
                                                 drop_last=True)
            got = False
            for b in loader:
                got = True
                yield b
            if not got:
                raise ConfigError(f"rank {self.d.rank}: no readable image-caption pair (a full "
                                  f"batch of {local_b}) in its shards of {self.files[0]}...")
            rep += 1

    def batch(self, micro: int, mb_per_epoch: int, local_b: int):
        """The same tuple as ``Trainer._batch``: (pixels, False, ids, mask, teacher feats, epoch)."""
        epoch, pos = divmod(micro, mb_per_epoch)
        if self._at != (epoch, pos):  # a new epoch, or a resume mid-epoch
            self._it = self._batches(epoch, local_b)
            for _ in range(pos):
                next(self._it)
        b = next(self._it)
        self._at = (epoch, pos + 1)
        ids, mask = tokenize(self.tok, b["captions"])
        t = {}
        if self.teacher is not None:
            with torch.no_grad():
                t["TI"] = self.teacher.encode_image(b["tpixels"].to(self.device)).float()
                tids, tmask = self.teacher.tokenize(b["captions"])
                t["TT"] = self.teacher.encode_text(torch.from_numpy(tids).to(self.device),
                                                   torch.from_numpy(tmask).to(self.device)
                                                   ).float()
        return (b["pixels"].to(self.device), False, torch.from_numpy(ids).to(self.device),
                torch.from_numpy(mask).to(self.device), t, epoch, None)
