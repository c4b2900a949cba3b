"""Benchmark output: ratio column, terminal table, JSON, CSV and a latency plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, ConfigError

CV_WARN = 0.10
ROW_KEYS = [
    "model", "model_index", "path", "kind", "tower", "backend", "precision", "batch_size",
    "iterations", "latency_mean_ms", "latency_std_ms", "latency_p10_ms", "latency_p50_ms", "latency_p90_ms",
    "latency_p99_ms", "latency_max_ms", "latency_min_ms", "cv", "throughput_items_per_s",
    "ratio_vs_first", "ratio_reference", "cold_start_ms", "load_ms", "first_inference_ms",
    "memory_method", "peak_rss_mb", "peak_rss_delta_mb", "peak_device_mb", "preprocess_ms",
    "tokenize_ms", "input_source", "e2e_ms", "e2e_items_per_s", "photo_size", "e2e_photo_ms",
    "e2e_photo_items_per_s", "e2e_photo_over_e2e",
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


def _ms_label(v: float, _pos=None) -> str:
    """Tick text for a latency in ms: 0.2, 1, 20, 500, 2k."""
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def write_plot(rows: list[dict], path: Path, title: str = "") -> None:
    """Median (p50) latency vs batch size with a p10-p90 band, one line per (model, precision),
    one panel per tower; log axes with plain-number ticks (1, 2, 5, 10, 20, 50 ms...)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator
    except ImportError:
        raise BackendUnavailableError("--plot needs matplotlib: pip install 'edgeclip[plot]'") \
            from None
    path = _writable(path, "plot")
    towers = [t for t in ("image", "text") if any(r["tower"] == t for r in rows)]
    models = list(dict.fromkeys(r["model"] for r in rows))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    styles = {"fp32": "-", "fp16": "-.", "int8": "--"}
    fig, axes = plt.subplots(1, len(towers), figsize=(6.4 * len(towers), 4.8), squeeze=False)
    for ax, tower in zip(axes[0], towers):
        series: dict[tuple, list] = {}
        for r in rows:
            if r["tower"] == tower and r.get("latency_p50_ms"):
                series.setdefault((r["model"], r["precision"], r["backend"]), []).append(r)
        backends = {k[2] for k in series}
        for (model, prec, backend), rs in series.items():
            rs = sorted(rs, key=lambda r: r["batch_size"])
            x = [r["batch_size"] for r in rs]
            p50 = [r["latency_p50_ms"] for r in rs]
            lo = [r.get("latency_p10_ms") or r["latency_p50_ms"] for r in rs]
            hi = [r.get("latency_p90_ms") or r["latency_p50_ms"] for r in rs]
            label = f"{model} {prec}" + (f" ({backend.replace('onnxruntime', 'ort')})"
                                         if len(backends) > 1 else "")
            ax.plot(x, p50, marker="o", ms=4, color=colors[model],
                    linestyle=styles.get(prec, ":"), label=label)
            ax.fill_between(x, lo, hi, color=colors[model], alpha=0.15, linewidth=0)
        sizes = sorted({r["batch_size"] for r in rows if r["tower"] == tower})
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(NullLocator())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_yscale("log")
        lo_y, hi_y = ax.get_ylim()
        decades = np.log10(hi_y / lo_y) if lo_y > 0 else 3.0
        # enough labelled ticks for a narrow range, not too many for a wide one
        subs = ((1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0) if decades < 0.6 else
                (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0) if decades < 1.2 else
                (1.0, 2.0, 5.0) if decades < 6 else (1.0,))
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
        ax.yaxis.set_major_formatter(FuncFormatter(_ms_label))
        ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("batch size")
        ax.set_ylabel("latency per batch, ms (median; band: p10-p90)")
        ax.set_title(f"{tower} tower")
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", axis="y", alpha=0.1)
        ax.legend(fontsize=8, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise ConfigError(f"{path}: cannot write the plot ({e.strerror}).") from None
    finally:
        plt.close(fig)
