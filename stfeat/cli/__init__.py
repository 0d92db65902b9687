"""The ``stfeat`` command. Thin: each command checks its options and calls a library function.

Commands live in one module each and register themselves on :data:`app`.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="stfeat",
    help="Spatial transcriptomics from H&E: extract cached foundation-model features, fit light heads.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module defines its commands with @app.command(); importing it registers them.
_COMMAND_MODULES = ["info", "encoders", "extract", "fit", "predict", "demo", "run"]
for _name in _COMMAND_MODULES:
    try:
        importlib.import_module(f"stfeat.cli.{_name}")
    except ModuleNotFoundError as exc:  # a command whose module is not written yet
        if exc.name != f"stfeat.cli.{_name}":
            raise


def main() -> None:
    app()


__all__ = ["app", "main"]
