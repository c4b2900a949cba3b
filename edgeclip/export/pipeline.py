"""``export_dual_encoder``: a dual encoder -> a verified edgeclip bundle.

Order: float32 graphs (exported, checked, simplified) -> fp16 / int8 graphs -> manifest (mirrored
into every graph's ``metadata_props``) -> verification -> ``report.json`` -> ``manifest.json``.
A bundle that fails verification is not written (its report is kept beside ``out_dir`` as
``<out_dir>.report.json``), unless ``allow_degraded``; every export is built in a temporary
directory beside ``out_dir`` and renamed into place when it succeeds.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import torch

from .. import __version__
from ..errors import ConfigError, ExportValidationError
from ..paths import expand_path
from ..manifest import (MANIFEST_NAME, Manifest, ModelFile, TokenizerCfg, TowerSpec, now_iso,
                        write_manifest)
from .calibration import image_reader, text_reader
from .data import SplitData, builtin_samples, load_split, sample
from .fp16 import convert_fp16
from .int8 import default_exclude, quantize_int8
from .onnx_export import export_tower, set_metadata, tensor_specs
from .profiles import ExportProfile, validate
from .verify import Thresholds, VerifyData, format_report, raise_on_failure, verify_export

REPORT_NAME = "report.json"
TOKENIZER_NAME = "tokenizer.json"


def tool_versions() -> dict:
    out = {"edgeclip": __version__, "torch": torch.__version__}
    for dist in ("onnx", "onnxruntime", "onnxslim", "onnxconverter-common"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _data(root, split: str | None) -> SplitData:
    if isinstance(root, SplitData):
        return root
    root = Path(root)
    if split and not (root / "splits" / f"{split}.txt").is_file():
        split = None  # a plain folder of images: use it all
    return load_split(root, split)


def export_dual_encoder(model, out_dir: str | Path, precisions=("fp32", "fp16", "int8"),
                        target: str = "cpu", *, calib_data: str | Path | SplitData | None = None,
                        log=print, **kwargs) -> dict:
    """Export ``model`` (a DualEncoder, or a :class:`~edgeclip.export.sources.ForeignDualEncoder`)
    to a bundle in ``out_dir``; return the report dict.

    The bundle is written into a temporary directory beside ``out_dir`` and renamed into place
    only when the export succeeds (or ``allow_degraded``): a failed export leaves no output
    directory and an existing bundle at ``out_dir`` untouched (a failed verification's report is
    kept as ``<out_dir>.report.json``). int8 with no ``calib_data`` calibrates on scikit-image's
    built-in photographs and captions, with a note (pass real data for a better int8).
    """
    out = expand_path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file is in the way; pass a directory for the bundle.")
    if out.is_dir() and any(out.iterdir()) and not ((out / MANIFEST_NAME).is_file()
                                                    or (out / REPORT_NAME).is_file()):
        raise ConfigError(f"--out {out}: a non-empty directory that is not an edgeclip bundle; "
                          f"pass a new directory (an existing bundle there is replaced).")
    if "int8" in tuple(precisions) and calib_data is None:
        calib_data = builtin_samples()  # ConfigError naming --calib-data when unavailable
        log(f"[export] note: no --calib-data given; int8 calibrates on scikit-image's "
            f"{len(calib_data.images)} built-in photographs and their captions. Pass "
            f"--calib-data DIR (your images + captions.csv) for an int8 tuned to your data.")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    failed_report = out.parent / f"{out.name}.{REPORT_NAME}"
    try:
        report = _export_into(model, work, precisions, target, calib_data=calib_data, log=log,
                              **kwargs)
    except ExportValidationError as e:
        msg = str(e)
        if (work / REPORT_NAME).is_file():
            shutil.copyfile(work / REPORT_NAME, failed_report)
            msg = msg.replace(str(work / REPORT_NAME), str(failed_report))
        shutil.rmtree(work, ignore_errors=True)
        raise ExportValidationError(msg + " (no bundle was written)") from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _install(work, out)
    failed_report.unlink(missing_ok=True)
    return report


def _install(work: Path, out: Path) -> None:
    """Move the finished bundle ``work`` to ``out``, replacing an old bundle there."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{work.name.rsplit('-', 1)[-1]}"
        os.replace(out, old)
    try:
        os.replace(work, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _export_into(model, out_dir: str | Path, precisions=("fp32", "fp16", "int8"),
                 target: str = "cpu", *, profile: ExportProfile | None = None,
                 calib_data: str | Path | SplitData | None = None, calib_split: str = "train",
                 calib_count: int | None = None, calib_method: str | None = None,
                 eval_data: str | Path | None = None, eval_split: str | None = None,
                 verify_count: int = 64, allow_degraded: bool = False,
                 thresholds: Thresholds | None = None, towers=("image", "text"),
                 threads: int | None = None, log=print) -> dict:
    """The export itself, into the (new, temporary) directory ``out_dir``."""
    prof = profile or ExportProfile()
    prof = ExportProfile(**{**vars(prof), "precisions": tuple(precisions), "target": target,
                            "calib_count": calib_count or prof.calib_count,
                            "calib_method": calib_method or prof.calib_method})
    if prof.exclude is None:
        prof.exclude = default_exclude(prof.target)
    validate(prof, "export options")
    thresholds = thresholds or Thresholds()
    model = model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (MANIFEST_NAME, REPORT_NAME):
        (out / stale).unlink(missing_ok=True)
    tools = tool_versions()
    calib = None
    if "int8" in prof.precisions:
        if calib_data is None:
            raise ConfigError("int8 needs calibration data: pass --calib-data DIR (a folder of real "
                              "images, with captions.csv for the text tower).")
        calib = _data(calib_data, calib_split)
        if "text" in towers and not calib.captions:
            raise ConfigError(f"{calib_data}: no captions.csv/captions.txt to calibrate the text "
                              f"tower on.")
    files: dict[tuple[str, str], str] = {}
    quant_info: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="edgeclip-export-") as tmp:
        for tower in towers:
            fp32 = out / f"{tower}.fp32.onnx" if "fp32" in prof.precisions else \
                Path(tmp) / f"{tower}.fp32.onnx"
            log(f"[export] {tower} tower -> ONNX opset {prof.opset}")
            export_tower(model, tower, fp32, opset=prof.opset)
            if "fp32" in prof.precisions:
                files[(tower, "fp32")] = fp32.name
            if "fp16" in prof.precisions:
                log(f"[export] {tower} tower -> fp16")
                files[(tower, "fp16")] = convert_fp16(fp32, out / f"{tower}.fp16.onnx").name
            if "int8" in prof.precisions:
                name = f"{tower}.int8.{prof.target}.onnx"
                log(f"[export] {tower} tower -> int8 ({prof.target}, {prof.calib_method}, "
                    f"{prof.calib_count} calibration items)")
                if tower == "image":
                    reader = image_reader(sample(calib.images, prof.calib_count), model.preprocess)
                else:
                    reader = text_reader(sample(calib.captions, prof.calib_count),
                                         model.tokenizer_file, int(model.context_length))
                quant_info[tower] = quantize_int8(
                    fp32, out / name, reader, prof.target, prof.calib_method, tuple(prof.exclude),
                    weight_only=prof.weight_only, moving_average=prof.calib_moving_average,
                    **({"float_dtype": prof.float_dtype, "keep_fp32": tuple(prof.keep_fp32)}
                       if prof.target == "tensorrt" else {}))
                files[(tower, "int8")] = name
    manifest = _manifest(model, out, files, quant_info, prof, tools, towers)
    mirror = manifest.mirror_dict()
    for (tower, _), rel in files.items():
        set_metadata(out / rel, mirror, tower)
    log("[verify] PyTorch vs ONNX Runtime")
    report = verify_export(model, out, files, _verify_data(calib_data, eval_data, eval_split,
                                                           verify_count, calib_split),
                           thresholds, threads=threads)
    report.update({"model_name": manifest.model_name, "source": _provenance(model),
                   "target": prof.target,
                   "profile": prof.name, "created": manifest.created, "tools": tools,
                   "allow_degraded": bool(allow_degraded)})
    if prof.target == "tensorrt" and any(p == "int8" for _, p in files):
        from .qdq_lint import lint_report
        report["qdq_lint"] = lint_report(out, {t: files[(t, "int8")] for t, p in files
                                               if p == "int8"}, quant_info)
        if not report["qdq_lint"]["passed"]:
            report["failures"].append("Q/DQ lint: " + "; ".join(report["qdq_lint"]["findings"][:5]))
            report["passed"] = False
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(format_report(report))
    if not report["passed"] and not allow_degraded:
        raise_on_failure(report, out / REPORT_NAME)
    manifest.files[REPORT_NAME] = ""
    write_manifest(manifest, out)
    return report


def _manifest(model, out: Path, files, quant_info, prof: ExportProfile, tools, towers) -> Manifest:
    tok_src = Path(model.tokenizer_file)
    if "text" in towers:
        if not tok_src.is_file():
            raise ConfigError(f"{tok_src}: the model's tokenizer.json is missing.")
        shutil.copyfile(tok_src, out / TOKENIZER_NAME)
    specs = {}
    for tower in towers:
        inputs, outputs = tensor_specs(model, tower)
        models = []
        for prec in ("fp32", "fp16", "int8"):
            if (tower, prec) in files:
                extra = {"quantization": quant_info[tower]} if prec == "int8" else {}
                models.append(ModelFile(files[(tower, prec)], "onnx", prec,
                                        prof.target if prec == "int8" else "any", dict(tools),
                                        extra))
        specs[tower] = TowerSpec(
            inputs=inputs, outputs=outputs, max_batch=prof.batch_max, models=models,
            preprocess=model.preprocess if tower == "image" else None,
            tokenizer=TokenizerCfg(TOKENIZER_NAME, int(model.context_length))
            if tower == "text" else None)
    extra = {"source": _provenance(model)}
    if getattr(model, "logit_scale", None):  # the model's own (exp'd) scale, for zero-shot
        extra["logit_scale"] = float(model.logit_scale)
    return Manifest(model_name=str(model.name), embed_dim=int(model.embed_dim), towers=specs,
                    created=now_iso(), tools=dict(tools),
                    extra={**extra,
                           "export": {"target": prof.target, "profile": prof.name,
                                      "opset": prof.opset,
                                      "batch": {"min": prof.batch_min, "opt": prof.batch_opt,
                                                "max": prof.batch_max},
                                      "workspace_mib": prof.workspace_mib,
                                      "calibration": {"method": prof.calib_method,
                                                      "count": prof.calib_count},
                                      "exclude": list(prof.exclude)}})


def _provenance(model) -> dict:
    """Where the model came from (manifest ``extra.source`` and report ``source``)."""
    prov = getattr(model, "provenance", None)
    if prov:
        return dict(prov)
    return {"library": "edgeclip", "library_version": __version__,
            "architecture": str(getattr(model, "name", type(model).__name__))}


def _verify_data(calib_data, eval_data, eval_split, count, calib_split) -> VerifyData:
    notes = []
    ev = None
    if eval_data is not None:
        ev = _data(eval_data, eval_split)
        base, notes = ev, [f"eval: {eval_data} split {eval_split or 'all'}"]
    elif isinstance(calib_data, SplitData):
        base, notes = calib_data, ["cosine on the calibration items"]
    elif calib_data is not None:
        base = _data(calib_data, "dev" if calib_split != "dev" else "test")
        notes = [f"cosine on {calib_data} (held out from calibration when it has splits)"]
    else:
        base, notes = builtin_samples(), ["cosine on scikit-image's built-in photographs"]
    return VerifyData(sample(base.images, count), sample(base.captions, count), ev, notes)
