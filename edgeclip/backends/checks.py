"""Checks that a tower's manifest entry agrees with itself and with the graph it loads.

Run where a runner is created (:func:`edgeclip.backends.make_runner`), so they hold whether towers
load eagerly or lazily, and by ``edgeclip info``. A disagreement is a :class:`BundleError` naming
the manifest field and both values, raised before the first embedding (which would otherwise fail
with a raw ONNX Runtime error, or, worse, give vectors of another model).

Three levels:

* :func:`check_manifest_tower`: the manifest against itself (``embed_dim`` vs the output shape,
  the image preprocessing size vs the image input, the tokenizer's context length vs the text
  inputs). Needs no graph; runs for every backend, TensorRT included.
* :func:`check_io_specs`: a graph's input/output names, dtypes and shapes vs the manifest (batch
  axis dynamic, every fixed axis equal). ONNX Runtime sessions feed it their I/O; TensorRT engines
  have the same check in :func:`edgeclip.backends.tensorrt.check_engine_io`.
* :func:`check_metadata`: the copy of the manifest that ``edgeclip export`` writes into every ONNX
  graph's ``metadata_props`` (key ``edgeclip.manifest``, tower in ``edgeclip.tower``) vs the
  manifest: a graph of another model (another export) with the same inputs and outputs is caught.
  Graphs without that metadata (made by other tools) get the I/O checks only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import BundleError
from ..manifest import MANIFEST_NAME, ONNX_METADATA_KEY, Manifest, TensorSpec, TowerSpec

TOWER_METADATA_KEY = "edgeclip.tower"

#: manifest dtype -> graph dtypes accepted for it. Outputs: the runner returns float32 whatever the
#: graph gives (an fp16 graph may keep float16 outputs).
OUTPUT_DTYPES_OK = {"float32": ("float32", "float16")}

#: Top-level manifest fields that identify the model (compared with the graph's metadata); the
#: tower's own fields are compared too. Not compared: ``models``/``files`` (an engine built later
#: adds to them), ``max_batch``, ``tools`` and ``extra`` (bookkeeping).
IDENTITY_FIELDS = ("model_name", "embed_dim", "created")
TOWER_IDENTITY_FIELDS = ("inputs", "outputs", "preprocess", "tokenizer")

_FIX = "The graph and manifest.json disagree; re-export the bundle with `edgeclip export`."


def _mpath(bundle_dir: Path | None) -> str:
    return str(Path(bundle_dir) / MANIFEST_NAME) if bundle_dir is not None else MANIFEST_NAME


def check_manifest_tower(manifest: Manifest, tower_name: str,
                         bundle_dir: Path | None = None) -> None:
    """BundleError when the manifest's tower entry contradicts the manifest's other fields."""
    where = _mpath(bundle_dir)
    tower = manifest.tower(tower_name)
    fix = "The manifest was edited or is damaged; re-export the bundle with `edgeclip export`."
    for i, out in enumerate(tower.outputs[:1]):
        last = out.shape[-1] if out.shape else None
        if isinstance(last, int) and last != manifest.embed_dim:
            raise BundleError(f"{where}: embed_dim is {manifest.embed_dim} but "
                              f"towers.{tower_name}.outputs[{i}] '{out.name}' has shape "
                              f"{out.shape} (dim {last}). {fix}")
    if tower.preprocess is not None:
        size = [int(s) for s in tower.preprocess.size]
        for i, spec in enumerate(tower.inputs):
            hw = _spatial(spec)
            if hw is not None and hw != size:
                raise BundleError(f"{where}: towers.{tower_name}.preprocess.size is {size} but "
                                  f"towers.{tower_name}.inputs[{i}] '{spec.name}' has shape "
                                  f"{spec.shape} ({hw[0]}x{hw[1]} images). {fix}")
    if tower.tokenizer is not None:
        ctx = int(tower.tokenizer.context_length)
        for i, spec in enumerate(tower.inputs):
            seq = [d for d in spec.shape if d != "batch"]
            if len(seq) == 1 and isinstance(seq[0], int) and seq[0] != ctx:
                raise BundleError(f"{where}: towers.{tower_name}.tokenizer.context_length is "
                                  f"{ctx} but towers.{tower_name}.inputs[{i}] '{spec.name}' has "
                                  f"shape {spec.shape} (length {seq[0]}). {fix}")


def _spatial(spec: TensorSpec) -> list[int] | None:
    """[H, W] of an NCHW (or NHWC) image input, None when it is not one."""
    dims = [d for d in spec.shape if d != "batch"]
    if len(dims) != 3 or not all(isinstance(d, int) for d in dims):
        return None
    if dims[0] in (1, 3):
        return [dims[1], dims[2]]
    if dims[2] in (1, 3):
        return [dims[0], dims[1]]
    return None


def check_io_specs(graph_inputs: dict[str, tuple[str, list]],
                   graph_outputs: dict[str, tuple[str, list]], tower: TowerSpec, path: Path,
                   tower_name: str = "", what: str = "graph") -> None:
    """BundleError when a graph's I/O disagrees with the manifest.

    ``graph_inputs``/``graph_outputs``: name -> (dtype name, shape), shape axes ints for fixed
    dims and anything else (str, None, -1) for dynamic ones.
    """
    field = f"towers.{tower_name}" if tower_name else "the tower"
    want_in = {t.name: t for t in tower.inputs}
    if set(graph_inputs) != set(want_in):
        raise BundleError(f"{path}: {what} inputs {sorted(graph_inputs)} != manifest inputs "
                          f"{sorted(want_in)} ({field}.inputs). {_FIX}")
    for spec in tower.outputs:
        if spec.name not in graph_outputs:
            raise BundleError(f"{path}: {what} has no output '{spec.name}' named in the manifest's "
                              f"{field}.outputs ({what} outputs: {sorted(graph_outputs)}). {_FIX}")
    pairs = [("inputs", i, s, graph_inputs[s.name], {}) for i, s in enumerate(tower.inputs)]
    pairs += [("outputs", i, s, graph_outputs[s.name], OUTPUT_DTYPES_OK)
              for i, s in enumerate(tower.outputs)]
    for kind, i, spec, (dtype, gshape), ok in pairs:
        entry = f"{field}.{kind}[{i}] '{spec.name}'"
        if dtype not in ok.get(spec.dtype, (spec.dtype,)):
            raise BundleError(f"{path}: {entry} is {dtype} in the {what}, {spec.dtype} in the "
                              f"manifest. {_FIX}")
        gshape = list(gshape)
        if len(gshape) != len(spec.shape):
            raise BundleError(f"{path}: {entry} has shape {spec.shape} in the manifest, "
                              f"{_show(gshape)} in the {what} (rank {len(spec.shape)} vs "
                              f"{len(gshape)}). {_FIX}")
        for g, m in zip(gshape, spec.shape):
            g_fixed = isinstance(g, int) and g >= 0
            if isinstance(m, int) and g_fixed and g != m:
                raise BundleError(f"{path}: {entry} has shape {spec.shape} in the manifest, "
                                  f"{_show(gshape)} in the {what}. {_FIX}")
            if m == "batch" and g_fixed and g != 1:
                raise BundleError(f"{path}: {entry} has a fixed batch of {g} in the {what}; the "
                                  f"manifest says the batch axis is dynamic "
                                  f"({spec.shape}). {_FIX}")


def _show(shape: list) -> list:
    return [d if isinstance(d, int) and d >= 0 else "batch" if d == "batch" else "?"
            for d in shape]


def _first_difference(want: Any, got: Any, path: str) -> tuple[str, Any, Any] | None:
    """The first ``(field, want, got)`` that differs. Keys only one side has are not compared:
    a manifest field added in a later edgeclip (with its default) is not a different model."""
    if isinstance(want, dict) and isinstance(got, dict):
        for k in sorted(set(want) & set(got), key=str):
            d = _first_difference(want.get(k), got.get(k), f"{path}.{k}")
            if d is not None:
                return d
        return None
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        for i, (a, b) in enumerate(zip(want, got)):
            d = _first_difference(a, b, f"{path}[{i}]")
            if d is not None:
                return d
        return None
    return None if want == got else (path, want, got)


def _short(v: Any) -> str:
    s = json.dumps(v, sort_keys=True) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 120 else s[:117] + "..."


def check_metadata(props: dict[str, str], manifest: Manifest, tower_name: str,
                   path: Path) -> None:
    """BundleError when the graph's embedded manifest copy (``metadata_props``) describes another
    model or tower than ``manifest``. No copy (a graph from another tool): nothing to compare."""
    tag = props.get(TOWER_METADATA_KEY)
    if tag is not None and tag != tower_name:
        raise BundleError(f"{path}: this graph is the {tag} tower (its metadata "
                          f"'{TOWER_METADATA_KEY}'), but the manifest lists it under "
                          f"towers.{tower_name}. {_FIX}")
    raw = props.get(ONNX_METADATA_KEY)
    if raw is None:
        return
    try:
        mirror = json.loads(raw)
    except (TypeError, ValueError):
        raise BundleError(f"{path}: the graph's '{ONNX_METADATA_KEY}' metadata is not valid JSON. "
                          f"The file is damaged; re-export the bundle.") from None
    if not isinstance(mirror, dict):
        raise BundleError(f"{path}: the graph's '{ONNX_METADATA_KEY}' metadata is not a JSON "
                          f"object. The file is damaged; re-export the bundle.")
    mine = manifest.to_dict()
    fix = ("It belongs to another export than this manifest.json: copy the whole bundle directory "
           "it came from, or re-export the bundle with `edgeclip export`.")
    for key in IDENTITY_FIELDS:
        if key in mirror and mirror[key] != mine.get(key):
            raise BundleError(f"{path}: {key} is {_short(mine.get(key))} in manifest.json, "
                              f"{_short(mirror[key])} in the graph's metadata. {fix}")
    g_tower = (mirror.get("towers") or {}).get(tower_name)
    if not isinstance(g_tower, dict):
        have = sorted(mirror.get("towers") or {})
        raise BundleError(f"{path}: the graph's metadata has no {tower_name} tower (it has "
                          f"{', '.join(have) or 'none'}). {fix}")
    m_tower = mine["towers"][tower_name]
    for key in TOWER_IDENTITY_FIELDS:
        if key not in g_tower or key not in m_tower:
            continue
        d = _first_difference(m_tower.get(key), g_tower.get(key), f"towers.{tower_name}.{key}")
        if d is not None:
            field, want, got = d
            raise BundleError(f"{path}: {field} is {_short(want)} in manifest.json, {_short(got)} "
                              f"in the graph's metadata. {fix}")


def ort_io(session) -> tuple[dict, dict]:
    """(inputs, outputs) of an ONNX Runtime session as name -> (dtype name, shape)."""
    from .onnxruntime import _ORT_DTYPES
    ins = {i.name: (_ORT_DTYPES.get(i.type, i.type), list(i.shape)) for i in session.get_inputs()}
    outs = {o.name: (_ORT_DTYPES.get(o.type, o.type), list(o.shape))
            for o in session.get_outputs()}
    return ins, outs


def check_session(session, manifest: Manifest | None, tower: TowerSpec, tower_name: str,
                  path: Path) -> None:
    """All graph checks for an ONNX Runtime session of ``tower``."""
    ins, outs = ort_io(session)
    check_io_specs(ins, outs, tower, path, tower_name)
    if manifest is not None:
        props = dict(session.get_modelmeta().custom_metadata_map)
        check_metadata(props, manifest, tower_name, path)


def check_bundle_graphs(manifest: Manifest, bundle_dir: Path,
                        towers: tuple[str, ...] | None = None) -> int:
    """Open every ONNX graph of the bundle (no optimisation: fast) and run all checks; return the
    number of graphs checked. TensorRT engines are checked when a runner loads them."""
    import onnxruntime as ort

    from ..manifest import bundle_file
    n = 0
    for name in towers or tuple(manifest.towers):
        check_manifest_tower(manifest, name, bundle_dir)
        tower = manifest.tower(name)
        for i, m in enumerate(tower.models):
            if m.format != "onnx":
                continue
            path = bundle_file(bundle_dir, m.path, f"towers.{name}.models[{i}].path")
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            opts.intra_op_num_threads = 1
            opts.log_severity_level = 3
            try:
                sess = ort.InferenceSession(str(path), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime's own Fail/InvalidGraph types
                raise BundleError(f"{path}: ONNX Runtime cannot load this graph "
                                  f"({type(e).__name__}: {str(e).splitlines()[0][:300]}). The "
                                  f"file is corrupt or was made for another target; re-export "
                                  f"the bundle.") from None
            check_session(sess, manifest, tower, name, path)
            n += 1
    return n


__all__ = ["check_manifest_tower", "check_io_specs", "check_metadata", "check_session",
           "check_bundle_graphs", "TOWER_METADATA_KEY", "OUTPUT_DTYPES_OK"]
