"""``edgeclip-bench``: latency, throughput, cold start and memory of models on this device.

    edgeclip-bench MODEL [MODEL ...] [--tower image|text|both] [--backend NAME]
        [--precision fp32,int8] [--batch-sizes 1,8,32] [--warmup N] [--iters N | --duration S]
        [--threads N] [--e2e FOLDER] [--photo-size WxH] [--json FILE] [--csv FILE]
        [--plot FILE.png]

Each MODEL (bundle, .onnx, .plan) gives one target per (tower, precision); within each batch size
all targets of a tower are timed in interleaved rounds. Cold start (load + first inference) and
peak host memory are measured per (target, batch) in a fresh process (``--no-isolate``: cold start
in this process, no memory figure). Preprocessing (real JPEGs) and tokenization are timed apart;
``--e2e FOLDER`` also times ``Embedder.embed_images`` / ``embed_texts`` from files and strings;
``--photo-size 4032x3024`` adds the same images as phone-sized JPEGs (upscaled, some with EXIF
orientation), timed in the same rounds (``e2e_photo_over_e2e``: their throughput ratio).
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import click

from .errors import ConfigError
from .paths import expand_path

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
@click.option("--photo-size", "photo_size", default=None,
              help="WxH, e.g. 4032x3024: also time embed_images end to end on JPEGs of this size "
                   "(real images upscaled, some with EXIF orientation), in the same rounds as the "
                   "images as they are.")
@click.option("--isolate/--no-isolate", default=True, show_default=True,
              help="Cold start and peak memory in a fresh process per (model, batch).")
@click.option("--json", "json_path", default=None, help="Write the full report as JSON.")
@click.option("--csv", "csv_path", default=None, help="Write the rows as CSV.")
@click.option("--plot", "plot_path", default=None, help="Write latency vs batch size as PNG.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def bench(models, tower, backend, precision, batch_sizes, warmup, iters, duration, threads,
          e2e_folder, photo_size, isolate, json_path, csv_path, plot_path, quiet):
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
        "isolate": isolate, "e2e_folder": e2e_folder, "photo_size": None,
    }
    if iters is None:
        try:
            settings["duration_s"] = 2.0 if duration is None else float(duration)
        except ValueError:
            raise ConfigError(f"--duration must be seconds > 0, got {duration!r}.") from None
        if not settings["duration_s"] > 0:
            raise ConfigError(f"--duration must be seconds > 0, got {duration!r}.")
    if photo_size is not None:
        from .profiling.photos import parse_photo_size
        settings["photo_size"] = list(parse_photo_size(photo_size))
    folder = None
    if e2e_folder is not None:
        folder = expand_path(e2e_folder)
        if not folder.is_dir():
            raise ConfigError(f"--e2e {e2e_folder}: not a folder. Pass a folder of JPEG files.")
        from .profiling.inputs import list_images
        if not list_images(folder, limit=1):
            raise ConfigError(f"--e2e {e2e_folder}: no image files (.jpg/.png/...) in it.")
    plot = None if plot_path is None else expand_path(plot_path)
    if plot is not None:  # fail before the run, not after it
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            from .errors import BackendUnavailableError
            raise BackendUnavailableError("--plot needs matplotlib: pip install 'edgeclip[plot]'") \
                from None
    refuse_sources(models)
    report = run_benchmark(list(models), settings, folder, quiet=quiet)
    from .profiling.report import format_table, write_csv, write_json, write_plot
    click.echo(format_table(report["rows"]))
    for w in report["warnings"]:
        click.echo(f"warning: {w}", err=True)
    if json_path:
        write_json(report, expand_path(json_path))
    if csv_path:
        write_csv(report["rows"], expand_path(csv_path))
    if plot is not None:
        m = report["machine"]
        used = ", ".join(sorted({r["backend"] for r in report["rows"]}))
        write_plot(report["rows"], plot, title=f"{m['cpu_model']}, {m['cores_usable']} cores, "
                   f"{used}, {report['date'][:10]}")


def refuse_sources(models) -> None:
    """A MODEL that is a model source but not a bundle (a checkpoint, a Hugging Face directory,
    ``open_clip:ARCH``): a ConfigError with the ``edgeclip export`` command that makes one."""
    from .model_source import OPEN_CLIP_PREFIX, export_command, parse_source
    from .paths import expand_path
    for arg in models:
        p = expand_path(arg)
        if not (str(arg).startswith(OPEN_CLIP_PREFIX) or (p.is_dir()
                                                          and not (p / "manifest.json").is_file())):
            continue
        src = parse_source(arg)  # a folder that is no model at all: its own error
        raise ConfigError(f"{arg}: {src.describe()}, not a bundle; edgeclip-bench times exported "
                          f"bundles. Export it first (on a machine with edgeclip[train,export]): "
                          f"`{export_command(src)}`, then pass BUNDLE_DIR.")


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
    bar = _progress(targets, sizes, quiet)
    warnings: list[str] = []
    items, image_source = image_items(max(sizes), folder)
    strings, text_source = texts(max(sizes), folder)
    photos: list = []
    if settings.get("photo_size") and "image" in settings["towers"]:
        import tempfile
        from .profiling.photos import write_photos
        photo_dir = tempfile.TemporaryDirectory(prefix="edgeclip-photos-")
        photos = write_photos(items, max(sizes), tuple(settings["photo_size"]),
                              Path(photo_dir.name))
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
                    bar.set_postfix_str(f"cold start {t.label} {tower} {t.precision} b={b}")
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
                bar.set_postfix_str(f"timing {tower} b={b}: {len(cells)} interleaved")
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
                    if folder is not None or photos:
                        bar.set_postfix_str(f"e2e {t.label} {tower} {t.precision} b={b}")
                        row.update(_e2e(t, b, items, strings, settings, warnings, photos))
                    rows.append(row)
                    bar.update(1)
        finally:
            for r in runners.values():
                r.close()
    bar.close()
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


def _progress(targets, sizes: list[int], quiet: bool):
    """One tqdm bar over every (target, batch) cell: count, rate and ETA on stderr."""
    from tqdm import tqdm
    total = sum(1 for t in targets for b in sizes if t.supports_batch(b) is None)
    return tqdm(total=total, desc="edgeclip-bench", unit="cell", disable=quiet,
                dynamic_ncols=True, file=sys.stderr)


def _e2e(t, b: int, items: list, strings: list[str], settings: dict, warnings: list[str],
         photos: list | None = None) -> dict:
    """Time Embedder.embed_images / embed_texts on ``b`` files / strings (bundles only); with
    ``photos`` (``--photo-size``) also embed_images on ``b`` of them, in the same rounds."""
    if t.kind != "bundle":
        warnings.append(f"{t.label}: --e2e needs a bundle (preprocessing and tokenizer come "
                        f"from its manifest); a bare .onnx has none.")
        return {}
    from .embedder import Embedder
    emb = Embedder(t.model_file, backend=t.backend, precision=t.precision,
                   threads=settings["threads"], towers=[t.tower])
    if t.tower == "image":
        batch = [str(p) if isinstance(p, Path) else bytes(p) for p in items[:b]]
        call = lambda: emb.embed_images(batch, batch_size=b)  # noqa: E731
    else:
        batch = strings[:b]
        call = lambda: emb.embed_texts(batch, batch_size=b)  # noqa: E731
    calls = {"e2e": call}
    if t.tower == "image" and photos:
        big = [str(p) for p in photos[:b]]
        calls["e2e_photo"] = lambda: emb.embed_images(big, batch_size=b)
    for c in calls.values():
        c()  # warm-up
    budget = settings["duration_s"] or 1.0
    times: dict[str, list[float]] = {k: [] for k in calls}
    start = time.perf_counter()
    while len(times["e2e"]) < (settings["iters"] or 3) or (
            settings["iters"] is None and time.perf_counter() - start < budget):
        for k, c in calls.items():  # interleaved rounds: both see the same machine load
            t0 = time.perf_counter()
            c()
            times[k].append(time.perf_counter() - t0)
    emb.close()
    res = {}
    for k, ts in times.items():
        mean = sum(ts) / len(ts)
        res[f"{k}_ms"], res[f"{k}_items_per_s"] = mean * 1e3, b / mean
    if "e2e_photo" in times:
        res["photo_size"] = "x".join(str(v) for v in settings["photo_size"])
        res["e2e_photo_over_e2e"] = res["e2e_photo_items_per_s"] / res["e2e_items_per_s"]
    return res


def main(args=None) -> None:
    from .cli import run_main
    _ARGV[:] = list(sys.argv[1:] if args is None else args)
    run_main(bench, args=args, prog_name="edgeclip-bench")


if __name__ == "__main__":
    main()
