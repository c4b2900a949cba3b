"""Latency statistics of one benchmark cell."""

from __future__ import annotations

import numpy as np


def summarize(times_s: list[float], batch_size: int) -> dict:
    """Mean / std / percentiles (ms), coefficient of variation and items/s of per-call times."""
    if not times_s:
        raise ValueError("no timings to summarize")
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
    p10, p50, p90, p99 = (float(v) for v in np.percentile(ms, [10, 50, 90, 99]))
    return {
        "iterations": int(ms.size),
        "latency_mean_ms": mean,
        "latency_std_ms": std,
        "latency_p10_ms": p10,
        "latency_p50_ms": p50,
        "latency_p90_ms": p90,
        "latency_p99_ms": p99,
        "latency_max_ms": float(ms.max()),
        "latency_min_ms": float(ms.min()),
        "cv": std / mean if mean > 0 else 0.0,
        "throughput_items_per_s": batch_size / (mean / 1e3) if mean > 0 else 0.0,
    }
