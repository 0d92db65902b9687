"""``stfeat predict``: apply a fitted model to a sample (a thin layer over :func:`stfeat.prediction.predict`).

Its parameters are the fields of :class:`stfeat.options.PredictOptions` (checked by a test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from stfeat.cli import app
from stfeat.cli._common import build_options, setup_logging, user_errors
from stfeat.options import PredictOptions, help_of


def _h(name: str) -> str:
    return help_of(PredictOptions, name)


@app.command("predict")
@user_errors
def predict_cmd(
    ctx: typer.Context,
    model_dir: Annotated[Path, typer.Argument(help=_h("model_dir"))],
    sample: Annotated[Path, typer.Argument(help=_h("sample"))],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help=_h("out"))] = None,
    grid_um: Annotated[Optional[float], typer.Option("--grid-um", help=_h("grid_um"))] = None,
    grid_max_points: Annotated[Optional[int], typer.Option("--grid-max-points", help=_h("grid_max_points"))] = None,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help=_h("cache_dir"))] = None,
    head: Annotated[Optional[str], typer.Option("--head", help=_h("head"))] = None,
    encoder: Annotated[Optional[str], typer.Option("--encoder", "-e", help=_h("encoder"))] = None,
    weights: Annotated[Optional[Path], typer.Option("--weights", help=_h("weights"))] = None,
    device: Annotated[Optional[str], typer.Option("--device", help=_h("device"))] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help=_h("batch_size"))] = None,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help=_h("plot"))] = True,
    map_genes: Annotated[Optional[List[str]], typer.Option("--map-genes", metavar="K|all|GENE[,GENE...]",
                                                           help=_h("map_genes"))] = None,
    spatialdata: Annotated[bool, typer.Option("--spatialdata/--no-spatialdata", help=_h("spatialdata"))] = False,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle/--no-allow-pickle", help=_h("allow_pickle"))] = False,
    image: Annotated[Optional[Path], typer.Option("--image", help=_h("image"))] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=_h("verbose"))] = False,
) -> None:
    """Predict expression for a sample's spots (features from the cache, else extracted), or on a
    dense --grid-um over its tissue; writes an AnnData (X = predicted, layers measured/predicted)."""
    from stfeat.config import call, predict_out
    from stfeat.resolved_config import save_resolved_config

    setup_logging(verbose)
    opts = build_options(PredictOptions, ctx.params)
    opts.out = predict_out(opts)
    a = call("predict", opts)
    save_resolved_config(ctx, opts.out.parent, options=opts)
    kind = f"{a.n_obs} grid points every {opts.grid_um:g} um" if opts.grid_um else f"{a.n_obs} spots"
    maps = a.uns["stfeat"].get("map_files", "")
    zarr = a.uns["stfeat"].get("spatialdata", "")
    typer.echo(f"{a.uns['stfeat']['sample_id']}: predicted {a.n_vars} genes at {kind} -> {opts.out}"
               + (f" (+ maps in {opts.out.parent}: {maps})" if opts.plot and maps else "")
               + (f" (+ SpatialData {opts.out.parent / zarr})" if zarr else ""))
