"""``stfeat run CONFIG``: extract, then fit (then predict) from one YAML config.

A thin call of :func:`stfeat.config.run`, which calls the library functions with the config's
values; its parameters are the fields of :class:`stfeat.options.RunOptions` (checked by a test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from stfeat.cli import app
from stfeat.cli._common import build_options, setup_logging, user_errors
from stfeat.options import RunOptions, help_of


def _h(name: str) -> str:
    return help_of(RunOptions, name)


@app.command("run")
@user_errors
def run_cmd(
    ctx: typer.Context,
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help=_h("config_path"))],
    steps: Annotated[Optional[List[str]], typer.Option("--steps", metavar="STEP[,STEP...]", help=_h("steps"))]
    = None,
    dry_run: Annotated[bool, typer.Option("--dry-run/--no-dry-run", help=_h("dry_run"))] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=_h("verbose"))] = False,
) -> None:
    """Run stage one and stage two from one config: extract, then fit, then (optionally) predict.

    Paths in the config are relative to the config file. Each step prints the equivalent
    `stfeat ...` command line and writes resolved_config.yaml next to its outputs.
    """
    from stfeat.config import run

    setup_logging(verbose)
    opts = build_options(RunOptions, ctx.params)
    done = run(opts.config_path, steps=opts.steps, dry_run=opts.dry_run,
               echo=lambda line: typer.echo(line) if not line.startswith("NOTE:") else
               typer.secho(line, fg=typer.colors.YELLOW, err=True))
    if opts.dry_run:
        typer.echo(f"{opts.config_path}: valid; {len(done)} command(s) would run.")
