"""``edgeclip distill`` and ``edgeclip eval``."""

from __future__ import annotations

import json
import sys

import click

from ..errors import ConfigError


@click.command("distill")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True,
              help="Training config (TOML), e.g. configs/student_cona.toml.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set loss.edges.TI-ST.weight=0 "
                   "or --set loss.drop=inter_ts (repeatable).")
def distill(config_path, sets):
    """Train a teacher or distill a student dual encoder."""
    from .config import load_config
    from .trainer import train
    cfg = load_config(config_path, sets)
    result = train(cfg)
    click.echo(json.dumps(result, indent=1, default=str))


@click.command("eval")
@click.option("--model", "model_path", required=True,
              help="A checkpoint directory (from `edgeclip distill`) or a bundle.")
@click.option("--data", "data_root", required=True, help="Dataset directory (or tar shards).")
@click.option("--split", default="test", show_default=True)
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "csv", "karpathy", "wds"]))
@click.option("--backend", default="auto", show_default=True, help="Bundles only.")
@click.option("--precision", default=None, help="Bundles only: fp32, fp16 or int8.")
@click.option("--device", default="cpu", show_default=True, help="Checkpoints only.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def eval_cmd(model_path, data_root, split, fmt, backend, precision, device, as_json):
    """Text-to-image and image-to-text R@1/5/10 on a dataset split."""
    from ..retrieval import format_table
    from .checkpoint import is_checkpoint
    from .data import open_dataset
    from .evaluate import evaluate_path
    ds = open_dataset({"root": data_root, "format": fmt}, split)
    kw = {} if is_checkpoint(model_path) else {"backend": backend, "precision": precision}
    m = evaluate_path(model_path, ds, device=device, **kw)
    m.update(model=str(model_path), data=ds.description)
    if as_json:
        click.echo(json.dumps(m, indent=1))
    else:
        click.echo(f"{model_path} on {ds.description} ({m['backend']}, {m['precision']})")
        click.echo(format_table(m))
        if m["skipped_images"]:
            click.echo(f"skipped {m['skipped_images']} unreadable image(s)")


def main(argv=None):  # `python -m edgeclip.distill` (used under torchrun)
    from ..cli import run_main
    run_main(distill, args=argv if argv is not None else sys.argv[1:], prog_name="edgeclip distill")


__all__ = ["distill", "eval_cmd", "main", "ConfigError"]
