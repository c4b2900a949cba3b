"""``edgeclip build-engine``: TensorRT ``.plan`` engines from a bundle's ONNX graphs, on the device.

FP16 engines come from the bundle's fp16 ONNX graph, INT8 engines from its explicit Q/DQ graph
exported with ``--target tensorrt`` (symmetric int8). TensorRT >= 10 builds them as strongly typed
networks (precision from the graph); TensorRT 8.6 (JetPack 6.0) gets the FP16/INT8 builder flags
on the same graphs. No implicit INT8 calibrator (removed in TensorRT 11). Each engine is added to
``manifest.json`` with the TensorRT version, GPU name, compute capability, multiprocessor count
and total memory it needs. INT8 source graphs are Q/DQ-linted first; the result goes into the
bundle's ``report.json`` (``build_engine`` entry).

Imports without tensorrt; TensorRT and CUDA are imported only when an engine is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import click

from ..backends import tensorrt as trt_backend
from ..errors import BundleError, ConfigError
from ..manifest import Manifest, ModelFile, TensorSpec, TowerSpec, load_bundle, write_manifest
from .profiles import load_profile

ENGINE_PRECISIONS = ("fp16", "int8")
DEFAULT_TIMING_CACHE = "tensorrt.timing.cache"


@dataclass
class BuildSettings:
    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int | None = None  # None: the tower's max_batch
    workspace_mib: int = 1024
    optimization_level: int | None = None  # None: TensorRT's default (3)
    timing_cache: str = DEFAULT_TIMING_CACHE  # relative to the bundle, or absolute
    streams: int = 1  # identical optimisation profiles = concurrent execution contexts


def resolve_profile_path(profile: str) -> Path:
    """A profile path, or a bare NAME looked up as ``export/targets/NAME.toml``."""
    p = Path(profile).expanduser()
    if p.is_file() or p.suffix == ".toml" or os.sep in profile:
        return p
    return Path("export") / "targets" / f"{profile}.toml"


def settings_from(profile: str | None, precision: str | None, workspace: int | None,
                  timing_cache: str | None, streams: int = 1) -> BuildSettings:
    """Merge a target profile with the command's options (options win)."""
    s = BuildSettings(streams=streams)
    if profile is not None:
        prof = load_profile(resolve_profile_path(profile))
        s.min_batch, s.opt_batch, s.max_batch = prof.batch_min, prof.batch_opt, prof.batch_max
        s.workspace_mib = prof.workspace_mib
        s.optimization_level = prof.builder_optimization_level
        s.timing_cache = prof.timing_cache or DEFAULT_TIMING_CACHE
        engine_prec = [p for p in prof.precisions if p in ENGINE_PRECISIONS]
        if precision is None and engine_prec:
            precision = engine_prec[0]
    s.precision = precision or "fp16"
    if s.precision not in ENGINE_PRECISIONS:
        raise ConfigError(f"precision '{s.precision}' cannot be built into an engine (use "
                          f"{' or '.join(ENGINE_PRECISIONS)}).")
    if workspace is not None:
        s.workspace_mib = workspace
    if timing_cache is not None:
        s.timing_cache = timing_cache
    if s.workspace_mib < 1:
        raise ConfigError(f"--workspace must be >= 1 MiB, got {s.workspace_mib}.")
    if s.streams < 1:
        raise ConfigError(f"--streams must be >= 1, got {s.streams}.")
    return s


def batch_range(s: BuildSettings, tower: TowerSpec, where: str) -> tuple[int, int, int]:
    hi = s.max_batch if s.max_batch is not None else tower.max_batch
    lo = s.min_batch
    opt = min(max(s.opt_batch, lo), hi)
    if not (1 <= lo <= opt <= hi):
        raise ConfigError(f"{where}: batch profile must satisfy 1 <= min <= opt <= max, got "
                          f"{lo}/{s.opt_batch}/{hi}.")
    return lo, opt, hi


def profile_shapes(spec: TensorSpec, lo: int, opt: int, hi: int) -> tuple[tuple, tuple, tuple]:
    """(min, opt, max) shapes of an input: its batch axis gets the batch range."""
    if spec.batch_axis is None:
        fixed = tuple(int(d) for d in spec.shape)
        return fixed, fixed, fixed
    shapes = []
    for b in (lo, opt, hi):
        shapes.append(tuple(b if d == "batch" else int(d) for d in spec.shape))
    return shapes[0], shapes[1], shapes[2]


def pick_source(tower: TowerSpec, tower_name: str, precision: str, bundle_dir: Path) -> ModelFile:
    """The ONNX graph an engine of ``precision`` is built from."""
    onnx = [m for m in tower.models if m.format == "onnx" and m.precision == precision]
    if precision == "int8":
        good = [m for m in onnx if m.target == "tensorrt"]
        if not good:
            extra = (" (its int8 graph targets the CPU: unsigned activations, which TensorRT's "
                     "explicit quantization does not take)" if onnx else "")
            raise BundleError(f"{bundle_dir}: the {tower_name} tower has no int8 graph made for "
                              f"TensorRT{extra}. Export one with `edgeclip export ... --precision "
                              f"int8 --target tensorrt`.")
        return good[0]
    good = sorted(onnx, key=lambda m: {"tensorrt": 0, "any": 1}.get(m.target, 2))
    if not good:
        raise BundleError(f"{bundle_dir}: the {tower_name} tower has no {precision} ONNX graph. "
                          f"Export it with `edgeclip export ... --precision {precision}`.")
    return good[0]


def engine_entry(tower_name: str, precision: str, facts: dict, lo: int, opt: int, hi: int,
                 tensorrt_version: str, source: str, streams: int = 1) -> ModelFile:
    from .. import __version__
    extra = {"tensorrt_version": tensorrt_version, "gpu_name": facts["gpu_name"],
             "compute_capability": facts["compute_capability"]}
    for key in ("multiprocessor_count", "total_memory_mib"):  # tell an AGX Orin from an Orin Nano
        if facts.get(key):
            extra[key] = int(facts[key])
    extra.update({"min_batch": lo, "opt_batch": opt, "max_batch": hi, "profiles": streams,
                  "source": source})
    return ModelFile(
        path=f"{tower_name}.{precision}.plan", format="tensorrt", precision=precision,
        target="tensorrt", tools={"tensorrt": tensorrt_version, "edgeclip": __version__},
        extra=extra)


def add_engine(manifest: Manifest, tower_name: str, entry: ModelFile) -> None:
    """Put ``entry`` in the tower's models, replacing an engine at the same path."""
    tower = manifest.tower(tower_name)
    tower.models = [m for m in tower.models if m.path != entry.path] + [entry]


def timing_cache_path(bundle_dir: Path, s: BuildSettings) -> Path:
    p = Path(s.timing_cache).expanduser()
    return p if p.is_absolute() else bundle_dir / p


# == the part that needs TensorRT and a GPU ==================================================
def build_one(trt, bundle_dir: Path, tower: TowerSpec, tower_name: str, source: ModelFile,
              s: BuildSettings, cache_file: Path, log=click.echo) -> tuple[bytes, tuple]:
    """Parse the ONNX graph and build a serialized engine; returns (plan, (min, opt, max))."""
    where = f"{bundle_dir}: {tower_name} tower"
    lo, opt, hi = batch_range(s, tower, where)
    logger = trt_backend.trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(trt_backend.network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    onnx_path = bundle_dir / source.path
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse this graph "
                          f"({errors[:600]}). Re-export it with `edgeclip export --target tensorrt`.")
    specs = {t.name: t for t in tower.inputs}
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if set(names) != set(specs):
        raise BundleError(f"{onnx_path}: graph inputs {sorted(names)} != manifest inputs "
                          f"{sorted(specs)}. Re-export the bundle.")
    quant = (source.extra or {}).get("quantization") or {}
    if trt_backend.trt_major(trt) < 10 and quant.get("float") == "float16":
        raise BundleError(f"{onnx_path}: this INT8 graph computes in float16 with float16 Q/DQ "
                          f"scales (opset 19), which TensorRT {trt.__version__} cannot parse; "
                          f"TensorRT >= 10 (JetPack >= 6.1) can. For TensorRT 8.6 export with "
                          f"`float = \"fp32\"` under [quantization] in the target profile.")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(s.workspace_mib) << 20)
    for flag in trt_backend.builder_precision_flags(trt, source.precision):
        config.set_flag(flag)
    if s.optimization_level is not None and hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = int(s.optimization_level)
    for _ in range(s.streams):
        profile = builder.create_optimization_profile()
        for name in names:  # every input with a batch axis gets the range (input_ids, mask, ...)
            profile.set_shape(name, *profile_shapes(specs[name], lo, opt, hi))
        if config.add_optimization_profile(profile) < 0:  # -1: TensorRT rejected the profile
            raise BundleError(f"{where}: TensorRT rejected the optimisation profile (batch "
                              f"{lo}/{opt}/{hi} for inputs {', '.join(names)}; see its log "
                              f"above). Check the profile's [batch] min <= opt <= max.")
    cache = _load_timing_cache(config, cache_file, log)
    log(f"building {tower_name} {source.precision} engine from {source.path} "
        f"(batch {lo}/{opt}/{hi}, workspace {s.workspace_mib} MiB, TensorRT {trt.__version__})…")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BundleError(f"{where}: TensorRT could not build the engine (see its log above). On "
                          f"small boards lower --workspace, close other GPU programs or add swap.")
    _save_timing_cache(cache, cache_file, log)
    return bytes(memoryview(plan)), (lo, opt, hi)


def _load_timing_cache(config, path: Path, log):
    """The timing cache from ``path``; a fresh one when the file is absent, corrupt or foreign
    (``create_timing_cache`` returns None or raises, or ``set_timing_cache`` refuses it)."""
    data = b""
    try:
        if path.is_file():
            data = path.read_bytes()
    except OSError as e:
        log(f"warning: cannot read the timing cache {path} ({e.strerror or e}): starting afresh.")
    cache = None
    if data:
        try:
            cache = config.create_timing_cache(data)
        except Exception:  # TensorRT versions differ in how they reject a bad blob
            cache = None
        if cache is not None and not config.set_timing_cache(cache, False):
            cache = None
        if cache is None:
            log(f"timing cache {path} is corrupt or was made by another GPU or TensorRT version: "
                f"starting afresh.")
    if cache is None:
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, False):
            log("warning: TensorRT gave no timing cache: building without one.")
            return None
    return cache


def _save_timing_cache(cache, path: Path, log) -> None:
    if cache is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(bytes(memoryview(cache.serialize())))
        os.replace(tmp, path)
    except OSError as e:
        log(f"warning: cannot save the timing cache to {path} ({e.strerror or e}).")


def build_engines(bundle: str | os.PathLike, settings: BuildSettings,
                  towers: tuple[str, ...] = ("image", "text"), log=click.echo) -> list[Path]:
    """Build one engine per tower and record them in the bundle's manifest."""
    manifest, bundle_dir = load_bundle(bundle)
    todo = [t for t in towers if t in manifest.towers]
    if not todo:
        raise BundleError(f"{bundle_dir}: the bundle has none of the towers {', '.join(towers)} "
                          f"(it has {', '.join(manifest.towers)}).")
    sources = {t: pick_source(manifest.tower(t), t, settings.precision, bundle_dir) for t in todo}
    for t in todo:
        batch_range(settings, manifest.tower(t), f"{bundle_dir}: {t} tower")
    lint = lint_sources(bundle_dir, sources, log)
    trt = trt_backend._import_tensorrt()
    from ..backends.cuda import get_cuda
    facts = trt_backend.device_facts(get_cuda())
    cache_file = timing_cache_path(bundle_dir, settings)
    written = []
    for t in todo:
        plan, (lo, opt, hi) = build_one(trt, bundle_dir, manifest.tower(t), t, sources[t],
                                        settings, cache_file, log)
        entry = engine_entry(t, settings.precision, facts, lo, opt, hi, trt.__version__,
                             sources[t].path, settings.streams)
        out = bundle_dir / entry.path
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_bytes(plan)
        os.replace(tmp, out)
        add_engine(manifest, t, entry)
        record_build(bundle_dir, manifest, t, entry, lint)
        write_manifest(manifest, bundle_dir)
        written.append(out)
        log(f"wrote {out} ({len(plan) / 2**20:.1f} MiB) for {facts['gpu_name']} "
            f"(sm {facts['compute_capability']})")
    return written


def lint_sources(bundle_dir: Path, sources: dict[str, ModelFile], log=click.echo) -> dict | None:
    """Q/DQ lint of the INT8 source graphs (None for fp16 builds). Findings are printed; the
    build goes on (TensorRT's parser is the judge), the result goes into report.json."""
    graphs = {t: m.path for t, m in sources.items() if m.precision == "int8"}
    if not graphs:
        return None
    try:
        from .qdq_lint import lint_report
    except ImportError as e:  # the lint needs onnx (edgeclip[export]); boards may lack it
        log(f"warning: Q/DQ lint skipped ({e}); pip install onnx to run it.")
        return {"passed": None, "skipped": f"onnx is not installed ({e})"}
    quant = {t: (m.extra or {}).get("quantization") for t, m in sources.items()}
    result = lint_report(bundle_dir, graphs, quant)
    for f in result["findings"]:
        log(f"Q/DQ lint: {f}")
    log(f"Q/DQ lint: {'passed' if result['passed'] else 'FAILED'} for "
        f"{', '.join(sorted(graphs.values()))}")
    return result


def record_build(bundle_dir: Path, manifest: Manifest, tower: str, entry: ModelFile,
                 lint: dict | None) -> None:
    """Add the engine (and the source's Q/DQ lint) to the bundle's report.json (made when the
    bundle has none; listed in the manifest's files so its checksum is kept)."""
    import json
    path = bundle_dir / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        report = {}
    builds = report.setdefault("build_engine", {})
    item = {"precision": entry.precision, "source": entry.extra.get("source"),
            "tensorrt": entry.extra.get("tensorrt_version"),
            "gpu": entry.extra.get("gpu_name"),
            "compute_capability": entry.extra.get("compute_capability")}
    if lint is not None:
        src = entry.extra.get("source")
        graph = (lint.get("graphs") or {}).get(src)
        item["qdq_lint"] = {"passed": lint.get("passed") if graph is None else
                            not graph["findings"], **({"findings": graph["findings"],
                                                       "float": graph["float"]} if graph else
                                                      {k: v for k, v in lint.items()
                                                       if k != "graphs"})}
    builds[entry.path] = item
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    manifest.files.setdefault("report.json", "")


@click.command("build-engine")
@click.argument("bundle", type=click.Path(path_type=str))
@click.option("--precision", type=click.Choice(ENGINE_PRECISIONS), default=None,
              help="fp16 (from the fp16 graph) or int8 (from the Q/DQ graph). Default: the "
                   "profile's first engine precision, else fp16.")
@click.option("--profile", default=None,
              help="Target profile: export/targets/NAME.toml or a path (batch min/opt/max, "
                   "workspace, timing cache).")
@click.option("--tower", type=click.Choice(["image", "text", "both"]), default="both",
              show_default=True)
@click.option("--workspace", type=int, default=None, help="Workspace limit in MiB (default 1024).")
@click.option("--timing-cache", default=None,
              help=f"Timing cache file, reused across builds (default: BUNDLE/{DEFAULT_TIMING_CACHE}).")
@click.option("--streams", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Identical optimisation profiles, so this many threads run the engine at once.")
def build_engine(bundle, precision, profile, tower, workspace, timing_cache, streams):
    """Build TensorRT engines for BUNDLE on this device (run it on the target board)."""
    settings = settings_from(profile, precision, workspace, timing_cache, streams)
    towers = ("image", "text") if tower == "both" else (tower,)
    build_engines(bundle, settings, towers)


__all__ = ["build_engine", "build_engines", "BuildSettings", "settings_from", "pick_source",
           "profile_shapes", "batch_range", "engine_entry", "add_engine", "resolve_profile_path"]
