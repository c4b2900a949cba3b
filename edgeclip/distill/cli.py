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
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path())
@click.option("--alpha", default=None,
              help="Two checkpoints A B: the weight of B in [0, 1] (0 gives A, 1 gives B). "
                   "Without it: the uniform mean of all the checkpoints (a model soup).")
@click.option("--text-alpha", default=None,
              help="With --alpha: the text tower's own weight of B (--alpha then weights the "
                   "image tower).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="New checkpoint directory for the merged model.")
def merge(checkpoints, alpha, text_alpha, out):
    """Merge checkpoints of one architecture by their weights.

    `merge A B --alpha X`: (1 - X) * A + X * B (WiSE-FT), e.g. a general student (A) and one
    distilled from a stronger, domain-specialised teacher (B); `--text-alpha Y` interpolates
    the text tower at Y. `merge A B C ...`: the uniform mean (a model soup), e.g. students of
    one teacher trained with different settings. All must be fine-tuned from the same starting
    weights (same model config and run.seed). The result is a checkpoint for `edgeclip eval`
    and `edgeclip export`.
    """
    from ..errors import ConfigError as _ConfigError
    from .merge import merge_checkpoints, soup_checkpoints
    if alpha is None:
        if text_alpha is not None:
            raise _ConfigError("--text-alpha needs --alpha (two checkpoints A B).")
        if len(checkpoints) < 2:
            raise _ConfigError("give two or more checkpoints to merge.")
        path = soup_checkpoints(list(checkpoints), out)
        click.echo(f"wrote {path} = the mean of {len(checkpoints)} checkpoints")
        return
    if len(checkpoints) != 2:
        raise _ConfigError(f"--alpha interpolates two checkpoints A B; {len(checkpoints)} were "
                           "given (without --alpha, several are averaged).")
    a, b = checkpoints
    path = merge_checkpoints(a, b, alpha, out, text_alpha=text_alpha)
    tower = "" if text_alpha is None else f" (text tower {float(text_alpha):g})"
    click.echo(f"wrote {path} = (1 - {float(alpha):g}) * {a} + {float(alpha):g} * {b}{tower}")


def main(argv=None):  # `python -m edgeclip.distill` (used under torchrun)
    from ..cli import run_main
    run_main(distill, args=argv if argv is not None else sys.argv[1:], prog_name="edgeclip distill")


__all__ = ["distill", "eval_cmd", "main", "ConfigError"]
