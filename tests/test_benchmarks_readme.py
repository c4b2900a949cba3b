"""benchmarks/README.md describes every script in benchmarks/ (by file name, in bold)."""

from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_every_benchmark_script_is_documented():
    text = (BENCH / "README.md").read_text(encoding="utf-8")
    scripts = sorted(p.name for p in BENCH.iterdir() if p.suffix in (".py", ".sh"))
    assert len(scripts) >= 10
    missing = [s for s in scripts if f"**{s}**" not in text]
    assert not missing, f"benchmarks/README.md does not describe: {missing}"
