"""``stfeat encoders [PATTERN]``: the encoder registry as a table (or JSON)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from stfeat.cli import app
from stfeat.cli._common import user_errors

_COLUMNS = ("name", "family", "px", "um/px", "dim", "precision", "gated", "license", "pooling")


def _row(spec) -> list[str]:  # noqa: ANN001 - EncoderSpec
    um = "n/a" if spec.um_per_px is None else f"{spec.um_per_px:g}"
    return [spec.name, spec.family, str(spec.input_px), um, str(spec.embed_dim), spec.precision,
            "yes" if spec.gated else "no", spec.license, spec.pooling]


def format_table(specs) -> str:  # noqa: ANN001 - list[EncoderSpec]
    """Fixed-width text table of specs, one row each."""
    rows = [list(_COLUMNS)] + [_row(s) for s in specs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@app.command()
@user_errors
def encoders(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter on names, e.g. 'uni*' or '*optimus*'.")] = "*",
    as_json: Annotated[bool, typer.Option("--json", help="Print full specs as JSON (hub id, mean/std, kwargs...).")]
    = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Tracebacks of internal errors.")] = False,
) -> None:
    """List registered encoders: input px, um/px trained at, embedding dim, precision, gated, license.

    Any of these names works as --encoder, and so do 'timm:NAME', 'hf-hub:ORG/NAME' and a local weights
    file. Gated models need access on their Hugging Face page and `huggingface-cli login`, or --weights.
    """
    from stfeat.encoders import list_encoders
    from stfeat.encoders.base import aliases_of

    specs = list_encoders(pattern)
    if not specs:
        typer.secho(f"error: no encoder matches {pattern!r}; run `stfeat encoders` for the full list.",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps([dict(s.to_dict(), aliases=aliases_of(s.name)) for s in specs], indent=2))
        return
    typer.echo(format_table(specs))
