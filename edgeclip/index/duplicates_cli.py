"""``edgeclip duplicates``: near-duplicate groups of an image index (no torch)."""

from __future__ import annotations

import json
import sys

import click

from .duplicates import DEFAULT_THRESHOLD


@click.command(name="duplicates")
@click.option("--db", default=None, type=click.Path(dir_okay=False),
              help="index database file (default: $EDGECLIP_HOME/index.db)")
@click.option("--threshold", default=None, type=float,
              help="cosine every pair inside a group reaches (lower: looser groups). Default: "
                   "the one measured for the index's model and recorded in its manifest, else "
                   f"{DEFAULT_THRESHOLD}")
@click.option("--json", "as_json", is_flag=True, help="print the groups as JSON")
def duplicates(db, threshold, as_json):
    """List groups of near-duplicate photos in the index: copies, re-encodes, resizes, small
    crops and rotations of one photo. Every pair inside a group is at least --threshold similar,
    so different photos are not chained together through a third."""
    from . import ImageIndex
    from .cli import _existing_db

    path = _existing_db(db)
    with ImageIndex(path, read_only=True) as ix:
        if threshold is None:
            threshold = ix.duplicate_threshold
        groups = ix.duplicates(threshold=threshold)
        n = len(ix)
    if as_json:
        json.dump({"db": str(path), "threshold": threshold, "images": n,
                   "groups": groups}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    if not groups:
        click.echo(f"no near-duplicates among {n} images (threshold {threshold})")
        return
    for i, g in enumerate(groups, 1):
        click.echo(f"group {i} ({len(g)} images)")
        for p in g:
            click.echo(f"  {p}")
    extra = sum(len(g) - 1 for g in groups)
    click.echo(f"{len(groups)} group(s); {extra} image(s) beyond the first of each group "
               f"(threshold {threshold}, {n} images)")
