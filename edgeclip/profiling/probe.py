"""Cold start and peak memory of one (target, batch) in a fresh Python process.

Run as ``python -m edgeclip.profiling.probe`` with a JSON request on stdin; prints a JSON result.
In a fresh process the first model pays no one-time cost for the others and the RSS high-water
mark belongs to this model alone: the process imports everything and builds its feeds
first, reads its RSS high-water mark (``rss_before_mb``; VmHWM on Linux, see
:func:`~edgeclip.profiling.machine.peak_rss_mb`), then loads the runner, runs the first
inference (cold start = load + first inference) and one more, and reads it again.
``peak_rss_delta_mb`` = after - before is the memory the model costs; ``peak_rss_mb`` is the
whole process's high-water mark (Python, numpy, onnxruntime included).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time


def probe_here(request: dict) -> dict:
    from ..manifest import TensorSpec
    from .inputs import build_feeds
    from .machine import DeviceMemory, peak_rss_mb
    from .targets import open_runner
    import onnxruntime  # noqa: F401  (imported before the baseline, as the runner needs it)

    spec, batch = request["target"], int(request["batch"])
    extra_runs = int(request.get("runs", 1))
    inputs = [TensorSpec.from_dict(t, "probe") for t in spec["inputs"]]
    feeds = build_feeds(inputs, batch)
    device = DeviceMemory()
    before = peak_rss_mb()
    t0 = time.perf_counter()
    runner = open_runner(spec)
    t1 = time.perf_counter()
    runner.run(feeds)
    t2 = time.perf_counter()
    for _ in range(extra_runs):
        runner.run(feeds)
    after = peak_rss_mb()
    return {"load_ms": (t1 - t0) * 1e3, "first_inference_ms": (t2 - t1) * 1e3,
            "cold_start_ms": (t2 - t0) * 1e3, "peak_rss_mb": after, "rss_before_mb": before,
            "peak_rss_delta_mb": None if after is None or before is None else after - before,
            "peak_device_mb": device.used_mb()}


def probe_in_subprocess(spec: dict, batch: int, runs: int = 1, timeout: float = 600) -> dict:
    """Run :func:`probe_here` in a fresh interpreter; EdgeClipError text comes back as one."""
    from ..errors import EdgeClipError
    request = json.dumps({"target": spec, "batch": batch, "runs": runs})
    try:
        proc = subprocess.run([sys.executable, "-m", "edgeclip.profiling.probe"], input=request,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EdgeClipError(f"{spec['model_file']}: the cold-start probe took over {timeout:.0f} s "
                            f"at batch {batch}; rerun with --no-isolate.") from None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgeClipError(f"{spec['model_file']}: the cold-start probe failed at batch {batch} "
                            f"({tail[:300]}).")
    result = json.loads(lines[-1])
    if "error" in result:
        raise EdgeClipError(result["error"])
    return result


def main() -> None:
    from ..errors import EdgeClipError
    request = json.loads(sys.stdin.read())
    try:
        result = probe_here(request)
    except EdgeClipError as e:
        result = {"error": str(e)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
