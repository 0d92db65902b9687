"""The ``stfeat`` command. Thin: each command checks its options and calls a library function.

Commands live in one module each and register themselves on :data:`app`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="stfeat",
    help="Spatial transcriptomics from H&E: extract cached foundation-model features, fit light heads.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Optional[Path],
        typer.Option(
            "--config",
            "-c",
            help="YAML config: a section per command (extract:, fit:, ...) plus shared keys. "
            "Precedence: command line > config > defaults. Examples in configs/.",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Spatial transcriptomics from H&E: extract cached foundation-model features, fit light heads."""
    if config is not None:
        from stfeat.config import apply_config
        from stfeat.errors import StfeatError

        try:
            apply_config(ctx, config)
        except StfeatError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None


# Each module defines its commands with @app.command(); importing it registers them.
_COMMAND_MODULES = ["info", "encoders", "extract", "fit", "predict", "compare", "demo", "run", "cache"]
for _name in _COMMAND_MODULES:
    importlib.import_module(f"stfeat.cli.{_name}")


def main() -> None:
    app()


__all__ = ["app", "main"]
