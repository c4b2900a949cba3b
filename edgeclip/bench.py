"""``edgeclip-bench``: latency, throughput, cold start and memory of models on this device.

    edgeclip-bench MODEL [MODEL ...] [--tower image|text|both] [--backend NAME]
        [--precision fp32,int8] [--batch-sizes 1,8,32] [--warmup N] [--iters N | --duration S]
        [--threads N] [--e2e FOLDER] [--json FILE] [--csv FILE] [--plot FILE.png]

Each MODEL (bundle, .onnx, .plan) gives one target per (tower, precision); within each batch size
all targets of a tower are timed in interleaved rounds. Cold start (load + first inference) and
peak host memory are measured per (target, batch) in a fresh process (``--no-isolate``: cold start
in this process, no memory figure). Preprocessing (real JPEGs) and tokenization are timed apart;
``--e2e FOLDER`` also times ``Embedder.embed_images`` / ``embed_texts`` from files and strings.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import click

from .errors import ConfigError

PRECISION_NAMES = ("fp32", "fp16", "int8", "unknown")
_ARGV: list[str] = []  # the command line, for the report


class _Command(click.Command):
    """Usage errors become one-line ConfigErrors (exit 1), like every other user error."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            raise ConfigError(f"{e.format_message()} (see edgeclip-bench --help)") from None


def _int(value: str, name: str, low: int) -> int:
    try:
        v = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}.") from None
    if v < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}.")
    return v


def parse_batch_sizes(text: str) -> list[int]:
    sizes = [_int(s.strip(), "--batch-sizes", 1) for s in text.split(",") if s.strip()]
    if not sizes:
        raise ConfigError(f"--batch-sizes needs comma-separated positive integers, got {text!r}.")
    return sorted(set(sizes))


def parse_precisions(text: str | None) -> list[str] | None:
    if text is None or text.strip() in ("", "all"):
        return None
    out = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in out if p not in PRECISION_NAMES]
    if bad or not out:
        raise ConfigError(f"--precision {text!r}: use a comma list of "
                          f"{', '.join(PRECISION_NAMES)} (or 'all').")
    return out


def _log(quiet: bool, msg: str) -> None:
    if not quiet:
        click.echo(msg, err=True)


@click.command(cls=_Command, context_settings={"help_option_names": ["-h", "--help"]},
               help="\b\n" + __doc__.split("\n\n", 1)[1] if __doc__ else None)
@click.argument("models", nargs=-1)
@click.option("--tower", default="both", show_default=True, help="image, text or both.")
@click.option("--backend", default="auto", show_default=True,
              help="auto, onnxruntime, onnxruntime-cuda, onnxruntime-tensorrt, tensorrt.")
@click.option("--precision", default=None,
              help="Comma list of fp32,fp16,int8 (default: every precision the model has).")
@click.option("--batch-sizes", default="1,8,32", show_default=True)
@click.option("--warmup", default="3", show_default=True, help="Untimed calls per cell.")
@click.option("--iters", default=None, help="Timed calls per cell (rounds of one call).")
@click.option("--duration", default=None,
              help="Seconds of timed calls per cell [default: 2].")
@click.option("--threads", default=None, help="ONNX Runtime intra-op threads (default: all).")
@click.option("--e2e", "e2e_folder", default=None,
              help="Folder of JPEGs: also time Embedder.embed_images / embed_texts end to end.")
@click.option("--isolate/--no-isolate", default=True, show_default=True,
              help="Cold start and peak memory in a fresh process per (model, batch).")
@click.option("--json", "json_path", default=None, help="Write the full report as JSON.")
@click.option("--csv", "csv_path", default=None, help="Write the rows as CSV.")
@click.option("--plot", "plot_path", default=None, help="Write latency vs batch size as PNG.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def bench(models, tower, backend, precision, batch_sizes, warmup, iters, duration, threads,
          e2e_folder, isolate, json_path, csv_path, plot_path, quiet):
    if not models:
        raise ConfigError("give at least one MODEL (a bundle directory, .onnx or .plan).")
    if tower not in ("image", "text", "both"):
        raise ConfigError(f"--tower must be image, text or both, got {tower!r}.")
    if iters is not None and duration is not None:
        raise ConfigError("give --iters or --duration, not both.")
    settings = {
        "towers": ["image", "text"] if tower == "both" else [tower],
        "backend": backend, "precisions": parse_precisions(precision),
        "batch_sizes": parse_batch_sizes(batch_sizes), "warmup": _int(warmup, "--warmup", 0),
        "iters": None if iters is None else _int(iters, "--iters", 1),
        "duration_s": None, "threads": None if threads is None else _int(threads, "--threads", 1),
        "isolate": isolate, "e2e_folder": e2e_folder,
    }
    if iters is None:
        try:
            settings["duration_s"] = 2.0 if duration is None else float(duration)
        except ValueError:
            raise ConfigError(f"--duration must be seconds > 0, got {duration!r}.") from None
        if not settings["duration_s"] > 0:
            raise ConfigError(f"--duration must be seconds > 0, got {duration!r}.")
    folder = None
    if e2e_folder is not None:
        folder = Path(e2e_folder).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"--e2e {e2e_folder}: not a folder. Pass a folder of JPEG files.")
        from .profiling.inputs import list_images
        if not list_images(folder, limit=1):
            raise ConfigError(f"--e2e {e2e_folder}: no image files (.jpg/.png/...) in it.")
    plot = None if plot_path is None else Path(plot_path)
    if plot is not None:  # fail before the run, not after it
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            from .errors import BackendUnavailableError
            raise BackendUnavailableError("--plot needs matplotlib: pip install 'edgeclip[plot]'") \
                from None
    report = run_benchmark(list(models), settings, folder, quiet=quiet)
    from .profiling.report import format_table, write_csv, write_json, write_plot
    click.echo(format_table(report["rows"]))
    for w in report["warnings"]:
        click.echo(f"warning: {w}", err=True)
    if json_path:
        write_json(report, Path(json_path))
    if csv_path:
        write_csv(report["rows"], Path(csv_path))
    if plot is not None:
        m = report["machine"]
        used = ", ".join(sorted({r["backend"] for r in report["rows"]}))
        write_plot(report["rows"], plot, title=f"{m['cpu_model']}, {m['cores_usable']} cores, "
                   f"{used}, {report['date'][:10]}")


def run_benchmark(models: list[str], settings: dict, folder: Path | None = None,
                  quiet: bool = True) -> dict:
    """Time every target of ``models``; return the report (machine, settings, rows, warnings)."""
    from .profiling.inputs import image_items, real_feeds, texts, time_preprocess, time_tokenize
    from .profiling.loop import Cell, measure_interleaved
    from .profiling.machine import load_average, machine_info
    from .profiling.probe import probe_here, probe_in_subprocess
    from .profiling.report import ROW_KEYS, add_ratios, cv_warnings
    from .profiling.stats import summarize
    from .profiling.targets import resolve_targets

    sizes = settings["batch_sizes"]
    machine = machine_info()  # before the run: its load average is the machine's own
    targets = resolve_targets(models, settings["towers"], settings["backend"],
                              settings["precisions"], settings["threads"])
    warnings: list[str] = []
    items, image_source = image_items(max(sizes), folder)
    strings, text_source = texts(max(sizes), folder)
    rows: list[dict] = []
    prep_cache: dict[tuple, float | None] = {}
    for tower in ("image", "text"):
        group = [t for t in targets if t.tower == tower]
        if not group:
            continue
        runners = {}
        try:
            for b in sizes:
                cells, cell_targets = [], []
                for t in group:
                    why = t.supports_batch(b)
                    if why is not None:
                        warnings.append(f"{t.label} {tower} {t.precision}: batch {b} skipped "
                                        f"({why}).")
                        continue
                    cell_targets.append(t)
                if not cell_targets:
                    continue
                cold = {}
                for t in cell_targets:
                    _log(quiet, f"[bench] cold start {t.label} {tower} {t.precision} batch {b}")
                    if settings["isolate"]:
                        cold[t.key] = probe_in_subprocess(t.spec(), b)
                        cold[t.key]["memory_method"] = "fresh process, RSS high-water (VmHWM)"
                    else:
                        r = probe_here({"target": t.spec(), "batch": b, "runs": 0})
                        cold[t.key] = {k: r[k] for k in ("load_ms", "first_inference_ms",
                                                          "cold_start_ms")}
                        cold[t.key]["memory_method"] = None
                for t in cell_targets:
                    if t.key not in runners:
                        runners[t.key] = t.open()
                    feeds = real_feeds(t, b, items, strings)
                    runner = runners[t.key]
                    cells.append(Cell(key=t.key, run=lambda r=runner, f=feeds: r.run(f)))
                _log(quiet, f"[bench] timing {tower} batch {b}: {len(cells)} interleaved cells")
                measure_interleaved(cells, warmup=settings["warmup"], iters=settings["iters"],
                                    duration=settings["duration_s"])
                for t, cell in zip(cell_targets, cells):
                    row = {k: None for k in ROW_KEYS}
                    row.update(model=t.label, model_index=t.model_index, path=t.path,
                               kind=t.kind, tower=tower, backend=t.backend,
                               precision=t.precision, batch_size=b)
                    row.update(summarize(cell.times, b))
                    row.update({k: v for k, v in cold[t.key].items() if k in ROW_KEYS})
                    pkey = (tower, repr(t.preprocess), repr(t.tokenizer), repr(t.inputs), b)
                    if pkey not in prep_cache:
                        prep_cache[pkey] = (time_preprocess(t, items, b) if tower == "image"
                                            else time_tokenize(t, strings, b))
                    row["preprocess_ms" if tower == "image" else "tokenize_ms"] = prep_cache[pkey]
                    row["input_source"] = image_source if tower == "image" else text_source
                    if folder is not None:
                        row.update(_e2e(t, b, items, strings, settings, warnings, quiet))
                    rows.append(row)
        finally:
            for r in runners.values():
                r.close()
    add_ratios(rows)
    warnings = list(dict.fromkeys(warnings + cv_warnings(rows)))
    seen, model_list = set(), []
    for t in targets:
        if t.model_index not in seen:
            seen.add(t.model_index)
            model_list.append({"label": t.label, "path": t.path, "kind": t.kind,
                               "model_name": t.model_name, "identity": t.identity})
    machine["load_average_end"] = load_average()
    return {"tool": "edgeclip-bench", "schema_version": 1,
            "command": shlex.join(["edgeclip-bench"] + (_ARGV or sys.argv[1:])),
            "date": machine["date"],
            "machine": machine, "settings": settings, "models": model_list, "rows": rows,
            "warnings": warnings}


def _e2e(t, b: int, items: list, strings: list[str], settings: dict, warnings: list[str],
         quiet: bool) -> dict:
    """Time Embedder.embed_images / embed_texts on ``b`` files / strings (bundles only)."""
    if t.kind != "bundle":
        warnings.append(f"{t.label}: --e2e needs a bundle (preprocessing and tokenizer come "
                        f"from its manifest); a bare .onnx has none.")
        return {}
    from .embedder import Embedder
    _log(quiet, f"[bench] e2e {t.label} {t.tower} {t.precision} batch {b}")
    emb = Embedder(t.model_file, backend=t.backend, precision=t.precision,
                   threads=settings["threads"], towers=[t.tower])
    if t.tower == "image":
        batch = [str(p) if isinstance(p, Path) else bytes(p) for p in items[:b]]
        call = lambda: emb.embed_images(batch, batch_size=b)  # noqa: E731
    else:
        batch = strings[:b]
        call = lambda: emb.embed_texts(batch, batch_size=b)  # noqa: E731
    call()  # warm-up
    budget = settings["duration_s"] or 1.0
    times, start = [], time.perf_counter()
    while len(times) < (settings["iters"] or 3) or (settings["iters"] is None
                                                     and time.perf_counter() - start < budget):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    emb.close()
    mean = sum(times) / len(times)
    return {"e2e_ms": mean * 1e3, "e2e_items_per_s": b / mean}


def main(args=None) -> None:
    from .cli import run_main
    _ARGV[:] = list(sys.argv[1:] if args is None else args)
    run_main(bench, args=args, prog_name="edgeclip-bench")


if __name__ == "__main__":
    main()
