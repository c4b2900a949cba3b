"""``edgeclip classify``: zero-shot classification of image files (no torch)."""

from __future__ import annotations

import json
import sys

import click


@click.command("classify")
@click.argument("images", nargs=-1, required=True)
@click.option("--labels", required=True,
              help='Comma-separated class names, e.g. "cat,dog,car".')
@click.option("--template", "templates", multiple=True,
              help="A prompt with {} for the label (repeatable; default: 10 photo prompts).")
@click.option("--model", default=None, help="Bundle path (default: the built-in model).")
@click.option("-k", "top_k", default=3, show_default=True, help="Labels shown per image.")
@click.option("--backend", default="auto", show_default=True)
@click.option("--precision", default=None, help="fp32, fp16 or int8 (default: fastest here).")
@click.option("--json", "as_json", is_flag=True,
              help="Print every label's probability per image as JSON.")
def classify(images, labels, templates, model, top_k, backend, precision, as_json):
    """Zero-shot classification: which of --labels each IMAGE shows, with probabilities.

    Unreadable images are reported and skipped; the others are still classified."""
    from .embedder import Embedder, expand_path
    from .errors import EdgeClipError
    from .zeroshot import check_templates, parse_labels

    names = parse_labels(labels)
    tmpl = check_templates(list(templates) if templates else None)
    if top_k < 1:
        raise EdgeClipError(f"-k {top_k}: show at least one label (k >= 1).")
    paths = [str(expand_path(p)) for p in images]
    emb = Embedder(model, backend=backend, precision=precision)
    probs, skipped = emb.classify(paths, names, templates=tmpl, on_error="skip",
                                  progress=len(paths) > 32)
    bad = {s.index: s.reason for s in skipped}
    good = [i for i in range(len(paths)) if i not in bad]
    if not good:
        raise EdgeClipError(f"no image could be read ({len(paths)} given; first: "
                            f"{paths[0]}: {bad[0]}).")
    if as_json:
        rows = []
        for r, i in enumerate(good):
            p = probs[r]
            rows.append({"image": images[i], "label": names[int(p.argmax())],
                         "probs": {n: round(float(x), 6) for n, x in zip(names, p)}})
        json.dump({"model": emb.model_name, "logit_scale": emb.logit_scale,
                   "templates": list(tmpl), "labels": names, "results": rows,
                   "skipped": [{"image": images[i], "reason": bad[i]} for i in sorted(bad)]},
                  sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        k = min(top_k, len(names))
        for r, i in enumerate(good):
            p = probs[r]
            order = p.argsort()[::-1][:k]
            click.echo(f"{images[i]}\t" + "  ".join(f"{names[j]} {p[j]:.3f}" for j in order))
    for i in sorted(bad):
        click.echo(f"skipped {images[i]}: {bad[i]}", err=True)
