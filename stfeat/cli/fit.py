"""``stfeat fit``: stage two from the command line (a thin layer over the library's fit).

Its parameters are the fields of :class:`stfeat.options.FitOptions` (checked by a test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from stfeat.cli import app
from stfeat.cli._common import build_options, setup_logging, user_errors
from stfeat.options import TRANSFORMS, FitOptions, help_of



def _h(name: str) -> str:
    return help_of(FitOptions, name)


@app.command("fit")
@user_errors
def fit_cmd(
    ctx: typer.Context,
    samples: Annotated[Path, typer.Argument(help=_h("samples"))],
    encoder: Annotated[List[str], typer.Option("--encoder", "-e", metavar="NAME[,NAME...]", help=_h("encoder"))],
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help=_h("cache_dir"))] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help=_h("image"))] = None,
    head: Annotated[List[str], typer.Option("--head", metavar="HEAD[,HEAD...]", help=_h("head"))]
    = ["ridge"],  # noqa: B006 - typer's way of a list default
    head_params: Annotated[Optional[str], typer.Option("--head-params", metavar="JSON", help=_h("head_params"))]
    = None,
    scales_um: Annotated[Optional[List[str]], typer.Option("--scales-um", metavar="UM[,UM...]",
                                                           help=_h("scales_um"))] = None,
    genes: Annotated[str, typer.Option("--genes", help=_h("genes"))] = "hvg:50",
    transform: Annotated[str, typer.Option("--transform", help=_h("transform") + f" One of {', '.join(TRANSFORMS)}.")]
    = "log1p_cp10k",
    split: Annotated[str, typer.Option("--split", help=_h("split"))] = "auto",
    k_neighbors: Annotated[int, typer.Option("--k-neighbors", help=_h("k_neighbors"))] = 8,
    neighbor_mean: Annotated[bool, typer.Option("--neighbor-mean/--no-neighbor-mean", help=_h("neighbor_mean"))]
    = False,
    neighbor_scale: Annotated[Optional[float], typer.Option("--neighbor-scale", help=_h("neighbor_scale"))] = None,
    standardize: Annotated[str, typer.Option("--standardize", help=_h("standardize") + " One of none, slide.")]
    = "slide",
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help=_h("out_dir"))] = Path("stfeat_fit"),
    seed: Annotated[int, typer.Option("--seed", help=_h("seed"))] = 0,
    metric_top_k: Annotated[int, typer.Option("--metric-top-k", help=_h("metric_top_k"))] = 10,
    save_fold_models: Annotated[bool, typer.Option("--save-fold-models/--no-save-fold-models",
                                                   help=_h("save_fold_models"))] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help=_h("plots"))] = True,
    conformal: Annotated[Optional[float], typer.Option("--conformal", metavar="COVERAGE", help=_h("conformal"))]
    = 0.9,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=_h("verbose"))] = False,
) -> None:
    """Fit heads on cached features with patient-grouped evaluation; refit on all samples for predict.

    Writes metrics (JSON, CSV, per-gene CSV), a comparison table (encoder x head, mean Pearson r per
    held-out sample), predictions (h5ad), the fitted models and plots into --out-dir.
    """
    from stfeat.config import call, fit_summary
    from stfeat.resolved_config import save_resolved_config

    setup_logging(verbose)
    opts = build_options(FitOptions, ctx.params)
    res = call("fit", opts)
    save_resolved_config(ctx, opts.out_dir, options=opts)  # rerun: stfeat --config OUT/resolved_config.yaml fit
    for note in res.notes:
        typer.secho(f"NOTE: {note}", fg=typer.colors.YELLOW, err=True)
    for line in fit_summary(res):
        typer.echo(line)
    typer.echo(f"results in {opts.out_dir}/ (metrics.json, metrics.csv, per_gene.csv, comparison.csv, "
               "predictability.csv, predictable_genes.txt, domains.csv, predictions/, models/, plots/)")
