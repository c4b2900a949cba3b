"""``edgeclip info`` and ``edgeclip embed``: the runtime's own commands (no torch)."""

from __future__ import annotations

import json
import sys

import click

from .manifest import load_bundle, resolve_bundle_path


def check_text_args(values, what: str) -> None:
    """InputError naming the command-line argument that is not valid text (undecodable bytes in
    ``sys.argv`` reach Python as unpaired surrogates, which no tokenizer takes)."""
    from .errors import InputError
    from .tokenize import invalid_text_reason
    values = list(values)
    for i, v in enumerate(values):
        reason = invalid_text_reason(v) if isinstance(v, str) else None
        if reason is not None:
            n = f" {i + 1}" if len(values) > 1 else ""
            raise InputError(f"{what} argument{n} {ascii(v)[:80]} is {reason} (check the "
                             f"terminal's or the shell script's encoding).", index=i,
                             item=ascii(v)[:80], reason=reason)


def _model_arg(model):
    from .embedder import _resolve_path
    return _resolve_path(model)


@click.command("info")
@click.argument("bundle", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--no-verify", is_flag=True,
              help="Skip the sha256 check of every file and the graph-vs-manifest check.")
def info(bundle, as_json, no_verify):
    """Show a bundle's manifest: towers, precisions, files (default: the built-in model)."""
    path = _model_arg(bundle)
    bundle_dir, _ = resolve_bundle_path(path)
    manifest, bundle_dir = load_bundle(bundle_dir, check_hashes=not no_verify)
    if not no_verify:
        from .backends.checks import check_bundle_graphs
        check_bundle_graphs(manifest, bundle_dir)  # each ONNX graph's I/O and metadata
    if as_json:
        click.echo(json.dumps(manifest.to_dict(), indent=2))
        return
    click.echo(f"bundle     {bundle_dir}")
    click.echo(f"model      {manifest.model_name}  (embedding dim {manifest.embed_dim}, format "
               f"v{manifest.format_version}, created {manifest.created or '?'})")
    for name, tower in manifest.towers.items():
        ins = ", ".join(f"{t.name}:{t.dtype}{t.shape}" for t in tower.inputs)
        click.echo(f"{name:<10} inputs {ins}; max batch {tower.max_batch}")
        if tower.preprocess is not None:
            p = tower.preprocess
            click.echo(f"{'':<10} preprocess {p.size[0]}x{p.size[1]} {p.resize_mode} "
                       f"{p.interpolation} crop={p.crop}")
        if tower.tokenizer is not None:
            click.echo(f"{'':<10} tokenizer {tower.tokenizer.file}, context "
                       f"{tower.tokenizer.context_length}")
        for m in tower.models:
            size = (bundle_dir / m.path).stat().st_size / 1e6
            click.echo(f"{'':<10} {m.precision:<5} {m.format:<9} target={m.target:<9} "
                       f"{size:7.2f} MB  {m.path}")
    click.echo("files      all present" + ("" if no_verify else ", sha256 verified; ONNX graphs "
                                                     "match the manifest"))


@click.command("embed")
@click.option("--model", "model", default=None, help="Bundle path (default: the built-in model).")
@click.option("--image", "images", multiple=True, help="An image file (repeatable).")
@click.option("--text", "texts", multiple=True, help="A text (repeatable).")
@click.option("--backend", default="auto", show_default=True)
@click.option("--precision", default=None, help="fp32, fp16 or int8 (default: fastest here).")
@click.option("--json", "as_json", is_flag=True, help="Print the embeddings as JSON.")
def embed(model, images, texts, backend, precision, as_json):
    """Embed images or texts with a bundle and print the embeddings."""
    from .embedder import Embedder
    from .errors import EdgeClipError

    if not images and not texts:
        raise EdgeClipError("nothing to embed: pass --image FILE or --text TEXT (repeatable).")
    check_text_args(texts, "--text")  # before loading the model
    towers = tuple(t for t, have in (("image", images), ("text", texts)) if have)
    emb = Embedder(model, backend=backend, precision=precision, towers=towers)
    rows = []
    if images:
        vecs = emb.embed_images(list(images), progress=len(images) > 32)
        rows += [{"image": p, "embedding": v} for p, v in zip(images, vecs)]
    if texts:
        vecs = emb.embed_texts(list(texts), progress=len(texts) > 256)
        rows += [{"text": t, "embedding": v} for t, v in zip(texts, vecs)]
    if as_json:
        json.dump({"model": emb.model_name, "dim": emb.dim, "backend": emb.backend,
                   "precision": emb.precision,
                   "items": [{**{k: v for k, v in r.items() if k != "embedding"},
                              "embedding": [round(float(x), 6) for x in r["embedding"]]}
                             for r in rows]}, sys.stdout)
        sys.stdout.write("\n")
        return
    click.echo(f"# {emb.model_name} dim={emb.dim} backend={emb.backend} precision={emb.precision}")
    for r in rows:
        key = r.get("image") or r.get("text")
        v = r["embedding"]
        head = " ".join(f"{x:+.4f}" for x in v[:6])
        click.echo(f"{key}\t[{head} ...]")
