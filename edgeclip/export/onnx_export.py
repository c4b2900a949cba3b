"""One tower of a dual encoder -> one float32 ONNX graph (checked, simplified, L2-normalised).

Uses the TorchScript exporter (``dynamo=False``): it needs no onnxscript, handles the dynamic
batch of BERT-style attention masks reliably and exports LayerNorm as one opset-17
``LayerNormalization`` node, which the fp16 block list and TensorRT both rely on.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ExportValidationError
from ..manifest import ONNX_METADATA_KEY, TensorSpec

TOWER_METADATA_KEY = "edgeclip.tower"
MIN_OPSET = 17

IO_NAMES = {
    "image": (["pixel_values"], ["image_embeds"]),
    "text": (["input_ids", "attention_mask"], ["text_embeds"]),
}


class _ImageTower(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values):
        return F.normalize(self.encoder(pixel_values).float(), dim=-1)


class _TextTower(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        return F.normalize(self.encoder(input_ids, attention_mask).float(), dim=-1)


def tower_module(model: nn.Module, tower: str) -> nn.Module:
    """The exported module of one tower: the encoder followed by L2 normalisation."""
    if tower == "image":
        return _ImageTower(model.image_encoder).eval()
    if tower == "text":
        return _TextTower(model.text_encoder).eval()
    raise ConfigError(f"unknown tower '{tower}' (known: image, text).")


def example_inputs(model: nn.Module, tower: str, batch: int = 2) -> tuple[torch.Tensor, ...]:
    if tower == "image":
        h, w = model.preprocess.size
        return (torch.randn(batch, 3, int(h), int(w)),)
    length = int(model.context_length)
    ids = torch.randint(1, 100, (batch, length), dtype=torch.int64)
    mask = torch.ones(batch, length, dtype=torch.int64)
    mask[-1, length // 2:] = 0  # a padded row, so the mask path is traced for real
    return ids, mask


def tensor_specs(model: nn.Module, tower: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph inputs/outputs as recorded in the manifest."""
    dim = int(model.embed_dim)
    if tower == "image":
        h, w = model.preprocess.size
        return ([TensorSpec("pixel_values", "float32", ["batch", 3, int(h), int(w)])],
                [TensorSpec("image_embeds", "float32", ["batch", dim])])
    length = int(model.context_length)
    return ([TensorSpec("input_ids", "int64", ["batch", length]),
             TensorSpec("attention_mask", "int64", ["batch", length])],
            [TensorSpec("text_embeds", "float32", ["batch", dim])])


def export_tower(model: nn.Module, tower: str, path: str | Path, opset: int = MIN_OPSET,
                 simplify: bool = True) -> Path:
    """Export, check and simplify one tower to ``path`` (float32 ONNX)."""
    if opset < MIN_OPSET:
        raise ConfigError(f"opset {opset} is too old: edgeclip exports opset >= {MIN_OPSET} "
                          f"(LayerNormalization). Set opset = {MIN_OPSET} or higher.")
    path = Path(path)
    module = tower_module(model, tower)
    for m in module.modules():  # e.g. a frozen text encoder loaded on first use: not in the trace
        if hasattr(m, "prepare_export"):
            m.prepare_export()
    inputs, outputs = IO_NAMES[tower]
    dyn = {name: {0: "batch"} for name in inputs + outputs}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation/tracer notes
        torch.onnx.export(module, example_inputs(model, tower), str(path), dynamo=False,
                          input_names=inputs, output_names=outputs, dynamic_axes=dyn,
                          opset_version=opset, do_constant_folding=True)
    proto = onnx.load(str(path))
    if simplify:
        import onnxslim
        proto = onnxslim.slim(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportValidationError(f"{path}: the exported {tower} graph fails onnx.checker: "
                                    f"{str(e).splitlines()[0]}") from None
    _check_io(proto, tower, path)
    onnx.save(proto, str(path))
    return path


def _check_io(proto: onnx.ModelProto, tower: str, path: Path) -> None:
    inputs, outputs = IO_NAMES[tower]
    got_in = [i.name for i in proto.graph.input]
    got_out = [o.name for o in proto.graph.output]
    if got_in != inputs or got_out != outputs:
        raise ExportValidationError(f"{path}: graph I/O {got_in} -> {got_out}, expected {inputs} "
                                    f"-> {outputs}. Does the {tower} encoder use all its inputs?")
    for vi in list(proto.graph.input) + list(proto.graph.output):
        dim0 = vi.type.tensor_type.shape.dim[0]
        if dim0.dim_param != "batch":
            raise ExportValidationError(f"{path}: '{vi.name}' lost its dynamic batch axis.")


def set_metadata(path: str | Path, mirror: dict, tower: str) -> None:
    """Mirror the manifest (without checksums) into the ONNX file's ``metadata_props``."""
    proto = onnx.load(str(path))
    keep = [p for p in proto.metadata_props if p.key not in (ONNX_METADATA_KEY, TOWER_METADATA_KEY)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in keep},
                                        ONNX_METADATA_KEY: json.dumps(mirror, sort_keys=True),
                                        TOWER_METADATA_KEY: tower})
    onnx.save(proto, str(path))
