"""Names of the TensorRT Python API, and the TensorRT names edgeclip's code uses.

* :func:`stub_names`: ``Class``, ``Class.member`` (nested) from a ``.pyi`` of the tensorrt-stubs
  package (a tolerant line parser: the generated stubs are not always valid Python).
* :func:`binary_names`: the identifiers that are whole strings in a compiled bindings module
  (``tensorrt_bindings/tensorrt.so`` of the tensorrt-cu13-bindings wheel): pybind11 registers
  every class, method, property and enum value under its name as a C string, so these include
  all API names (plus some noise, which can only make the check more lenient).
* :func:`used_names`: by AST, every ``trt.X[.Y]`` in the code, and every attribute read or
  called on a variable that holds a TensorRT object (names mapped in :data:`RECEIVERS`), also
  through ``getattr``/``hasattr`` with a constant name.

Derive the checked-in lists (what tests/backends/trt10_names.txt and trt11_names.txt hold):

    pip download --no-deps tensorrt-stubs==10.13.0.35.1 tensorrt-cu13-bindings==11.4.0.106 -d w
    (cd w && unzip -oq 'tensorrt_stubs-*.whl' && unzip -oq 'tensorrt_cu13_bindings-*.whl')
    python tests/backends/trt_names.py 10 w > tests/backends/trt10_names.txt
    python tests/backends/trt_names.py 11 w > tests/backends/trt11_names.txt
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: variable / attribute names that hold TensorRT objects in edgeclip's code -> their class
RECEIVERS = {
    "runtime": "Runtime", "_runtime": "Runtime", "builder": "Builder",
    "network": "INetworkDefinition", "parser": "OnnxParser", "config": "IBuilderConfig",
    "profile": "IOptimizationProfile", "engine": "ICudaEngine", "_engine": "ICudaEngine",
    "context": "IExecutionContext", "ctx": "IExecutionContext", "cache": "ITimingCache",
    "flag_enum": "NetworkDefinitionCreationFlag",
}
#: files whose receivers of those names are TensorRT objects
TRT_FILES = ("edgeclip/backends/tensorrt.py", "edgeclip/export/tensorrt_build.py")
#: names used only on the TensorRT 8.6 code path (guarded by trt_major(trt) < 10): absent in 11
PRE10_ONLY = {"NetworkDefinitionCreationFlag.EXPLICIT_BATCH", "BuilderFlag.FP16",
              "BuilderFlag.INT8"}

API_NAME = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*|[A-Z][A-Z0-9]*(_[A-Z0-9]+)*|"
                      r"I?[A-Z][a-z0-9]+([A-Z][a-z0-9]*)*|__[a-z0-9_]+__")
_CLASS = re.compile(r"^(\s*)class (\w+)")
_DEF = re.compile(r"^(\s*)def (\w+)")
_ATTR = re.compile(r"^(\s*)(\w+)\s*[:=]")


def stub_names(text: str) -> set[str]:
    names: set[str] = set()
    stack: list[tuple[int, str]] = []  # (indent, class name)
    in_doc = False
    for line in text.splitlines():
        if line.count('"""') % 2 == 1:
            in_doc = not in_doc
            continue
        if in_doc or not line.strip() or line.lstrip().startswith(("#", "@")):
            continue
        indent = len(line) - len(line.lstrip())
        while stack and indent <= stack[-1][0]:
            stack.pop()
        prefix = ".".join(c for _, c in stack)
        m = _CLASS.match(line)
        if m:
            names.add(f"{prefix}.{m.group(2)}" if prefix else m.group(2))
            stack.append((indent, m.group(2)))
            continue
        m = _DEF.match(line) or _ATTR.match(line)
        if m and not line.lstrip().startswith(("return", "import", "from")):
            names.add(f"{prefix}.{m.group(2)}" if prefix else m.group(2))
    return names


def stub_dir_names(root: Path) -> set[str]:
    """Names of an unpacked tensorrt-stubs wheel (or installed package) at ``root``."""
    names = stub_names((root / "tensorrt_bindings" / "tensorrt.pyi").read_text())
    init = root / "tensorrt" / "__init__.pyi"
    if init.is_file():
        text = init.read_text()
        names |= {f"tensorrt.{n}" for n in re.findall(r"^from \S+ import (\w+)", text, re.M)}
        names |= {f"tensorrt.{n}" for n in re.findall(r"^(\w+)\s*[:=]", text, re.M)}
        names |= {f"tensorrt.{n}" for n in re.findall(r"^def (\w+)", text, re.M)}
    return names


def binary_names(so: Path) -> set[str]:
    """Whole NUL-terminated identifier strings, plus their tails that are names too: the linker
    merges a string into the end of a longer one ("INPUT" lives in "CONDITIONAL_INPUT\\0",
    "Builder" in "...IBuilder\\0"), so a tail counts when it starts at a word boundary (after
    "_", or a CamelCase capital) or appears as a word elsewhere in the module (docstrings)."""
    data = so.read_bytes()
    ident = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
    whole = {m.decode() for m in re.findall(rb"(?<=\x00)([A-Za-z_][A-Za-z0-9_]{1,80})(?=\x00)",
                                            data)}
    words = {m.decode() for m in re.findall(rb"[A-Za-z_][A-Za-z0-9_]{1,80}", data)}
    names = set(whole)
    for m in re.findall(rb"([A-Za-z0-9_]{3,80})(?=\x00)", data):
        e = m.decode()
        for i in range(1, len(e) - 1):
            tail = e[i:]
            if not ident.fullmatch(tail):
                continue
            boundary = e[i - 1] == "_" or (e[i].isupper() and (e[i - 1].islower() or (
                e[i + 1].islower())))
            if boundary or tail in words:
                names.add(tail)
    # API-shaped names only (snake_case, UPPER_CASE, CamelCase, dunders): drops C++ symbols
    return {n for n in names if API_NAME.fullmatch(n) and not n.startswith("_Z")}


def used_names(files: list[Path] | None = None) -> dict[str, set[str]]:
    """``{"module": {"Logger.WARNING", "__version__", ...}, "members": {"ICudaEngine.
    num_io_tensors", ...}}``: what the code reads from the tensorrt module and from TensorRT
    objects."""
    module: set[str] = set()
    members: set[str] = set()
    if files is None:
        files = [REPO / f for f in TRT_FILES]
        for d in ("edgeclip", "benchmarks"):
            for p in (REPO / d).rglob("*.py"):
                if p not in files and "trt." in p.read_text(errors="replace"):
                    files.append(p)
    for path in files:
        tree = ast.parse(path.read_text())
        is_trt_file = str(path.relative_to(REPO)) in TRT_FILES if path.is_relative_to(REPO) \
            else True
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                chain = _chain(node)
                if chain and chain[0] == "trt" and len(chain) > 1:
                    module.add(".".join(chain[1:3]))
                elif is_trt_file and isinstance(node.value, (ast.Name, ast.Attribute)):
                    recv = node.value.attr if isinstance(node.value, ast.Attribute) else \
                        node.value.id
                    if recv in RECEIVERS:
                        members.add(f"{RECEIVERS[recv]}.{node.attr}")
            elif (is_trt_file and isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2
                  and isinstance(node.args[1], ast.Constant)
                  and isinstance(node.args[1].value, str)):
                target = node.args[0]
                recv = target.attr if isinstance(target, ast.Attribute) else \
                    getattr(target, "id", None)
                if recv in RECEIVERS:
                    members.add(f"{RECEIVERS[recv]}.{node.args[1].value}")
                elif recv == "trt":
                    module.add(node.args[1].value)
    return {"module": module, "members": members}


def _chain(node: ast.AST) -> list[str] | None:
    out = []
    while isinstance(node, ast.Attribute):
        out.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        out.append(node.id)
        return out[::-1]
    return None


def read_list(path: Path) -> set[str]:
    return {ln.strip() for ln in path.read_text().splitlines()
            if ln.strip() and not ln.startswith("#")}


HEADER = {
    "10": "# TensorRT 10.x Python API names (`Class`, `Class.member`, `tensorrt.NAME`), one per line.\n"
          "# Derived from tensorrt-stubs 10.13.0.35.1 (tensorrt_bindings/tensorrt.pyi and\n"
          "# tensorrt/__init__.pyi of its wheel) with tests/backends/trt_names.py:stub_dir_names;\n"
          "# command in that file's docstring. The package pins tensorrt==10.13.0.35, which does not\n"
          "# install without NVIDIA's index, so the list is checked in.\n",
    "11": "# TensorRT 11.x Python API names (flat: class, method, property and enum-value names), one per\n"
          "# line. Derived from tensorrt-cu13-bindings 11.4.0.106 (tensorrt_bindings/tensorrt.so of its\n"
          "# wheel; it does not import without libnvinfer) with tests/backends/trt_names.py:binary_names:\n"
          "# the identifiers that are NUL-terminated strings in the module (how pybind11 registers\n"
          "# names), with the tails the linker merged into longer strings; command in that file's\n"
          "# docstring. Some noise (symbol fragments) is included; it can only make the check more\n"
          "# lenient. Flat names: BuilderFlag.INT8 (gone in 11) and DataType.INT8 share \"INT8\".\n",
}


if __name__ == "__main__":
    major, root = sys.argv[1], Path(sys.argv[2])
    if major == "10":
        names = stub_dir_names(root)
    else:
        names = binary_names(root / "tensorrt_bindings" / "tensorrt.so")
    sys.stdout.write(HEADER[major] + "\n".join(sorted(names)) + "\n")
