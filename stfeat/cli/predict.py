"""``stfeat predict``: apply a fitted model to a sample (a thin layer over :func:`stfeat.prediction.predict`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from stfeat.cli import app
from stfeat.cli._common import setup_logging, user_errors
from stfeat.errors import StfeatError


@app.command("predict")
@user_errors
def predict_cmd(
    model_dir: Annotated[Path, typer.Argument(help="The --out folder of `stfeat fit`, or one of its "
                                              "models/ENCODER__HEAD folders.")],
    sample: Annotated[Path, typer.Argument(help="One sample (folder or file) to predict.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output .h5ad (a PNG map is written "
                                                "beside it); default {sample_id}_predicted.h5ad.")] = None,
    grid: Annotated[Optional[float], typer.Option("--grid", help="Predict on a grid with this step (um) over "
                                                  "the tissue instead of at the measured spots.")] = None,
    head: Annotated[Optional[str], typer.Option(help="Which head's model, when the fit output holds several.")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Where the sample's cached features are; default the "
                                                      "cache the model was fitted on.")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Encoder weights file, when features must be "
                                                    "extracted.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N for extraction.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Points per extraction batch.")] = None,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Write a PNG map beside the .h5ad.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Predict expression for a sample's spots (features from the cache, else extracted), or on a
    dense --grid over its tissue; writes an AnnData (X = predicted, layers measured/predicted)."""
    from stfeat.prediction import predict

    setup_logging(verbose)
    if grid is not None and not grid > 0:
        raise typer.BadParameter("must be a positive number of micrometres", param_hint="--grid")
    out = out or Path(f"{sample.name.split('.')[0]}_predicted{'_grid' if grid else ''}.h5ad")
    try:
        a = predict(model_dir, sample, out=out, grid_um=grid, cache_dir=cache_dir, head=head, weights=weights,
                    device=device, batch_size=batch_size, plot=plot)
    except ValueError as exc:  # user-level problems (e.g. a grid too fine) raised as plain ValueError
        if isinstance(exc, (typer.BadParameter, StfeatError)):
            raise
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    from stfeat.config import save_resolved_config

    save_resolved_config(None, out.parent)
    kind = f"{a.n_obs} grid points every {grid:g} um" if grid else f"{a.n_obs} spots"
    typer.echo(f"{a.uns['stfeat']['sample_id']}: predicted {a.n_vars} genes at {kind} -> {out}"
               + (f" (+ {out.with_suffix('.png')})" if plot else ""))
