"""The runtime must import and run without torch."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import edgeclip

BLOCK = ("import sys\n"
         "class _Block:\n"
         "    def find_spec(self, name, path=None, target=None):\n"
         "        if name.split('.')[0] in ('torch', 'torchvision', 'transformers'):\n"
         "            raise ModuleNotFoundError('No module named ' + repr(name), name=name)\n"
         "sys.meta_path.insert(0, _Block())\n")


def runtime_modules():
    root = Path(edgeclip.__file__).parent
    mods = ["edgeclip"]
    for info in pkgutil.walk_packages([str(root)], prefix="edgeclip."):
        if info.name.startswith(("edgeclip.distill", "edgeclip.export")):
            continue  # the torch side
        mods.append(info.name)
    return mods


def test_runtime_imports_without_torch():
    mods = runtime_modules()
    assert "edgeclip.embedder" in mods and "edgeclip.backends.onnxruntime" in mods
    code = BLOCK + "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods)
    code += "import edgeclip; edgeclip.Embedder; print('ok')\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


def test_cli_help_without_torch():
    code = BLOCK + ("import sys; sys.argv=['edgeclip','-h']\n"
                    "from edgeclip.cli import main\nmain()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "distill" in r.stdout


def test_torch_command_without_torch_names_the_extra():
    code = BLOCK + ("import sys; sys.argv=['edgeclip','distill','--config','x.toml']\n"
                    "from edgeclip.cli import main\nmain()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "edgeclip[train]" in r.stderr and "Traceback" not in r.stderr
