"""``edgeclip index`` and ``edgeclip search``.

The index database defaults to ``$EDGECLIP_HOME/index.db``, where ``EDGECLIP_HOME`` defaults
to ``~/.local/share/edgeclip``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import ImageIndexError

_DB_HELP = ("index database file (default: $EDGECLIP_HOME/index.db; EDGECLIP_HOME defaults to "
            "~/.local/share/edgeclip)")
_MODEL_HELP = ("model bundle directory (default: the bundle that built the index, else the "
               "built-in default model)")


def _db_path(db: str | None) -> Path:
    from . import default_db_path
    from .scan import user_path
    return user_path(db) if db else default_db_path()


def _existing_db(db: str | None) -> Path:
    path = _db_path(db)
    if not path.is_file():
        raise ImageIndexError(f"no image index at {path}: create one with `edgeclip index DIR"
                              f"{' --db ' + str(path) if db else ''}`.")
    return path


@click.command(name="index", epilog="Without DIR, indexes the demo photographs that ship with "
               "scikit-image (pip install 'edgeclip[demo]').")
@click.argument("folder", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--db", default=None, type=click.Path(dir_okay=False), help=_DB_HELP)
@click.option("--model", default=None, type=click.Path(), help=_MODEL_HELP)
@click.option("--reindex", is_flag=True, help="drop what is indexed first (e.g. to change model)")
@click.option("--no-recursive", is_flag=True, help="only the files directly in DIR")
@click.option("--status", "show_status", is_flag=True, help="show what the index holds and exit")
@click.option("--export", "export", default=None, type=click.Path(dir_okay=False),
              help="write paths + vectors + model identity to FILE (.npz, or .parquet with "
                   "pip install 'edgeclip[parquet]') and exit")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--commit-every", default=256, show_default=True, type=click.IntRange(1),
              help="files per transaction (what an interruption can lose)")
@click.option("--backend", default="auto", show_default=True, help="embedder backend")
@click.option("-q", "--quiet", is_flag=True, help="no progress bar")
def index(folder, db, model, reindex, no_recursive, show_status, export, batch_size,
          commit_every, backend, quiet):
    """Index the images in DIR (incremental: only new or changed files are embedded; moved
    files are re-pointed; deleted files are removed)."""
    from . import ImageIndex

    if export:
        with ImageIndex(_existing_db(db), read_only=True) as ix:
            files = ix.export_embeddings(export)
            n = len(ix)
        click.echo(f"wrote {n} vectors to {', '.join(map(str, files))}")
        return
    if show_status:
        path = _existing_db(db)
        with ImageIndex(path, read_only=True) as ix:
            st = ix.status()
        width = max(len(k) for k in st)
        for key, value in st.items():
            click.echo(f"{key:<{width}}  {value}")
        return
    with ImageIndex(_db_path(db), model=model, reindex=reindex, backend=backend) as ix:
        if folder is None:
            from .scan import demo_photos
            files = demo_photos()
            click.echo(f"indexing {len(files)} demo photos from {Path(files[0]).parent}", err=True)
            report = ix.add_files(files, batch_size=batch_size, commit_every=commit_every,
                                  progress=not quiet)
        else:
            report = ix.add_folder(folder, recursive=not no_recursive, batch_size=batch_size,
                                   commit_every=commit_every, progress=not quiet)
        click.echo(f"{ix.path}: {report}")
        bad = ix.skipped()
        if report.skipped and bad:
            click.echo(f"{len(bad)} file(s) could not be indexed, e.g. {bad[0][0]}: {bad[0][1]}",
                       err=True)


@click.command(name="search")
@click.argument("text", required=False)
@click.option("--image", type=click.Path(exists=True, dir_okay=False),
              help="find images similar to this one instead of TEXT")
@click.option("--db", default=None, type=click.Path(dir_okay=False), help=_DB_HELP)
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1),
              help="number of results")
@click.option("--folder", default=None, type=click.Path(file_okay=False),
              help="only images under this folder")
@click.option("--after", default=None, type=click.DateTime(), help="modified on or after")
@click.option("--before", default=None, type=click.DateTime(), help="modified before")
@click.option("--model", default=None, type=click.Path(), help=_MODEL_HELP)
@click.option("--approximate", is_flag=True, help="HNSW search (pip install 'edgeclip[index]')")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def search(text, image, db, k, folder, after, before, model, approximate, as_json):
    """Search an image index by TEXT (or by an example --image)."""
    from . import ImageIndex

    if (text is None) == (image is None):
        raise click.UsageError("give either TEXT or --image FILE.")
    from ..cli_runtime import check_text_args
    check_text_args([text] if text is not None else [], "TEXT")  # names the bad argument
    path = _existing_db(db)
    with ImageIndex(path, model=model, approximate=approximate, read_only=True) as ix:
        kw = dict(k=k, folder=folder, modified_after=after, modified_before=before)
        results = ix.search(text, **kw) if text is not None else ix.search_image(image, **kw)
    if as_json:
        click.echo(json.dumps([{"path": r.path, "score": round(r.score, 6)} for r in results],
                              indent=1))
        return
    if not results:
        click.echo("no results")
        return
    click.echo(f"{'#':>3}  {'score':>6}  path")
    for i, r in enumerate(results, 1):
        click.echo(f"{i:>3}  {r.score:6.3f}  {r.path}")
