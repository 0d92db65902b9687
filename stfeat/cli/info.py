"""``stfeat info PATH``: what a sample, a folder of samples, a manifest or a feature cache holds."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from stfeat.cli import app
from stfeat.cli._common import user_errors


def describe_sample(sample) -> str:  # noqa: ANN001 - Sample, imported lazily
    """A short multi-line description of a :class:`~stfeat.io.Sample`."""
    lines = [
        f"sample      {sample.sample_id}",
        f"format      {sample.format}",
        f"source      {sample.meta.get('source_path', '')}",
        f"patient     {sample.patient or 'unknown'}",
        f"spots       {sample.n_spots}",
        f"genes       {sample.adata.n_vars}",
    ]
    s = sample.slide
    if s is None:
        lines.append("image       none")
    else:
        lines.append(f"image       {s.path}")
        iw, ih = s.image_dimensions
        size = f"{iw} x {ih} px"
        if s.scale != 1.0:
            size += f" at {s.scale:g} px per full-res px (covers {s.dimensions[0]} x {s.dimensions[1]} full-res px)"
        lines.append(f"image size  {size}")
        levels = ", ".join(f"{w}x{h}" for w, h in s.level_dimensions)
        lines.append(f"levels      {s.level_count} ({levels})")
    lines.append(f"um/px       {sample.um_per_px:.4f} ({sample.um_per_px_source})")
    for w in sample.warnings:
        lines.append(f"warning     {w}")
    return "\n".join(lines)


@app.command()
@user_errors
def info(
    path: Annotated[Path, typer.Argument(help="A sample, a folder of samples, a manifest, or a feature cache .h5.")],
    image: Annotated[Optional[Path], typer.Option(help="H&E image (for one sample), overriding the one found.")] = None,
    um_per_px: Annotated[
        Optional[float], typer.Option("--um-per-px", help="Micrometres per full-resolution pixel (wins over files).")
    ] = None,
    sample_id: Annotated[Optional[str], typer.Option("--sample-id", help="Pick one sample of a folder.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Tracebacks of internal errors.")] = False,
) -> None:
    """Print format, spots, genes, image size, pyramid levels, um/px and its source, patient and warnings."""
    if path.suffix == ".h5" and path.is_file() and not _is_10x_matrix(path):
        from stfeat.cache import describe_cache

        typer.echo(describe_cache(path))
        return
    from stfeat.io import resolve_samples, with_image

    refs = resolve_samples(path, allow_normalized=True, **({"um_per_px": um_per_px} if um_per_px is not None else {}))
    if sample_id is not None:
        refs = [r for r in refs if r.sample_id == sample_id] or _no_such(path, sample_id, refs)
    refs = with_image(refs, image, path)  # the one --image rule of extract, fit, predict and info
    from stfeat.errors import StfeatError

    failed = 0
    for i, ref in enumerate(refs):
        if i:
            typer.echo("")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # they are printed in the block (uns["stfeat"]["warnings"])
                sample = ref.load()
        except StfeatError as exc:
            if len(refs) == 1:
                raise
            failed += 1  # one bad sample of many: say so in its block and go on with the others
            typer.echo(f"sample      {ref.sample_id}")
            typer.secho(f"error       {exc}", fg=typer.colors.RED)
            continue
        typer.echo(describe_sample(sample))
    if failed:
        typer.secho(f"error: {failed} of {len(refs)} samples could not be read (see above).", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


def _no_such(path: Path, sample_id: str, refs: list) -> list:
    from stfeat.errors import InputError

    raise InputError(path, f"no sample {sample_id!r} here.", f"use one of {[r.sample_id for r in refs]}.")


def _is_10x_matrix(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "matrix" in f
    except OSError:
        return False
