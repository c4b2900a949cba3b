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
@click.option("--restart", is_flag=True,
              help="Start over even if run.out holds a checkpoint (its checkpoint and "
                   "metrics.jsonl are replaced).")
@click.option("--resume-anyway", is_flag=True,
              help="Resume run.out's checkpoint even though it was trained with another config "
                   "(the new config applies from the checkpoint's step on).")
def distill(config_path, sets, restart, resume_anyway):
    """Train a teacher or distill a student dual encoder.

    An interrupted run resumes from <run.out>/checkpoint when rerun. If the config differs from
    the checkpoint's (another loss preset, schedule, learning rate, model or data), the run is
    refused with the differing keys named: pass --resume-anyway to continue under the new config,
    or --restart to start over.
    """
    from .config import load_config
    from .trainer import train
    if restart and resume_anyway:
        raise ConfigError("--restart and --resume-anyway contradict each other: pass one.")
    cfg = load_config(config_path, sets)
    if restart:
        cfg["run"]["resume"] = False
    result = train(cfg, resume_anyway=resume_anyway)
    click.echo(json.dumps(result, indent=1, default=str))


@click.command("eval")
@click.option("--model", "model_path", required=True,
              help="A bundle, a checkpoint directory (from `edgeclip distill`), a Hugging Face "
                   "CLIPModel/SiglipModel directory, or open_clip:ARCH (with --weights).")
@click.option("--weights", default=None, help="open_clip:ARCH only: the weights file.")
@click.option("--data", "data_root", required=True, help="Dataset directory (or tar shards).")
@click.option("--split", default="test", show_default=True)
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "csv", "karpathy", "wds"]))
@click.option("--backend", default="auto", show_default=True, help="Bundles only.")
@click.option("--precision", default=None, help="Bundles only: fp32, fp16 or int8.")
@click.option("--device", default="cpu", show_default=True,
              help="PyTorch models (not bundles) only.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def eval_cmd(model_path, weights, data_root, split, fmt, backend, precision, device, as_json):
    """Text-to-image and image-to-text R@1/5/10 on a dataset split."""
    from ..model_source import parse_source
    from ..retrieval import format_table
    from .data import open_dataset
    from .evaluate import evaluate_path
    src = parse_source(model_path, weights)  # before the dataset is read: a bad --model fails fast
    ds = open_dataset({"root": data_root, "format": fmt}, split)
    kw = {"backend": backend, "precision": precision} if src.is_bundle else {}
    m = evaluate_path(src, ds, device=device, **kw)
    m.update(model=str(model_path), data=ds.description)
    if as_json:
        click.echo(json.dumps(m, indent=1))
    else:
        click.echo(f"{model_path} on {ds.description} ({m['backend']}, {m['precision']})")
        click.echo(format_table(m))
        if m["skipped_images"]:
            click.echo(f"skipped {m['skipped_images']} unreadable image(s)")


@click.command("merge")
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.option("--alpha", required=True, help="Weight of B in [0, 1]: 0 gives A, 1 gives B.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="New checkpoint directory for the merged model.")
def merge(a, b, alpha, out):
    """Merge checkpoints A and B of one architecture: (1 - alpha) * A + alpha * B.

    Weight-space ensembling (WiSE-FT): both must be fine-tuned from the same starting weights
    (same model config and run.seed), e.g. a general student (A) and one distilled from a
    stronger, domain-specialised teacher (B). The result is a checkpoint for `edgeclip eval`
    and `edgeclip export`.
    """
    from .merge import merge_checkpoints
    path = merge_checkpoints(a, b, alpha, out)
    click.echo(f"wrote {path} = (1 - {float(alpha):g}) * {a} + {float(alpha):g} * {b}")


def main(argv=None):  # `python -m edgeclip.distill` (used under torchrun)
    from ..cli import run_main
    run_main(distill, args=argv if argv is not None else sys.argv[1:], prog_name="edgeclip distill")


__all__ = ["distill", "eval_cmd", "main", "ConfigError"]
