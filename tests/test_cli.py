import json
import subprocess
import sys

from edgeclip import __version__


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "edgeclip.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_version_and_help():
    r = run("--version")
    assert r.returncode == 0 and __version__ in r.stdout
    r = run("-h")
    assert r.returncode == 0
    for cmd in ("info", "embed", "index", "search", "distill", "export", "build-engine", "eval",
                "classify", "duplicates", "merge"):
        assert cmd in r.stdout


def test_info_and_embed(tiny_bundle, flickr_images):
    r = run("info", str(tiny_bundle))
    assert r.returncode == 0, r.stderr
    assert "tiny-test" in r.stdout and "sha256 verified" in r.stdout
    r = run("embed", "--model", str(tiny_bundle), "--image", str(flickr_images[0]),
            "--text", "a dog", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["dim"] == 16 and len(out["items"]) == 2
    assert len(out["items"][0]["embedding"]) == 16


def test_user_error_is_one_line_exit_1(tiny_bundle, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    r = run("embed", "--model", str(tiny_bundle), "--image", str(bad))
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "bad.jpg" in r.stderr
    assert "Traceback" not in r.stderr
    r = run("info", str(tmp_path / "missing"))
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
