"""``edgeclip.Embedder``: images and texts in, L2-normalised float32 embeddings out.

Images are decoded and preprocessed by a thread pool while the previous batch runs on the
backend, so JPEG decoding overlaps inference. All public methods are thread-safe: runners are
thread-safe and each call keeps its own buffers.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .backends import make_runner
from .backends.base import Runner
from .errors import BundleError, EdgeClipError, InputError
from .manifest import MANIFEST_NAME, Manifest, load_bundle, resolve_bundle_path
from .paths import expand_path
from .preprocess import (ImageLoadError, Normalizer, describe_item, load_image, resize_crop)
from .tokenize import Tokenizer, invalid_text_reason

ON_ERROR = ("raise", "skip")


@dataclass(frozen=True)
class Skipped:
    """An input item that could not be embedded (``on_error="skip"``)."""

    index: int
    item: str
    reason: str


def default_model_path() -> Path:
    """The built-in default bundle shipped inside the package."""
    return Path(__file__).resolve().parent / "models" / "default"


def _resolve_path(path) -> Path:
    if path is None:
        env = os.environ.get("EDGECLIP_MODEL")
        if env:
            return expand_path(env)
        p = default_model_path()
        if not (p / MANIFEST_NAME).is_file():
            raise BundleError("this edgeclip installation has no built-in default model "
                              f"({p / MANIFEST_NAME} is missing). Pass a bundle path, e.g. "
                              "Embedder('my_bundle/'), or set EDGECLIP_MODEL.")
        return p
    return expand_path(path)


def _progress_bar(progress: bool, total: int, desc: str, unit: str):
    """A tqdm bar on stderr when ``progress`` is true (None otherwise)."""
    if not progress:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)


def _l2n(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    return x / norms


class Embedder:
    """Embed images and texts with an edgeclip bundle.

    Args:
        path: a bundle directory, its ``manifest.json``, or one ``.onnx``/``.plan``/``.engine``
            file with the manifest beside it; ``None`` means the built-in default model.
        backend: ``auto``, ``onnxruntime`` (CPU), ``onnxruntime-cuda``, ``onnxruntime-tensorrt``
            or ``tensorrt``.
        precision: ``fp32``, ``fp16`` or ``int8``; ``None`` picks the fastest the backend has
            (INT8 on CPU, FP16 on GPU).
        threads: intra-op threads of the backend (default: all cores).
        towers: which towers to load (``("image",)``, ``("text",)``); default: all in the bundle.
        workers: image decoding threads (default: ``min(4, cpu_count)``).
        check_hashes: verify every file's sha256 at load (default True; cached by file identity
            and mtime, see :mod:`edgeclip.cache`).
        lazy: create a tower's session (and the tokenizer) on its first use when this graph and
            manifest passed the load checks before (default True): an image-only app never
            loads the text graph. A bundle not seen before is checked at once.
    """

    def __init__(self, path: str | os.PathLike | None = None, backend: str = "auto",
                 precision: str | None = None, threads: int | None = None,
                 towers: Sequence[str] | None = None, workers: int | None = None,
                 check_hashes: bool = True, lazy: bool = True):
        resolved = _resolve_path(path)
        bundle_dir, model_file = resolve_bundle_path(resolved)
        manifest, bundle_dir = load_bundle(bundle_dir, check_hashes=check_hashes)
        self.manifest: Manifest = manifest
        self.bundle_dir: Path = bundle_dir
        if towers is None:
            towers = tuple(manifest.towers)
        towers = tuple(towers)
        for t in towers:
            manifest.tower(t)  # raises a clear BundleError when the tower is absent
        self._runners: dict[str, Runner] = {}
        for t in towers:
            self._runners[t] = make_runner(manifest, bundle_dir, t, backend=backend,
                                           precision=precision, model_path=model_file,
                                           threads=threads, lazy=lazy)
        self._tokenizer: Tokenizer | None = None
        self._tok_lock = threading.Lock()
        if "text" in self._runners and not getattr(self._runners["text"], "deferred", False):
            self._get_tokenizer()  # a bundle not checked before: a bad tokenizer fails here
        if "image" in self._runners:
            self._pre = manifest.towers["image"].preprocess
            self._norm = Normalizer(self._pre)
        self._workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # -- properties --------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.manifest.embed_dim

    @property
    def model_name(self) -> str:
        return self.manifest.model_name

    @property
    def identity(self) -> str:
        """A checksum of the model (manifest without dates); equal for equal embeddings."""
        return self.manifest.identity()

    @property
    def backends(self) -> dict[str, str]:
        return {t: r.backend for t, r in self._runners.items()}

    @property
    def precisions(self) -> dict[str, str]:
        return {t: r.precision for t, r in self._runners.items()}

    @property
    def backend(self) -> str:
        """The backend that runs (e.g. ``onnxruntime-cpu``, ``tensorrt``)."""
        names = sorted(set(self.backends.values()))
        return names[0] if len(names) == 1 else ", ".join(f"{t}={b}" for t, b in
                                                           self.backends.items())

    @property
    def precision(self) -> str:
        names = sorted(set(self.precisions.values()))
        return names[0] if len(names) == 1 else ", ".join(f"{t}={p}" for t, p in
                                                           self.precisions.items())

    @property
    def towers(self) -> tuple[str, ...]:
        return tuple(self._runners)

    def __repr__(self) -> str:
        return (f"Embedder(model={self.model_name!r}, dim={self.dim}, backend={self.backend!r}, "
                f"precision={self.precision!r}, towers={self.towers})")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        for r in self._runners.values():
            r.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- internals ---------------------------------------------------------------------------
    def _runner(self, tower: str) -> Runner:
        if tower not in self._runners:
            raise BundleError(f"the {tower} tower of '{self.model_name}' is not loaded (loaded: "
                              f"{', '.join(self._runners) or 'none'}). Create the Embedder with "
                              f"towers=None or a bundle that has the {tower} tower.")
        return self._runners[tower]

    def _get_tokenizer(self) -> Tokenizer:
        """The text tower's tokenizer, loaded on first use (call with or without _tok_lock)."""
        if self._tokenizer is None:
            tok = self.manifest.towers["text"].tokenizer
            self._tokenizer = Tokenizer(self.bundle_dir / tok.file, tok.context_length)
        return self._tokenizer

    def _get_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="edgeclip-img")
            return self._pool

    def _prep_into(self, item: Any, out: np.ndarray) -> None:
        th, tw = self._pre.size
        if (isinstance(item, np.ndarray) and item.ndim == 3 and item.shape == (th, tw, 3)
                and item.dtype == np.uint8):
            self._norm(item, out=out)  # already the model's size: no PIL round trip
            return
        img = load_image(item, self._pre)  # big JPEGs decoded at a reduced scale
        img = resize_crop(img, self._pre)
        self._norm(np.asarray(img, dtype=np.uint8), out=out)

    def _prep_task(self, item: Any, out: np.ndarray) -> str | None:
        try:
            self._prep_into(item, out)
            return None
        except ImageLoadError as e:
            return str(e)
        except MemoryError:
            return "out of memory while decoding"

    @staticmethod
    def _check_on_error(on_error: str) -> None:
        if on_error not in ON_ERROR:
            raise EdgeClipError(f"on_error={on_error!r}: use 'raise' or 'skip'.")

    @staticmethod
    def _check_batch(batch_size: int) -> int:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise EdgeClipError(f"batch_size={batch_size!r}: must be a positive int.")
        return batch_size

    def _run_split(self, runner: Runner, feeds: dict[str, np.ndarray]) -> np.ndarray:
        n = next(iter(feeds.values())).shape[0]
        mb = runner.max_batch
        if n <= mb:
            return runner.run(feeds)
        parts = [runner.run({k: v[i:i + mb] for k, v in feeds.items()}) for i in range(0, n, mb)]
        return np.concatenate(parts, axis=0)

    # -- images ------------------------------------------------------------------------------
    def embed_images(self, items: Iterable[Any], batch_size: int = 32, on_error: str = "raise",
                     progress: bool = False):
        """Embed images (paths, bytes, PIL images or HxWx3 uint8 RGB arrays).

        ``progress=True`` shows a tqdm bar (count, rate, ETA) on stderr.

        Returns float32 ``(N, dim)``, L2-normalised. With ``on_error="skip"`` returns
        ``(embeddings, skipped)``: the rows of the good items in input order and a list of
        :class:`Skipped`. With ``on_error="raise"`` a bad item raises :class:`InputError` naming
        its index and path.
        """
        self._check_on_error(on_error)
        batch_size = self._check_batch(batch_size)
        runner = self._runner("image")
        if isinstance(items, (str, bytes, bytearray, memoryview, os.PathLike)):
            desc = ascii(describe_item(items))[:120]
            raise InputError(f"embed_images takes a list of images, not one "
                             f"{type(items).__name__} ({desc}): use embed_images([image]) or "
                             f"embed_image(image).", item=describe_item(items), reason="not a list")
        items = list(items)
        n = len(items)
        th, tw = self._pre.size
        in_name = self.manifest.towers["image"].inputs[0].name
        out = np.empty((n, self.dim), dtype=np.float32)
        good = np.zeros(n, dtype=bool)
        skipped: list[Skipped] = []
        if n == 0:
            return (out, skipped) if on_error == "skip" else out

        pool = self._get_pool()
        starts = list(range(0, n, batch_size))
        pending: deque = deque()

        def submit(start: int):
            stop = min(start + batch_size, n)
            buf = np.empty((stop - start, 3, th, tw), dtype=np.float32)
            futs = [pool.submit(self._prep_task, items[i], buf[i - start])
                    for i in range(start, stop)]
            pending.append((start, stop, buf, futs))

        depth = 2  # batches decoded ahead of the one running
        next_i = 0
        bar = _progress_bar(progress, n, "images", "img")
        while next_i < len(starts) and len(pending) < depth:
            submit(starts[next_i])
            next_i += 1
        try:
            while pending:
                start, stop, buf, futs = pending.popleft()
                reasons = [f.result() for f in futs]
                if next_i < len(starts):
                    submit(starts[next_i])
                    next_i += 1
                ok = [j for j, r in enumerate(reasons) if r is None]
                for j, r in enumerate(reasons):
                    if r is not None:
                        item_desc = describe_item(items[start + j])
                        if on_error == "raise":
                            raise InputError(f"image {start + j} ({item_desc}): {r}",
                                             index=start + j, item=item_desc, reason=r)
                        skipped.append(Skipped(start + j, item_desc, r))
                if not ok:
                    if bar is not None:
                        bar.update(stop - start)
                    continue
                batch = buf if len(ok) == len(reasons) else buf[ok]
                emb = self._run_split(runner, {in_name: batch})
                idx = np.asarray(ok) + start
                out[idx] = emb
                good[idx] = True
                if bar is not None:
                    bar.update(stop - start)
        finally:
            if bar is not None:
                bar.close()
            for _, _, _, futs in pending:
                for f in futs:
                    f.cancel()
        result = _l2n(out[good]) if not good.all() else _l2n(out)
        return (result, skipped) if on_error == "skip" else result

    def embed_image(self, item: Any) -> np.ndarray:
        """One image -> float32 ``(dim,)``."""
        return self.embed_images([item])[0]

    # -- texts -------------------------------------------------------------------------------
    def embed_texts(self, texts: Iterable[Any], batch_size: int = 64, on_error: str = "raise",
                    progress: bool = False):
        """Embed strings. Returns float32 ``(N, dim)``, L2-normalised (or ``(emb, skipped)``
        with ``on_error="skip"``). Non-strings and empty strings are bad items; long strings are
        truncated to the context length. ``progress=True`` shows a tqdm bar on stderr."""
        self._check_on_error(on_error)
        batch_size = self._check_batch(batch_size)
        runner = self._runner("text")
        if isinstance(texts, str):
            raise InputError("embed_texts takes a list of strings, not one string: "
                             "use embed_texts([text]) or embed_text(text).")
        texts = list(texts)
        good_idx: list[int] = []
        skipped: list[Skipped] = []
        for i, t in enumerate(texts):
            reason = None
            if not isinstance(t, str):
                reason = f"not a string ({type(t).__name__})"
            elif not t.strip():
                reason = "empty text"
            else:
                reason = invalid_text_reason(t)  # unpaired surrogates (undecodable bytes)
            if reason is None:
                good_idx.append(i)
            elif on_error == "raise":
                raise InputError(f"text {i}: {reason}", index=i, item=repr(t)[:80], reason=reason)
            else:
                skipped.append(Skipped(i, repr(t)[:80], reason))
        out = np.empty((len(good_idx), self.dim), dtype=np.float32)
        tower = self.manifest.towers["text"]
        names = [s.name for s in tower.inputs]
        bar = _progress_bar(progress, len(good_idx), "texts", "text")
        for s in range(0, len(good_idx), batch_size):
            chunk = [texts[i] for i in good_idx[s:s + batch_size]]
            with self._tok_lock:
                ids, mask = self._get_tokenizer()(chunk)
            feeds = {}
            for name in names:
                if "mask" in name:
                    feeds[name] = mask
                else:
                    feeds[name] = ids
            out[s:s + len(chunk)] = self._run_split(runner, feeds)
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        result = _l2n(out)
        return (result, skipped) if on_error == "skip" else result

    def embed_text(self, text: str) -> np.ndarray:
        """One string -> float32 ``(dim,)``."""
        return self.embed_texts([text])[0]

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The ids and attention mask the text tower sees."""
        self._runner("text")
        with self._tok_lock:
            return self._get_tokenizer()(list(texts))

    # -- zero-shot classification --------------------------------------------------------------
    @property
    def logit_scale(self) -> float:
        """The manifest's ``extra.logit_scale`` when recorded, else 100 (CLIP's)."""
        from .zeroshot import DEFAULT_LOGIT_SCALE, manifest_logit_scale
        v = manifest_logit_scale(self.manifest)
        return DEFAULT_LOGIT_SCALE if v is None else v

    @property
    def duplicate_threshold(self) -> float:
        """The near-duplicate threshold measured for this model (manifest
        ``extra.duplicate_threshold``), else :data:`edgeclip.index.duplicates.DEFAULT_THRESHOLD`."""
        from .index.duplicates import DEFAULT_THRESHOLD, manifest_threshold
        v = manifest_threshold(self.manifest)
        return DEFAULT_THRESHOLD if v is None else v

    def classify(self, images: Iterable[Any], labels: Sequence[str] | str,
                 templates: Sequence[str] | None = None, batch_size: int = 32,
                 on_error: str = "raise", progress: bool = False):
        """Zero-shot classification: float32 ``(N, len(labels))`` probabilities (rows sum to 1),
        columns in ``labels`` order. Each label's prompts (``templates``, ``"{}"`` = the label;
        default :data:`edgeclip.zeroshot.DEFAULT_TEMPLATES`) are embedded, normalised, averaged
        and renormalised as in open_clip; logits are ``logit_scale * cosine``. ``labels`` may be
        a comma-separated string. With ``on_error="skip"`` returns ``(probs, skipped)``."""
        from .zeroshot import classifier_weights, parse_labels, probabilities
        self._check_on_error(on_error)
        labels = parse_labels(labels)
        weights = classifier_weights(self.embed_texts, labels, templates)
        res = self.embed_images(images, batch_size=batch_size, on_error=on_error,
                                progress=progress)
        emb, skipped = res if on_error == "skip" else (res, None)
        probs = probabilities(emb, weights, self.logit_scale).astype(np.float32)
        return (probs, skipped) if on_error == "skip" else probs
