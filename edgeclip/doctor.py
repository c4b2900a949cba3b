"""``edgeclip doctor``: what this machine has for edgeclip, and what ``auto`` picks and why.

Prints TensorRT's version (or why it is absent), the CUDA runtime and driver versions (through
cuda-python or pycuda), the GPU (name, compute capability, multiprocessors, memory) and on Jetson
the board (``/proc/device-tree/model``) and L4T release (``/etc/nv_tegra_release``), ONNX
Runtime's version and providers, which install matches the CUDA driver, and per tower of a model
(default: the built-in one) which backend ``auto`` picks, why, and what really runs. Needs no torch
and no GPU.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import click

from . import __version__

#: Jetson facts (read when present)
DEVICE_TREE_MODEL = "/proc/device-tree/model"
TEGRA_RELEASE = "/etc/nv_tegra_release"


def _read(path: str | Path, root: Path) -> str | None:
    p = root / str(path).lstrip("/")
    try:
        return p.read_bytes().replace(b"\0", b"").decode(errors="replace").strip() or None
    except OSError:
        return None


def tensorrt_facts() -> dict:
    from .backends.tensorrt import _import_tensorrt
    from .errors import BackendUnavailableError
    try:
        trt = _import_tensorrt()
    except BackendUnavailableError as e:
        return {"present": False, "reason": str(e)}
    return {"present": True, "version": str(trt.__version__),
            "location": str(getattr(trt, "__file__", "?"))}


def cuda_facts() -> dict:
    """CUDA through edgeclip's interface (cuda-python, else pycuda): versions, GPU."""
    from .backends import cuda as cu
    from .errors import BackendUnavailableError
    out: dict = {"present": False}
    try:
        c = cu.get_cuda()
    except BackendUnavailableError as e:
        out["reason"] = str(e)
        # versions through cuda-python work without a device: say what driver is there
        try:
            out["versions"] = cu.cuda_python_versions(cu._import_cudart())
            out["interface"] = "cuda-python"
        except ImportError:
            pass
        return out
    out.update({"present": True, "interface": c.name, "versions": c.versions()})
    try:
        major, minor = c.compute_capability(0)
        gpu = {"name": c.device_name(0), "compute_capability": f"{major}.{minor}",
               "devices": c.device_count()}
        props = c.device_props(0)
        if props.get("multiprocessor_count"):
            gpu["multiprocessors"] = props["multiprocessor_count"]
        if props.get("total_memory"):
            gpu["memory_mib"] = int(props["total_memory"]) >> 20
        out["gpu"] = gpu
    except BackendUnavailableError as e:
        out["gpu_error"] = str(e)
    return out


def ort_facts() -> dict:
    try:
        import onnxruntime as ort
    except ImportError as e:
        return {"present": False, "reason": str(e)}
    return {"present": True, "version": ort.__version__,
            "providers": list(ort.get_available_providers()), "device": ort.get_device()}


def jetson_facts(root: Path = Path("/")) -> dict:
    model = _read(DEVICE_TREE_MODEL, root)
    release = _read(TEGRA_RELEASE, root)
    out = {"jetson": bool(release) or bool(model and "jetson" in model.lower())}
    if model:
        out["model"] = model
    if release:
        out["l4t"] = release.splitlines()[0]
    return out


def install_advice(facts: dict) -> str:
    """Which TensorRT install fits the CUDA driver seen (or how to find out)."""
    jet = facts["board"]["jetson"]
    driver = ((facts["cuda"].get("versions") or {}).get("driver") or "")
    major = driver.split(".")[0] if driver[:1].isdigit() else None
    if jet:
        return ("Jetson: use JetPack's TensorRT (sudo apt install python3-libnvinfer; JetPack "
                "6.1/6.2 ships TensorRT 10.3 for Python 3.10) in a venv made with --system-site-packages, "
                "and pip install 'cuda-python<13' (JetPack 6 is CUDA 12); JetPack 7 is CUDA 13")
    if major == "12":
        return "CUDA 12 driver: pip install 'edgeclip[tensorrt-cu12]'"
    if major and major.isdigit() and int(major) >= 13:
        return "CUDA 13 driver: pip install 'edgeclip[tensorrt-cu13]'"
    return ("no NVIDIA driver seen: TensorRT needs an NVIDIA GPU; with one, install "
            "'edgeclip[tensorrt-cu12]' or 'edgeclip[tensorrt-cu13]' to match the driver's CUDA "
            "major (nvidia-smi shows it)")


def auto_facts(model: str | None) -> dict:
    """Per tower: what ``auto`` picks before trying (and why), and what really runs."""
    import logging

    from .backends import auto_choice, make_runner, reset_fallback_state
    from .embedder import _resolve_path
    from .errors import EdgeClipError
    from .manifest import load_bundle, resolve_bundle_path
    out: dict = {}
    try:
        bundle_dir, _ = resolve_bundle_path(_resolve_path(model))
        manifest, bundle_dir = load_bundle(bundle_dir)
    except EdgeClipError as e:
        return {"model": str(model or "built-in default"), "error": str(e)}
    out["model"] = str(bundle_dir)
    out["name"] = manifest.model_name
    towers = {}
    records: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("edgeclip")
    keep = _Keep(logging.WARNING)
    logger.addHandler(keep)
    saved = logger.propagate
    logger.propagate = False  # the warnings go into the report, not twice on stderr
    reset_fallback_state()
    try:
        for name in manifest.towers:
            row: dict = {}
            try:
                pick, why = auto_choice(manifest, name)
                row.update({"pick": pick, "why": why})
                runner = make_runner(manifest, bundle_dir, name, backend="auto")
                row.update({"runs": runner.backend, "precision": runner.precision,
                            "file": Path(runner.model.path).name})
                providers = getattr(runner, "providers", None)
                if providers:
                    row["providers"] = providers
                runner.close()
            except EdgeClipError as e:
                row["error"] = str(e)
            towers[name] = row
    finally:
        logger.removeHandler(keep)
        logger.propagate = saved
    out["towers"] = towers
    out["warnings"] = records
    return out


def collect(model: str | None = None, root: Path = Path("/")) -> dict:
    facts = {"edgeclip": __version__, "python": sys.version.split()[0],
             "machine": platform.machine(), "system": platform.system(),
             "board": jetson_facts(root), "tensorrt": tensorrt_facts(), "cuda": cuda_facts(),
             "onnxruntime": ort_facts()}
    facts["install"] = install_advice(facts)
    facts["auto"] = auto_facts(model)
    return facts


def format_facts(f: dict) -> str:
    lines = [f"edgeclip {f['edgeclip']}, Python {f['python']} on {f['system']} {f['machine']}"]
    b = f["board"]
    if b["jetson"]:
        lines.append(f"board: {b.get('model', 'Jetson')}; L4T: {b.get('l4t', 'unknown')}")
    t = f["tensorrt"]
    lines.append(f"TensorRT: {t['version']} ({t['location']})" if t["present"]
                 else f"TensorRT: absent ({t['reason']})")
    c = f["cuda"]
    v = c.get("versions") or {}
    ver = (f"runtime {v.get('runtime', '?')}, driver {v.get('driver', '?')}" if v else "")
    if c["present"]:
        lines.append(f"CUDA: {ver} via {c['interface']}")
        g = c.get("gpu")
        if g:
            extra = "".join([f", {g['multiprocessors']} SMs" if "multiprocessors" in g else "",
                             f", {g['memory_mib']} MiB" if "memory_mib" in g else ""])
            lines.append(f"GPU: {g['name']} (sm {g['compute_capability']}{extra}; "
                         f"{g['devices']} device(s))")
        elif c.get("gpu_error"):
            lines.append(f"GPU: error ({c['gpu_error']})")
    else:
        lines.append(f"CUDA: absent ({c['reason']})" + (f"; {c['interface']} reports {ver}"
                                                        if ver else ""))
        lines.append("GPU: none visible")
    o = f["onnxruntime"]
    lines.append(f"ONNX Runtime: {o['version']}, providers: {', '.join(o['providers'])}"
                 if o["present"] else f"ONNX Runtime: absent ({o['reason']})")
    lines.append(f"install: {f['install']}")
    a = f["auto"]
    if "error" in a:
        lines.append(f"auto for {a['model']}: cannot load ({a['error']})")
        return "\n".join(lines)
    lines.append(f"auto for {a['name']} ({a['model']}):")
    for tower, row in a["towers"].items():
        if "error" in row and "pick" not in row:
            lines.append(f"  {tower}: error: {row['error']}")
            continue
        head = f"  {tower}: auto -> {row['pick']}"
        if "runs" in row:
            head += (f" ({row['precision']}, {row['file']})" if row["runs"] == row["pick"] else
                     f"; really runs {row['runs']} ({row['precision']}, {row['file']})")
        if "error" in row:
            head += f"; fails: {row['error']}"
        lines.append(head)
        for w in row["why"]:
            lines.append(f"    because: {w}")
    for w in a.get("warnings", []):
        lines.append(f"  {w}")
    return "\n".join(lines)


@click.command("doctor")
@click.option("--model", default=None, help="Bundle to check `auto` on (default: the built-in "
                                             "model, or $EDGECLIP_MODEL).")
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
def doctor(model, as_json):
    """Show TensorRT, CUDA, GPU/board and ONNX Runtime here, and what `auto` picks and why."""
    facts = collect(model)
    click.echo(json.dumps(facts, indent=2) if as_json else format_facts(facts))


__all__ = ["doctor", "collect", "format_facts", "install_advice", "jetson_facts"]
