"""The ``edgeclip`` command.

Subcommands live in their own modules and are imported only when run, so ``edgeclip -h`` works
with the base install (no torch). A user error (:class:`EdgeClipError`) prints one line and exits
1; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from . import __version__
from .errors import EdgeClipError

# name -> ("module:attribute", one-line help). Modules are imported only when the command runs.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("edgeclip.cli_runtime:info", "Show a bundle's manifest: towers, precisions, files."),
    "embed": ("edgeclip.cli_runtime:embed", "Embed images or texts with a bundle."),
    "classify": ("edgeclip.cli_classify:classify", "Zero-shot classification of images by labels."),
    "index": ("edgeclip.index.cli:index", "Index a folder of images (incremental)."),
    "search": ("edgeclip.index.cli:search", "Search an image index by text or by image."),
    "duplicates": ("edgeclip.index.duplicates_cli:duplicates", "List groups of near-duplicate photos in an index."),
    "distill": ("edgeclip.distill.cli:distill", "Train a teacher or distill a student (needs [train])."),
    "merge": ("edgeclip.distill.cli:merge", "Merge checkpoints of one model by their weights: interpolation (WiSE-FT) or mean (soup); needs [train]."),
    "eval": ("edgeclip.distill.cli:eval_cmd", "Retrieval R@K of a model or bundle on a dataset."),
    "export": ("edgeclip.export.cli:export", "Export a checkpoint, Hugging Face CLIP/SigLIP or open_clip model to an ONNX bundle (needs [export])."),
    "build-engine": ("edgeclip.export.tensorrt_build:build_engine", "Build TensorRT engines for a bundle on this device."),
    "doctor": ("edgeclip.doctor:doctor", "Show TensorRT/CUDA/GPU/ONNX Runtime here and what backend auto picks."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is not None or name not in LAZY_COMMANDS:
            return cmd
        target, help_text = LAZY_COMMANDS[name]
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            extra = extra_for(e)
            if extra is None:
                raise
            return _missing_extra_command(name, help_text, e.name, extra)
        return getattr(module, attr)

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            if name in LAZY_COMMANDS:
                rows.append((name, LAZY_COMMANDS[name][1]))
            else:
                cmd = super().get_command(ctx, name)
                if cmd is not None and not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(80)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


# top-level module -> the pip extra that installs it
EXTRAS = {"torch": "train", "transformers": "train", "safetensors": "train",
          "efficientnet_lite_pytorch": "train", "onnx": "export", "onnxslim": "export",
          "onnxconverter_common": "export", "tensorrt": "tensorrt-cu12", "cuda": "tensorrt-cu12",
          "usearch": "index", "matplotlib": "plot", "skimage": "demo",
          "webdataset": "train"}


def extra_for(e: ModuleNotFoundError) -> str | None:
    """The edgeclip extra that provides the missing module, or None (then it is a bug)."""
    return EXTRAS.get((e.name or "").split(".")[0])


def _missing_extra_command(name, help_text, missing, extra):
    @click.command(name=name, help=help_text, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def _cmd(args):
        raise EdgeClipError(f"`edgeclip {name}` needs the '{missing}' package: "
                            f"pip install 'edgeclip[{extra}]'")
    return _cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="edgeclip")
def cli():
    """edgeclip: small, fast CLIP-style text-image models on edge devices."""


def run_main(command: click.Command, args=None, prog_name: str | None = None) -> None:
    """Run a click command; EdgeClipError -> one line on stderr, exit 1."""
    try:
        command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except EdgeClipError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except ModuleNotFoundError as e:
        extra = extra_for(e)
        if extra is None:
            raise
        click.echo(f"error: this command needs the '{e.name}' package: "
                   f"pip install 'edgeclip[{extra}]'", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    sys.exit(0)


def main(args=None) -> None:
    run_main(cli, args=args, prog_name="edgeclip")


if __name__ == "__main__":
    main()
