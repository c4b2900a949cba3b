"""The training loop: AdamW, warmup + cosine, gradient accumulation and clipping, AMP on CUDA,
JSONL metrics, checkpoints that resume exactly, DDP under ``torchrun`` (features all-gathered
for the contrastive and similarity edges).

Data order is a pure function of (seed, epoch): a permutation per epoch and one caption drawn
per image per epoch (``data.captions_per_image = K``: K distinct captions, for the ``clip`` preset
only; see :func:`.graph.check_captions_per_image`), so a resumed run sees the same batches as an
uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from ..errors import ConfigError
from .cache import pixel_batches, prefix_features, teacher_embeddings
from .checkpoint import save_dual_encoder
from .data import open_dataset
from .evaluate import evaluate_model
from .graph import ConaGraph, check_captions_per_image, needs_teacher, resolve_edges
from .models import build_student
from .teachers import load_teacher
from .tokens import load_tokenizer, tokenize


class _Dist:
    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.on = self.world > 1

    def init(self, device: str):
        if self.on and not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")

    def barrier(self):
        if self.on:
            dist.barrier()

    def gather(self, x: torch.Tensor, with_sizes: bool = False):
        """Concatenate ``x`` from every rank (rows may differ); the local part keeps its grad.
        ``with_sizes``: also return every rank's row count, in rank order."""
        if not self.on:
            return (x, [x.shape[0]]) if with_sizes else x
        n = torch.tensor([x.shape[0]], device=x.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(sizes, n)
        sizes = [int(s) for s in sizes]
        m = max(sizes)
        pad = torch.zeros((m - x.shape[0],) + x.shape[1:], dtype=x.dtype, device=x.device)
        buf = [torch.zeros((m,) + x.shape[1:], dtype=x.dtype, device=x.device)
               for _ in range(self.world)]
        dist.all_gather(buf, torch.cat([x.detach(), pad]))
        parts = [b[:s] for b, s in zip(buf, sizes)]
        parts[self.rank] = x
        out = torch.cat(parts)
        return (out, sizes) if with_sizes else out


class TrainModule(nn.Module):
    """Student + graph in one module (what DDP wraps); forward -> (total loss, parts)."""

    def __init__(self, student, graph, dist_: _Dist, anchor=None):
        super().__init__()
        self.student, self.graph, self.dist, self.anchor = student, graph, dist_, anchor

    def forward(self, image_in, from_prefix: bool, ids, mask, teacher_feats: dict, group=None):
        enc = self.student.image_encoder
        if self.anchor is None:
            si = enc.tail(image_in) if from_prefix else enc(image_in)
            st = self.student.text_encoder(ids, mask)
        else:  # the anchors read the features before the projections
            h = image_in if from_prefix else enc.prefix(image_in)
            pi = enc.pooled(h)
            si = torch.nn.functional.normalize(enc.proj(pi), dim=-1)
            txt = self.student.text_encoder
            pt = txt.pooled(ids, mask) if self.anchor.w_text else None
            st = (torch.nn.functional.normalize(txt.proj(pt), dim=-1) if pt is not None
                  else txt(ids, mask))
        si_all, n_images = self.dist.gather(si.float(), with_sizes=True)
        f = {"SI": si_all, "ST": self.dist.gather(st.float())}
        if group is not None:  # several captions per image: caption -> image row, global
            f["group"] = self.dist.gather(group + sum(n_images[:self.dist.rank]))
        for k, v in teacher_feats.items():
            f[k] = self.dist.gather(v)
        total, parts = self.graph(f)
        if self.anchor is not None:  # per rank: each rank anchors its own samples
            for k, v in self.anchor(h, pi, ids, mask, pt).items():
                parts[k] = v.detach()
                total = total + self.anchor.weight(k) * v
        return total, parts


def _check_teacher(tcfg: dict) -> None:
    """A missing checkpoint teacher: say that it is trained first, and where it was looked for."""
    from .checkpoint import is_checkpoint
    path = str(tcfg.get("path", ""))
    if (tcfg.get("type", "checkpoint") == "checkpoint" and not path.startswith("open_clip:")
            and not is_checkpoint(path)):
        raise ConfigError(
            f"teacher.path {tcfg.get('path')!r}: no teacher checkpoint there (relative paths are "
            f"relative to the working directory, {Path.cwd()}). Train the teacher first: "
            f"`edgeclip distill --config configs/teacher.toml` (it writes runs/teacher/best), "
            f"or pass --set teacher.path=DIR.")


def _note(msg: str) -> None:
    print(f"[distill] {msg}", file=sys.stderr, flush=True)


def _opt_state_fits(opt, state: dict, saved_groups: list) -> bool:
    """Whether a saved AdamW state (``state``: param index -> tensors) fits ``opt``'s parameters:
    same groups, sizes and shapes."""
    params = [p for g in opt.param_groups for p in g["params"]]
    if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in opt.param_groups]:
        return False
    for pid, st in state.items():
        if pid >= len(params):
            return False
        for name, v in st.items():
            if name != "step" and tuple(v.shape) != tuple(params[pid].shape):
                return False
    return True


def _lr_factor(step, total, warmup, min_ratio):
    if warmup and step < warmup:
        return (step + 1) / warmup
    prog = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))


def _param_groups(student, graph, lr, mult, wd):
    groups = {("head", True): [], ("head", False): [], ("body", True): [], ("body", False): []}
    for name, p in list(student.named_parameters()) + [("graph." + n, p) for n, p in
                                                        graph.named_parameters()]:
        if not p.requires_grad:
            continue
        head = name.startswith("graph.") or ".proj." in f".{name}" or name.endswith("proj.weight")
        groups[("head" if head else "body", p.ndim >= 2)].append(p)
    out = []
    for (kind, decay), ps in groups.items():
        if ps:
            out.append({"params": ps, "base_lr": lr * (1.0 if kind == "head" else mult),
                        "lr": lr, "weight_decay": wd if decay else 0.0})
    return out


def _device(name: str, d: _Dist) -> str:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and d.on:
        name = f"cuda:{d.local_rank}"
    return name


def _peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Trainer:
    """``resume_anyway``: continue ``run.out``'s checkpoint even when it was trained with another
    config (see :mod:`edgeclip.distill.resume`); without it such a resume is refused."""

    def __init__(self, cfg: dict, resume_anyway: bool = False):
        self.cfg = cfg
        self.d = _Dist()
        tr = cfg["train"]
        self.device = _device(tr["device"], self.d)
        self.d.init(self.device)
        if tr["threads"]:
            torch.set_num_threads(int(tr["threads"]))
        self.out = Path(cfg["run"]["out"])
        from .resume import check_resume
        self.config_changes = check_resume(cfg, resume_anyway)  # before anything is written
        self.seed = int(cfg["run"]["seed"])
        torch.manual_seed(self.seed)
        mc = cfg["model"]
        self.model = build_student(mc["name"], pretrained=bool(mc["pretrained"]),
                                   overrides=mc.get("config") or None)
        self.edges = resolve_edges(cfg["loss"])
        # anchors to the pretrained towers: checked before any cache is filled (built below, where
        # drawing their heads' random init keeps the recorded runs' random stream)
        from .anchor import PretrainedAnchor, anchor_config, check_anchor
        acfg = anchor_config(cfg["loss"])
        check_anchor(acfg, self.model.config, self.model, pretrained=bool(mc["pretrained"]))
        k = cfg["data"].get("captions_per_image", 1)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"data.captions_per_image must be a positive integer, got {k!r}")
        check_captions_per_image(self.edges, k)
        self.caps_per_image = k
        self.cache_dir = Path(cfg["data"]["cache_dir"])
        self.workers = int(cfg["data"]["workers"])
        from .stream import ShardStream, use_stream
        self.stream = None
        if use_stream(cfg["data"]):  # tar shards: streamed (webdataset), nothing cached
            if k > 1:
                raise ConfigError("data.captions_per_image > 1 needs an indexed dataset; "
                                  "streamed tar shards give one caption per sample: set "
                                  "data.stream = false or data.captions_per_image = 1")
            teacher = None
            if needs_teacher(self.edges):
                _check_teacher(cfg.get("teacher") or {})
                teacher = load_teacher(cfg["teacher"], self.device)
            self.stream = ShardStream(cfg, self.model, teacher, self.d, self.device)
            self.ds, self.tfeat, self.prefix, self.skipped = None, None, None, 0
            from .augment import setup_augmentation
            self.aug = setup_augmentation(cfg, self.model, None, None, None)  # refused if asked
            self.usable = np.arange(self.stream.epoch_samples)
            tdim = self.stream.tdim
        else:
            tdim = self._load_indexed(cfg)
        self.graph = ConaGraph(self.edges, self.model.embed_dim, tdim)
        self.model.to(self.device)
        self.graph.to(self.device)
        self.anchor = None
        if acfg["image"] or acfg["text"]:
            self.anchor = PretrainedAnchor(acfg, self.model.config, self.model,
                                           pretrained=bool(mc["pretrained"])).to(self.device)
        self.module = TrainModule(self.model, self.graph, self.d, self.anchor)
        self.ddp = (nn.parallel.DistributedDataParallel(
            self.module, device_ids=[self.d.local_rank] if self.device.startswith("cuda") else None)
            if self.d.on else self.module)
        self.opt = torch.optim.AdamW(
            _param_groups(self.model, self.graph, float(tr["lr"]), float(tr["backbone_lr_mult"]),
                          float(tr["weight_decay"])), betas=(0.9, 0.98), eps=1e-6)
        self.accum = max(1, int(tr["grad_accum"]))
        self.local_b = int(tr["batch_size"]) // self.d.world
        if self.local_b < 2:
            raise ConfigError(f"train.batch_size {tr['batch_size']} is too small for "
                              f"{self.d.world} process(es)")
        per_rank = len(self.usable) // self.d.world
        self.mb_per_epoch = per_rank // self.local_b
        if self.mb_per_epoch < 1:
            what = self.ds.description if self.ds is not None else f"{self.stream.files[0]}..."
            raise ConfigError(f"{what}: {len(self.usable)} usable images, fewer "
                              f"than one batch of {tr['batch_size']}")
        self.total = int(tr["epochs"]) * self.mb_per_epoch // self.accum
        if tr["max_steps"]:
            self.total = min(self.total, int(tr["max_steps"])) if self.total else int(tr["max_steps"])
        self.step = 0
        self.best = -1.0
        self._epoch_cache: dict = {}
        self.eval_ds = None

    def _load_indexed(self, cfg: dict):
        """CSV / Karpathy (and tar shards with ``data.stream = false``): an indexed dataset, with
        the teacher's embeddings and the frozen prefix cached once. Returns the teacher's dim."""
        tr = cfg["train"]
        self.ds = open_dataset(cfg["data"], cfg["data"]["train_split"])
        ok = np.ones(len(self.ds), bool)
        self.tfeat, tdim = None, None
        if needs_teacher(self.edges):
            if not cfg.get("teacher"):
                raise ConfigError("the loss edges need a teacher: set [teacher] type/path, or use "
                                  "loss.preset='clip'")
            _check_teacher(cfg["teacher"])
            self.tfeat = self._rank0_first(lambda: teacher_embeddings(
                load_teacher(cfg["teacher"], self.device), self.ds, self.cache_dir,
                workers=self.workers))
            ok &= self.tfeat["ok"]
            tdim = self.tfeat["image"].shape[1]
        enc = self.model.image_encoder
        self.prefix = None
        if enc.freeze_blocks and tr["cache_prefix"]:
            self.prefix = self._rank0_first(lambda: prefix_features(
                enc, self.model.preprocess, self.ds, self.cache_dir, workers=self.workers))
            ok &= self.prefix["ok"]
        from .augment import setup_augmentation  # augmented views of the prefix (data.augment_*)
        self.aug = self._rank0_first(lambda: setup_augmentation(
            cfg, self.model, self.ds, self.cache_dir, self.prefix, self.workers))
        self.skipped = int((~ok).sum())
        self.usable = np.nonzero(ok)[0]
        sub = int(cfg["data"].get("train_images", 0) or 0)  # pilots: a fixed random subset
        if sub:
            self.usable = np.sort(np.random.default_rng(0).permutation(self.usable)[:sub])
        tok = load_tokenizer(self.model.tokenizer_file, self.model.context_length)
        ids, mask = tokenize(tok, self.ds.captions)
        self.ids, self.mask = torch.from_numpy(ids), torch.from_numpy(mask)
        from .mpnet_tower import cached_text_inputs  # frozen text towers: cached features
        self.ids, self.mask = self._rank0_first(lambda: cached_text_inputs(
            self.model.text_encoder, self.ids, self.mask, self.cache_dir))
        return tdim

    # -- helpers -----------------------------------------------------------------------------
    def _rank0_first(self, fn):
        if self.d.rank == 0:
            res = fn()
            self.d.barrier()
            return res
        self.d.barrier()
        return fn()

    def _epoch_plan(self, epoch: int):
        if epoch not in self._epoch_cache:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            perm = torch.randperm(len(self.usable), generator=g).numpy()
            local = perm[self.d.rank::self.d.world][:self.mb_per_epoch * self.local_b]
            rng = np.random.default_rng([self.seed, epoch])
            n_caps = np.diff(self.ds.caption_offsets)
            if self.caps_per_image == 1:
                pick = self.ds.caption_offsets[:-1] + (rng.random(len(n_caps)) * n_caps).astype(
                    np.int64)
            else:  # (images, K): K distinct captions per image in random order, -1 past its own
                owner = np.repeat(np.arange(len(n_caps)), n_caps)
                order = np.lexsort((rng.random(len(owner)), owner))  # by image, then random
                rank = np.arange(len(owner)) - self.ds.caption_offsets[:-1][owner]
                keep = rank < self.caps_per_image
                pick = -np.ones((len(n_caps), self.caps_per_image), np.int64)
                pick[owner[keep], rank[keep]] = order[keep]
            self._epoch_cache = {epoch: (self.usable[local], pick)}
        return self._epoch_cache[epoch]

    def _batch(self, micro: int):
        if self.stream is not None:
            return self.stream.batch(micro, self.mb_per_epoch, self.local_b)
        epoch, pos = divmod(micro, self.mb_per_epoch)
        imgs, pick = self._epoch_plan(epoch)
        idx = imgs[pos * self.local_b:(pos + 1) * self.local_b]
        if self.prefix is not None:
            order = np.argsort(idx)
            feats = np.empty((len(idx),) + self.prefix["features"].shape[1:], np.float16)
            feats[order] = (self.prefix["features"][idx[order]] if self.aug is None
                            else self.aug.rows(idx[order], epoch, self.seed))
            image_in, from_prefix = torch.from_numpy(feats).float(), True
        else:
            got, pix, _bad = next(iter(pixel_batches(self.ds, self.model.preprocess, len(idx),
                                                     self.workers, indices=idx)))
            idx, image_in, from_prefix = np.asarray(got, np.int64), pix, False
        caps, group = pick[idx], None
        if caps.ndim == 2:  # several captions per image: flatten, remember each one's image row
            valid = caps >= 0
            group = torch.from_numpy(np.nonzero(valid)[0]).to(self.device)
            caps = caps[valid]
        t = {}
        if self.tfeat is not None:
            t = {"TI": torch.from_numpy(self.tfeat["image"][idx]).to(self.device),
                 "TT": torch.from_numpy(self.tfeat["text"][caps]).to(self.device)}
        return (image_in.to(self.device), from_prefix, self.ids[caps].to(self.device),
                self.mask[caps].to(self.device), t, epoch, group)

    # -- state -------------------------------------------------------------------------------
    def save(self, name: str, with_state: bool = True) -> Path:
        final = self.out / name
        tmp = self.out / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_dual_encoder(self.model, tmp)
        if with_state:
            tensors = {f"graph.{k}": v.detach().cpu().contiguous()
                       for k, v in self.graph.state_dict().items()}
            sd = self.opt.state_dict()
            for pid, st in sd["state"].items():
                for k, v in st.items():
                    tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous()
            tensors["rng.torch"] = torch.get_rng_state()
            if torch.cuda.is_available():
                tensors["rng.cuda"] = torch.cuda.get_rng_state()
            save_file(tensors, str(tmp / "train_state.safetensors"))
            meta = {"step": self.step, "total_steps": self.total, "best": self.best,
                    "param_groups": sd["param_groups"], "config": self.cfg}
            (tmp / "train_state.json").write_text(json.dumps(meta, indent=1, default=str))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return final

    def load(self, path: Path) -> None:
        from safetensors.torch import load_file as lf
        try:
            self.model.load_state_dict(lf(str(path / "model.safetensors")))
        except RuntimeError:
            keys = [k for k, _, _ in self.config_changes if k.startswith("model.")]
            raise ConfigError(f"{path}: the checkpoint's student weights do not fit this config's "
                              f"model{' (' + ', '.join(keys) + ' changed)' if keys else ''}; it "
                              f"cannot be resumed. Pass --restart to start the run over.") from None
        meta = json.loads((path / "train_state.json").read_text())
        t = load_file(str(path / "train_state.safetensors"))
        graph_sd = {k[6:]: v for k, v in t.items() if k.startswith("graph.")}
        lenient = bool(self.config_changes)  # --resume-anyway under a changed config
        if lenient:  # keep the loss-graph weights that still fit; new ones start fresh
            own = self.graph.state_dict()
            graph_sd = {k: v for k, v in graph_sd.items() if k in own and own[k].shape == v.shape}
            self.graph.load_state_dict(graph_sd, strict=False)
        else:
            self.graph.load_state_dict(graph_sd)
        state: dict = {}
        for k, v in t.items():
            if k.startswith("opt."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        fresh = [{k: g[k] for k in ("base_lr", "lr", "weight_decay")}
                 for g in self.opt.param_groups]
        if not lenient or _opt_state_fits(self.opt, state, meta["param_groups"]):
            self.opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
            for g, f in zip(self.opt.param_groups, fresh):  # this config's hyperparameters
                g.update(f)
        else:
            _note(f"resume: the optimizer state does not fit the new config's parameters; "
                  f"AdamW moments start fresh at step {int(meta['step'])}")
        torch.set_rng_state(t["rng.torch"])
        if "rng.cuda" in t and torch.cuda.is_available():
            torch.cuda.set_rng_state(t["rng.cuda"])
        self.step, self.best = int(meta["step"]), float(meta["best"])

    def _after_resume(self) -> None:
        from .resume import archive_config, format_changes, trim_metrics
        dropped = trim_metrics(self.out, self.step)
        msg = f"resuming {self.out} from step {self.step}"
        if dropped:
            msg += f" (dropped {dropped} metrics record(s) logged after that checkpoint)"
        if self.config_changes:
            kept = archive_config(self.out, self.step, self.cfg)
            msg += (f" under a changed config ({format_changes(self.config_changes)}); the old "
                    f"config is kept as {kept.name if kept else '(none)'}")
        _note(msg)

    # -- loop --------------------------------------------------------------------------------
    def _log(self, rec: dict) -> None:
        if self.d.rank == 0:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")

    def _evaluate(self, epoch: int) -> dict | None:
        split = self.cfg["data"].get("eval_split")
        if not split or self.d.rank != 0:
            return None
        if self.eval_ds is None:
            self.eval_ds = open_dataset(self.cfg["data"], split)
            from .mpnet_tower import prime_text_cache
            prime_text_cache(self.model, self.eval_ds.captions, self.cache_dir)
            enc = self.model.image_encoder
            self.eval_prefix = (prefix_features(enc, self.model.preprocess, self.eval_ds,
                                                self.cache_dir, workers=self.workers)
                                if self.prefix is not None else None)
        m = evaluate_model(self.model, self.eval_ds, self.device, prefix=self.eval_prefix,
                           workers=self.workers)
        self.model.train()
        self._log({"step": self.step, "epoch": epoch, "eval": split, **m})
        if m["mean_recall"] > self.best:
            self.best = m["mean_recall"]
            self.save("best", with_state=False)
        return m

    def fit(self) -> dict:
        tr = self.cfg["train"]
        self.out.mkdir(parents=True, exist_ok=True)
        ck = self.out / "checkpoint"
        if self.cfg["run"].get("resume", True) and (ck / "train_state.json").is_file():
            self.load(ck)
            if self.d.rank == 0:
                self._after_resume()
        elif self.d.rank == 0:
            shutil.rmtree(ck, ignore_errors=True)  # a restart: an old checkpoint must not return
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
            (self.out / "config.json").write_text(json.dumps(self.cfg, indent=1, default=str))
        self.model.train()
        cuda = self.device.startswith("cuda")
        amp = bool(tr["amp"]) and cuda
        log_every, ck_every = int(tr["log_every"]), int(tr["checkpoint_every"])
        stop_at = int(tr["stop_at_step"])
        ev_every = int(tr["eval_every_epochs"])
        steps_per_epoch = max(1, self.mb_per_epoch // self.accum)
        bar = tqdm(total=self.total, initial=self.step, disable=self.d.rank != 0,
                   desc=self.model.name, dynamic_ncols=True)
        t0, n_pairs, last = time.time(), 0, {}
        result: dict = {"skipped_images": self.skipped}
        while self.step < self.total:
            factor = _lr_factor(self.step, self.total, int(tr["warmup_steps"]),
                                float(tr["min_lr_ratio"]))
            for g in self.opt.param_groups:
                g["lr"] = g["base_lr"] * factor
            parts_sum: dict = {}
            loss_sum = 0.0
            for a in range(self.accum):
                image_in, from_prefix, ids, mask, tf, epoch, group = self._batch(
                    self.step * self.accum + a)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    loss, parts = self.ddp(image_in, from_prefix, ids, mask, tf, group)
                (loss / self.accum).backward()
                loss_sum += float(loss.detach()) / self.accum
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + float(v) / self.accum
                n_pairs += ids.shape[0] * self.d.world
            if tr["clip_grad"]:
                torch.nn.utils.clip_grad_norm_(
                    [p for g in self.opt.param_groups for p in g["params"]], float(tr["clip_grad"]))
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.step += 1
            bar.update(1)
            bar.set_postfix({(k if k.startswith("anchor/") else k.split("/")[0]): f"{v:.3f}"
                             for k, v in parts_sum.items()}
                            | {"loss": f"{loss_sum:.3f}"}, refresh=False)
            if self.step % log_every == 0 or self.step == self.total:
                dt = time.time() - t0
                last = {"step": self.step, "epoch": epoch, "lr": self.opt.param_groups[0]["lr"],
                        "loss": loss_sum, **{f"loss/{k}": v for k, v in parts_sum.items()},
                        "pairs_per_s": n_pairs / max(dt, 1e-9), "peak_mem_mb": _peak_mb(self.device)}
                self._log(last)
            if self.d.rank == 0 and ck_every and self.step % ck_every == 0:
                self.save("checkpoint")
            if ev_every and self.step % (steps_per_epoch * ev_every) == 0:
                self._evaluate(epoch)
            if stop_at and self.step == stop_at and self.step < self.total:
                if self.d.rank == 0:
                    self.save("checkpoint")
                bar.close()
                result.update(stopped_at=self.step)
                self.d.barrier()
                return result
        bar.close()
        if self.d.rank == 0:
            self.save("checkpoint")
            self.save("final", with_state=False)
        self.d.barrier()
        result.update(last, steps=self.step, best_mean_recall=self.best, out=str(self.out),
                      seconds=time.time() - t0)
        return result


def train(cfg: dict, resume_anyway: bool = False) -> dict:
    return Trainer(cfg, resume_anyway=resume_anyway).fit()
