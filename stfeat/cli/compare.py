"""``stfeat compare``: feature variant x head across patients (a thin layer over :func:`stfeat.variants.compare`).

Its parameters are the fields of :class:`stfeat.options.CompareOptions` (checked by a test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from stfeat.cli import app
from stfeat.cli._common import build_options, setup_logging, user_errors
from stfeat.options import TRANSFORMS, CompareOptions, help_of


def _h(name: str) -> str:
    return help_of(CompareOptions, name)


@app.command("compare")
@user_errors
def compare_cmd(
    ctx: typer.Context,
    samples: Annotated[Path, typer.Argument(help=_h("samples"))],
    encoder: Annotated[str, typer.Option("--encoder", "-e", help=_h("encoder"))],
    weights: Annotated[Optional[Path], typer.Option("--weights", help=_h("weights"))] = None,
    variant: Annotated[List[str], typer.Option("--variant", metavar="VARIANT[,VARIANT...]", help=_h("variant"))]
    = ["plain"],  # noqa: B006 - typer's way of a list default
    head: Annotated[List[str], typer.Option("--head", metavar="HEAD[,HEAD...]", help=_h("head"))]
    = ["ridge"],  # noqa: B006
    head_params: Annotated[Optional[str], typer.Option("--head-params", metavar="JSON", help=_h("head_params"))]
    = None,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help=_h("cache_dir"))] = None,
    scales_um: Annotated[Optional[List[str]], typer.Option("--scales-um", metavar="UM[,UM...]",
                                                           help=_h("scales_um"))] = None,
    genes: Annotated[str, typer.Option("--genes", help=_h("genes"))] = "hvg:50",
    transform: Annotated[str, typer.Option("--transform", help=_h("transform") + f" One of {', '.join(TRANSFORMS)}.")]
    = "log1p_cp10k",
    within: Annotated[bool, typer.Option("--within/--no-within", help=_h("within"))] = True,
    extract: Annotated[bool, typer.Option("--extract/--no-extract", help=_h("extract"))] = True,
    device: Annotated[Optional[str], typer.Option("--device", help=_h("device"))] = None,
    num_workers: Annotated[Optional[int], typer.Option("--num-workers", help=_h("num_workers"))] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help=_h("batch_size"))] = None,
    seed: Annotated[int, typer.Option("--seed", help=_h("seed"))] = 0,
    out_dir: Annotated[Optional[Path], typer.Option("--out-dir", "-o", help=_h("out_dir"))] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=_h("verbose"))] = False,
) -> None:
    """Cross-validate feature variants x heads across patients (and within them); print the table.

    Columns: every leave-one-patient-out fold (train X -> test Y, the numbers of record) and their mean,
    leave-one-section-out within each patient with several sections, extraction and fit seconds.
    """
    from stfeat.config import call

    setup_logging(verbose)
    opts = build_options(CompareOptions, ctx.params)
    res = call("compare", opts)
    typer.echo(res.to_markdown())
    for note in res.notes:
        typer.echo(f"- {note}")
    best = res.best()
    typer.echo(f"best across patients: {best['variant']} x {best['head']} "
               f"(mean r {best['mean across patients']:.3f})")
    if opts.out_dir is not None:
        typer.echo(f"table in {opts.out_dir}/ (compare.csv, compare.md, compare.json)")
