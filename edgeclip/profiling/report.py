"""Benchmark output: ratio column, terminal table, JSON, CSV and a latency plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..errors import BackendUnavailableError, ConfigError

CV_WARN = 0.10
ROW_KEYS = [
    "model", "model_index", "path", "kind", "tower", "backend", "precision", "batch_size",
    "iterations", "latency_mean_ms", "latency_std_ms", "latency_p50_ms", "latency_p90_ms",
    "latency_p99_ms", "latency_max_ms", "latency_min_ms", "cv", "throughput_items_per_s",
    "ratio_vs_first", "ratio_reference", "cold_start_ms", "load_ms", "first_inference_ms",
    "memory_method", "peak_rss_mb", "peak_rss_delta_mb", "peak_device_mb", "preprocess_ms",
    "tokenize_ms", "input_source", "e2e_ms", "e2e_items_per_s",
]


def add_ratios(rows: list[dict]) -> None:
    """``ratio_vs_first`` = mean latency / that of the first MODEL's row with the same tower and
    batch (same precision and backend when it has them). 2.0 = twice as slow as the first."""
    first = [r for r in rows if r["model_index"] == 0]
    for row in rows:
        ref = None
        for match in (("tower", "batch_size", "precision", "backend"),
                      ("tower", "batch_size", "precision"), ("tower", "batch_size")):
            hits = [f for f in first if all(f[k] == row[k] for k in match)]
            if hits:
                ref = hits[0]
                break
        if ref is None or not ref["latency_mean_ms"]:
            row["ratio_vs_first"], row["ratio_reference"] = None, None
        else:
            row["ratio_vs_first"] = row["latency_mean_ms"] / ref["latency_mean_ms"]
            row["ratio_reference"] = f"{ref['model']} {ref['precision']} {ref['backend']}"


def cv_warnings(rows: list[dict]) -> list[str]:
    return [f"{r['model']} {r['tower']} {r['precision']} batch {r['batch_size']}: coefficient of "
            f"variation {r['cv']:.0%} > {CV_WARN:.0%}; the machine was busy or the run too short "
            f"(try a longer --duration, fewer --threads, or a quieter machine)"
            for r in rows if r["cv"] is not None and r["cv"] > CV_WARN]


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_table(rows: list[dict]) -> str:
    head = ["model", "tower", "prec", "backend", "batch", "mean ms", "p50", "p90", "p99", "max",
            "cv", "items/s", "x first", "cold ms", "rss+ MB", "gpu MB", "prep ms", "e2e ms"]
    body = []
    for r in rows:
        prep = r["preprocess_ms"] if r["tower"] == "image" else r["tokenize_ms"]
        body.append([r["model"], r["tower"], r["precision"],
                     r["backend"].replace("onnxruntime", "ort"), str(r["batch_size"]),
                     _f(r["latency_mean_ms"], ".2f"), _f(r["latency_p50_ms"], ".2f"),
                     _f(r["latency_p90_ms"], ".2f"), _f(r["latency_p99_ms"], ".2f"),
                     _f(r["latency_max_ms"], ".2f"),
                     _f(None if r["cv"] is None else 100 * r["cv"], ".1f") + "%",
                     _f(r["throughput_items_per_s"], ".1f"), _f(r["ratio_vs_first"], ".2f"),
                     _f(r["cold_start_ms"], ".0f"), _f(r["peak_rss_delta_mb"], ".0f"),
                     _f(r["peak_device_mb"], ".0f"), _f(prep, ".2f"), _f(r["e2e_ms"], ".2f")])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
              for i, h in enumerate(head)]
    left = {0, 1, 2, 3}

    def line(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def _writable(path: Path, what: str) -> Path:
    path = Path(path)
    if path.parent and not path.parent.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{path}: cannot create the folder for the {what} ({e.strerror}).") \
                from None
    return path


def write_json(report: dict, path: Path) -> None:
    path = _writable(path, "JSON report")
    try:
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot write the JSON report ({e.strerror}).") from None


def write_csv(rows: list[dict], path: Path) -> None:
    path = _writable(path, "CSV")
    try:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=ROW_KEYS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in ROW_KEYS})
    except OSError as e:
        raise ConfigError(f"{path}: cannot write the CSV ({e.strerror}).") from None


def write_plot(rows: list[dict], path: Path, title: str = "") -> None:
    """Mean latency vs batch size, one line per (model, precision), one panel per tower."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BackendUnavailableError("--plot needs matplotlib: pip install 'edgeclip[plot]'") \
            from None
    path = _writable(path, "plot")
    towers = [t for t in ("image", "text") if any(r["tower"] == t for r in rows)]
    fig, axes = plt.subplots(1, len(towers), figsize=(6.5 * len(towers), 4.8), squeeze=False)
    for ax, tower in zip(axes[0], towers):
        series: dict[tuple, list] = {}
        for r in rows:
            if r["tower"] == tower:
                series.setdefault((r["model"], r["precision"], r["backend"]), []).append(r)
        backends = {k[2] for k in series}
        for (model, prec, backend), rs in series.items():
            rs = sorted(rs, key=lambda r: r["batch_size"])
            label = f"{model} {prec}" + (f" ({backend})" if len(backends) > 1 else "")
            ax.plot([r["batch_size"] for r in rs], [r["latency_mean_ms"] for r in rs],
                    marker="o", linestyle="--" if prec == "int8" else "-", label=label)
        ax.set_xscale("log", base=2)
        sizes = sorted({r["batch_size"] for r in rows})
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("mean latency per batch (ms)")
        ax.set_title(f"{tower} tower")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise ConfigError(f"{path}: cannot write the plot ({e.strerror}).") from None
    finally:
        plt.close(fig)
