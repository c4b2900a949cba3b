"""MODEL arguments -> benchmark targets: one (model, tower, backend, precision) each.

A MODEL is a bundle directory (or its ``manifest.json``), a model file inside a bundle (``.onnx``,
``.plan``, ``.engine``: only that file's tower and precision), or a bare ``.onnx`` without a
manifest: it then runs directly on ONNX Runtime with its declared input shapes (first axis =
batch; other symbolic axes get 224 for images, 77 for token ids), its tower guessed from its
inputs and its precision from its file name (``*.int8.onnx``...), else ``unknown``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BackendUnavailableError, BundleError, ConfigError
from ..paths import expand_path
from ..manifest import (ENGINE_SUFFIXES, MANIFEST_NAME, PRECISIONS, ModelFile, TensorSpec,
                        TowerSpec, load_bundle, read_manifest, resolve_bundle_path)

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8",
               "tensor(bool)": "bool"}
DEFAULT_IMAGE_SIDE = 224
DEFAULT_CONTEXT = 77


@dataclass
class Target:
    """One thing to time. ``spec()`` is its JSON form, enough to reopen it in another process."""

    label: str
    model_index: int
    path: str  # the MODEL argument
    kind: str  # "bundle" | "onnx"
    tower: str  # "image" | "text"
    backend: str  # concrete backend name
    precision: str
    model_file: str  # absolute path of the graph or engine
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch: int | None = None  # None: any batch
    fixed_batch: int | None = None  # a graph with a fixed batch axis
    threads: int | None = None
    bundle_dir: str | None = None
    preprocess: dict | None = None  # PreprocessCfg dict (bundles)
    tokenizer: dict | None = None  # {"file": abs path, "context_length": n} (bundles)
    model_name: str = ""
    identity: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple:
        return (self.label, self.tower, self.backend, self.precision)

    def supports_batch(self, b: int) -> str | None:
        """None when batch ``b`` can run, else the reason it cannot."""
        if self.fixed_batch is not None and b != self.fixed_batch:
            return f"the graph has a fixed batch of {self.fixed_batch}"
        if self.max_batch is not None and b > self.max_batch:
            return f"above the bundle's max_batch {self.max_batch}"
        return None

    def spec(self) -> dict:
        return {"label": self.label, "path": self.path, "kind": self.kind, "tower": self.tower,
                "backend": self.backend, "precision": self.precision,
                "model_file": self.model_file, "threads": self.threads,
                "bundle_dir": self.bundle_dir, "max_batch": self.max_batch,
                "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs]}

    def open(self):
        """Create the runner (loads the graph or engine)."""
        return open_runner(self.spec())


def open_runner(spec: dict):
    """Build a :class:`~edgeclip.backends.base.Runner` from ``Target.spec()``."""
    model_file = Path(spec["model_file"])
    if spec["kind"] == "bundle":
        from ..backends import make_runner
        bundle_dir = Path(spec["bundle_dir"])
        manifest = read_manifest(bundle_dir)  # hashes were checked when the target was made
        try:
            return make_runner(manifest, bundle_dir, spec["tower"], backend=spec["backend"],
                               precision=spec["precision"], model_path=model_file,
                               threads=spec["threads"])
        except ImportError as e:
            raise BackendUnavailableError(f"backend {spec['backend']} cannot run here: {e}. "
                                          f"Install: pip install 'edgeclip[tensorrt-cu12]' or "
                                          f"'edgeclip[tensorrt-cu13]' (see `edgeclip doctor`)."
                                          ) from None
    from ..backends.onnxruntime import OnnxRuntimeRunner
    tower = TowerSpec(inputs=[TensorSpec.from_dict(t, str(model_file)) for t in spec["inputs"]],
                      outputs=[TensorSpec.from_dict(t, str(model_file)) for t in spec["outputs"]],
                      max_batch=spec["max_batch"] or 1 << 30)
    model = ModelFile(path=model_file.name, format="onnx", precision=spec["precision"])
    return OnnxRuntimeRunner(tower, model, model_file, backend=spec["backend"],
                             threads=spec["threads"])


def _ort_providers() -> list[str]:
    import onnxruntime as ort
    return list(ort.get_available_providers())


def _candidates(tower: TowerSpec, backend: str) -> list[ModelFile]:
    if backend == "tensorrt":
        return [m for m in tower.models if m.format == "tensorrt"]
    onnx = [m for m in tower.models if m.format == "onnx"]
    want = ("any", "cpu") if backend == "onnxruntime-cpu" else ("any", "tensorrt")
    return [m for m in onnx if m.target in want] or onnx


def _bundle_targets(arg: str, index: int, towers: list[str], backend: str,
                    precisions: list[str] | None, threads: int | None) -> list[Target]:
    from ..backends import resolve_backend
    bundle_dir, model_path = resolve_bundle_path(arg)
    manifest, bundle_dir = load_bundle(bundle_dir)
    identity = manifest.identity()
    out = []
    for tower_name in towers:
        if tower_name not in manifest.towers:
            continue
        tower = manifest.towers[tower_name]
        if model_path is not None:
            own = [m for m in tower.models if Path(m.path).name == model_path.name]
            if not own:
                continue  # the file belongs to the other tower
        concrete = resolve_backend(manifest, tower_name, backend, model_path)
        models = own if model_path is not None else _candidates(tower, concrete)
        seen: dict[str, ModelFile] = {}
        for m in models:
            seen.setdefault(m.precision, m)
        for prec in [p for p in PRECISIONS if p in seen]:
            if precisions is not None and prec not in precisions:
                continue
            m = seen[prec]
            tok = None
            if tower.tokenizer is not None:
                tok = {"file": str(bundle_dir / tower.tokenizer.file),
                       "context_length": tower.tokenizer.context_length}
            out.append(Target(
                label=manifest.model_name, model_index=index, path=arg, kind="bundle",
                tower=tower_name, backend=concrete, precision=prec,
                model_file=str((bundle_dir / m.path).resolve()), inputs=list(tower.inputs),
                outputs=list(tower.outputs), max_batch=tower.max_batch, threads=threads,
                bundle_dir=str(bundle_dir.resolve()),
                preprocess=tower.preprocess.to_dict() if tower.preprocess else None,
                tokenizer=tok, model_name=manifest.model_name, identity=identity))
    return out


def precision_from_name(path: Path) -> str:
    tokens = set(re.split(r"[._\-]", path.name.lower()))
    for p in PRECISIONS:
        if p in tokens:
            return p
    if tokens & {"quant", "quantized", "qdq", "u8s8", "s8s8"}:
        return "int8"
    return "unknown"


def describe_onnx(path: Path) -> tuple[list[TensorSpec], list[TensorSpec], int | None, str]:
    """Inputs/outputs of a bare ONNX graph as TensorSpecs, its fixed batch (or None) and tower."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:
        raise BundleError(f"{path}: ONNX Runtime cannot load this graph ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}).") from None
    nodes = sess.get_inputs()
    image = any(_ORT_DTYPES.get(n.type, "").startswith("float") and len(n.shape) == 4
                for n in nodes)
    text = any(_ORT_DTYPES.get(n.type, "").startswith("int") for n in nodes)
    if not (image or text):
        raise ConfigError(f"{path}: cannot tell which tower this graph is (inputs: "
                          f"{[(n.name, n.type, n.shape) for n in nodes]}); edgeclip-bench times "
                          f"image graphs (one float NCHW input) and text graphs (int token ids).")
    tower = "image" if image else "text"
    fixed = None

    def spec(node, is_input: bool) -> TensorSpec:
        nonlocal fixed
        dtype = _ORT_DTYPES.get(node.type)
        if dtype is None:
            raise ConfigError(f"{path}: tensor '{node.name}' has type {node.type}, which "
                              f"edgeclip-bench cannot feed.")
        shape: list = []
        for i, ax in enumerate(node.shape):
            if i == 0:
                if isinstance(ax, int) and ax > 0:
                    if is_input:
                        fixed = ax
                    shape.append(ax)
                else:
                    shape.append("batch")
            elif isinstance(ax, int) and ax > 0:
                shape.append(ax)
            elif len(node.shape) == 4:
                shape.append(3 if i == 1 else DEFAULT_IMAGE_SIDE)
            else:
                shape.append(DEFAULT_CONTEXT)
        return TensorSpec(node.name, dtype, shape)

    inputs = [spec(n, True) for n in nodes]
    outputs = [spec(n, False) for n in sess.get_outputs()]
    del sess
    return inputs, outputs, fixed, tower


def _onnx_targets(arg: str, index: int, towers: list[str], backend: str,
                  precisions: list[str] | None, threads: int | None) -> list[Target]:
    path = Path(arg).expanduser().resolve()
    inputs, outputs, fixed, tower = describe_onnx(path)
    if tower not in towers:
        return []
    prec = precision_from_name(path)
    if precisions is not None and prec not in precisions:
        return []
    if backend in ("auto",):
        backend = ("onnxruntime-cuda" if "CUDAExecutionProvider" in _ort_providers()
                   else "onnxruntime-cpu")
    elif backend == "onnxruntime":
        backend = "onnxruntime-cpu"
    elif backend == "tensorrt":
        raise BackendUnavailableError(f"{arg}: a bare .onnx runs on ONNX Runtime; build a TensorRT "
                                      f"engine inside a bundle (`edgeclip build-engine`) and pass "
                                      f"that, or use --backend onnxruntime-tensorrt.")
    label = path.name[:-len(".onnx")] if path.name.endswith(".onnx") else path.stem
    return [Target(label=label, model_index=index, path=arg, kind="onnx", tower=tower,
                   backend=backend, precision=prec, model_file=str(path), inputs=inputs,
                   outputs=outputs, max_batch=None, fixed_batch=fixed, threads=threads,
                   model_name=label)]


def resolve_targets(models: list[str], towers: list[str], backend: str = "auto",
                    precisions: list[str] | None = None,
                    threads: int | None = None) -> list[Target]:
    """All targets of all MODEL arguments, in argument order. Labels are made unique."""
    from ..backends import BACKENDS
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend '{backend}' (known: {', '.join(BACKENDS)}).")
    targets: list[Target] = []
    for index, arg in enumerate(models):
        arg = str(expand_path(arg))
        p = Path(arg)
        bare = (p.suffix == ".onnx" and p.is_file()
                and not (p.parent / MANIFEST_NAME).is_file())
        if bare:
            found = _onnx_targets(arg, index, towers, backend, precisions, threads)
        elif (p.suffix in ENGINE_SUFFIXES and p.is_file()
              and not (p.parent / MANIFEST_NAME).is_file()):
            raise BundleError(f"{arg}: a TensorRT engine needs the manifest.json of its bundle "
                              f"beside it (build it with `edgeclip build-engine BUNDLE`).")
        else:
            found = _bundle_targets(arg, index, towers, backend, precisions, threads)
        if not found:
            want = ", ".join(precisions) if precisions else "any"
            raise ConfigError(f"{arg}: nothing to time for tower {'/'.join(towers)} at precision "
                              f"{want} on backend {backend}. Check --tower and --precision.")
        targets.extend(found)
    _label_by_path(targets)
    return targets


def _path_label(arg: str) -> str:
    """A MODEL argument as a short path: relative to the working directory when under it."""
    import os
    p = Path(arg).resolve()
    try:
        rel = p.relative_to(Path.cwd().resolve())
        return str(rel) if str(rel) != "." else p.name
    except ValueError:
        return str(p).replace(str(Path.home()), "~", 1) if str(p).startswith(
            str(Path.home()) + os.sep) else str(p)


def _label_by_path(targets: list[Target]) -> None:
    """Models that share a name (two exports of one architecture, two copies of a bundle) are
    labelled by their paths instead; the same path given twice gets ``#2``, ``#3``..."""
    by_label: dict[str, list[int]] = {}
    for t in targets:
        ids = by_label.setdefault(t.label, [])
        if t.model_index not in ids:
            ids.append(t.model_index)
    rename: dict[int, str] = {}
    for label, ids in by_label.items():
        if len(ids) < 2:
            continue
        seen: dict[str, int] = {}
        for i in ids:
            path = _path_label(next(t.path for t in targets if t.model_index == i))
            seen[path] = seen.get(path, 0) + 1
            rename[i] = path if seen[path] == 1 else f"{path}#{seen[path]}"
    for t in targets:
        if t.model_index in rename:
            t.label = rename[t.model_index]
