"""``edgeclip export``: a model source (student checkpoint, Hugging Face CLIP/SigLIP directory,
``open_clip:ARCH``) -> a verified ONNX bundle."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ConfigError
from .profiles import ExportProfile, load_profile
from .verify import Thresholds


def _precisions(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(p.strip() for p in value.split(",") if p.strip())
    bad = [p for p in items if p not in ("fp32", "fp16", "int8")]
    if bad or not items:
        raise ConfigError(f"--precision {value!r}: use a comma list of fp32, fp16, int8.")
    return items


@click.command("export")
@click.argument("checkpoint", metavar="SOURCE")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="open_clip:ARCH only: the weights file (.safetensors, or a state dict).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Bundle directory to write.")
@click.option("--precision", "precision", default=None,
              help="Comma list of fp32,fp16,int8 (default: the profile's, else all three).")
@click.option("--target", type=click.Choice(["cpu", "tensorrt"]), default=None,
              help="INT8 flavour: cpu (U8S8, ONNX Runtime) or tensorrt (symmetric S8S8 Q/DQ).")
@click.option("--profile", "profile_path", type=click.Path(path_type=Path), default=None,
              help="Target profile, e.g. export/targets/jetson-orin-nano.toml.")
@click.option("--calib-data", type=click.Path(path_type=Path), default=None,
              help="Folder of real images (+ captions.csv) for INT8 calibration (default: "
                   "scikit-image's built-in photographs, with a note).")
@click.option("--calib-split", default="train", show_default=True,
              help="Split of --calib-data to calibrate on (when it has splits/).")
@click.option("--calib-count", type=int, default=None, help="Images and captions to calibrate on.")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]),
              default=None, help="Calibration method (default: the profile's, else minmax).")
@click.option("--eval-data", type=click.Path(path_type=Path), default=None,
              help="Dataset folder for verification and R@1 (e.g. flickr8k).")
@click.option("--eval-split", default=None, help="Split of --eval-data, e.g. dev.")
@click.option("--verify-count", type=int, default=64, show_default=True,
              help="Images and captions compared with PyTorch.")
@click.option("--max-r1-drop", type=float, default=2.0, show_default=True,
              help="Largest INT8 R@1 drop from FP32 (points) before the export fails.")
@click.option("--allow-degraded", is_flag=True, help="Keep a bundle that fails verification.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads for verification.")
def export(checkpoint, weights, out, precision, target, profile_path, calib_data, calib_split,
           calib_count, calib_method, eval_data, eval_split, verify_count, max_r1_drop,
           allow_degraded, threads):
    """Export SOURCE to a verified ONNX bundle at --out.

    \b
    SOURCE: a student checkpoint directory (from `edgeclip distill`), a Hugging Face
    CLIPModel / SiglipModel directory, or open_clip:ARCH with --weights FILE.
    """
    from .pipeline import export_dual_encoder
    from .sources import load_source

    profile = load_profile(profile_path) if profile_path else ExportProfile()
    precisions = _precisions(precision) or profile.precisions
    target = target or profile.target
    model = load_source(checkpoint, weights)
    report = export_dual_encoder(
        model, out, precisions, target, profile=profile, calib_data=calib_data,
        calib_split=calib_split, calib_count=calib_count, calib_method=calib_method,
        eval_data=eval_data, eval_split=eval_split, verify_count=verify_count,
        allow_degraded=allow_degraded, thresholds=Thresholds(int8_r1_drop=max_r1_drop),
        threads=threads, log=click.echo)
    state = "passed" if report["passed"] else "FAILED (kept: --allow-degraded)"
    click.echo(f"bundle written to {out} (verification {state})")


from .tensorrt_build import build_engine  # noqa: E402,F401  (the TensorRT engineer's module)
