"""``stfeat fit``: stage two from the command line (a thin layer over :func:`stfeat.fitting.fit`)."""

from __future__ import annotations

import enum
import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from stfeat import _constants as K
from stfeat.cli import app
from stfeat.cli._common import parse_scales, setup_logging, user_errors
from stfeat.errors import StfeatError


def _check(parse, value: str, hint: str) -> None:
    try:
        parse(value)
    except StfeatError:
        raise
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=hint) from None


class Transform(str, enum.Enum):
    log1p_cp10k = "log1p_cp10k"
    cp10k = "cp10k"
    log1p = "log1p"
    raw = "raw"


def _split_list(text: str, hint: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise typer.BadParameter("give at least one name", param_hint=hint)
    return items


def _parse_head_params(text: str | None, heads: list[str]) -> dict[str, dict]:
    if not text:
        return {}
    p = Path(text)
    raw = p.read_text() if p.is_file() else text
    try:
        params = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not valid JSON ({exc}); e.g. '{{\"lgbm\": {{\"n_estimators\": 200}}}}'",
                                 param_hint="--head-params") from None
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise typer.BadParameter("expected a JSON object: head name -> {parameter: value}", param_hint="--head-params")
    unknown = sorted(set(params) - set(heads))
    if unknown:
        raise typer.BadParameter(f"parameters for heads {unknown} that are not in --head {','.join(heads)}",
                                 param_hint="--head-params")
    return params


@app.command("fit")
@user_errors
def fit_cmd(
    path: Annotated[Path, typer.Argument(help="A sample folder, a folder of samples, or a manifest (.csv/.yaml).")],
    encoder: Annotated[str, typer.Option("--encoder", "-e", help="Encoder name(s) of the caches, comma-separated "
                                         "(several give one comparison table).")],
    head: Annotated[str, typer.Option("--head", help="Head(s), comma-separated: hest-ridge, ridge, lgbm, mlp, "
                                      "attention, knn.")] = "hest-ridge",
    cache_dir: Annotated[Optional[Path], typer.Option(help=f"Cache root of `stfeat extract`; default "
                                                      f"${K.ENV_CACHE_DIR} or ./stfeat_cache.")] = None,
    scales: Annotated[Optional[str], typer.Option(help="Fields of view (um) to use, comma-separated; default all "
                                                  "cached.")] = None,
    genes: Annotated[str, typer.Option(help="Target genes, chosen on each fold's training samples: hvg:K (top-K "
                                       "variance of log1p cp10k), hex:K (top-K mean), file:PATH, common.")] = "hvg:50",
    transform: Annotated[Transform, typer.Option(help="Target transform; log1p_cp10k uses the library size over "
                                                 "all genes.")] = Transform.log1p_cp10k,
    split: Annotated[str, typer.Option(help="auto, lopo, group-kfold:K or loso (only without patient ids or with "
                                       "a single patient).")] = "auto",
    k_neighbors: Annotated[int, typer.Option(min=0, help="Neighbour tokens per spot (attention) and for "
                                             "--neighbor-mean.")] = 8,
    neighbor_mean: Annotated[bool, typer.Option("--neighbor-mean", help="Append the neighbours' mean features "
                                                "to flat heads' input.")] = False,
    head_params: Annotated[Optional[str], typer.Option(help="JSON (or a JSON file): head -> {param: value}.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("stfeat_fit"),
    seed: Annotated[int, typer.Option(help="random_state of the heads.")] = 0,
    top_k: Annotated[int, typer.Option(min=1, help="k of the extra top-k HVG / highly-expressed summaries.")] = 10,
    save_fold_models: Annotated[bool, typer.Option("--save-fold-models", help="Also save each fold's model.")] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNG plots.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Fit heads on cached features with patient-grouped evaluation; refit on all samples for predict.

    Writes metrics (JSON, CSV, per-gene CSV), a comparison table (encoder x head, mean Pearson r per
    held-out sample), predictions (h5ad), the fitted models and plots into --out.
    """
    from stfeat.evaluate import parse_split
    from stfeat.fitting import fit_report
    from stfeat.targets import GeneRule

    setup_logging(verbose)
    encoders = _split_list(encoder, "--encoder")
    heads = _split_list(head, "--head")
    _check(parse_split, split, "--split")
    _check(GeneRule.parse, genes, "--genes")
    from stfeat.heads import HEADS

    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        raise typer.BadParameter(f"unknown head(s) {unknown}; choose from {', '.join(sorted(HEADS))}",
                                 param_hint="--head")
    root = cache_dir if cache_dir is not None else Path(os.environ.get(K.ENV_CACHE_DIR, "stfeat_cache"))
    try:
        res = fit_report(path, encoder=encoders, cache_dir=root, head=heads, head_params=_parse_head_params(head_params, heads),
                  scales_um=parse_scales(scales), genes=genes, transform=transform.value, split=split,
                  k_neighbors=k_neighbors, neighbor_mean=neighbor_mean, out_dir=out, seed=seed, metric_top_k=top_k,
                  save_fold_models=save_fold_models, plots=plots)
    except ValueError as exc:  # user-level problems raised as plain ValueError (e.g. a split that would leak)
        if isinstance(exc, (typer.BadParameter, StfeatError)):
            raise
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    from stfeat.config import save_resolved_config

    save_resolved_config(None, out)  # rerun with `stfeat --config OUT/resolved_config.yaml fit`
    for note in res.notes:
        typer.secho(f"NOTE: {note}", fg=typer.colors.YELLOW, err=True)
    split_info = res.metrics["split"]
    over = "sections" if split_info["mode"] == "loso" else split_info["group_kind"] + "s"
    typer.echo(f"split: {split_info['mode']} over {over}; genes: "
               f"{res.metrics['genes']['description']}; transform: {res.metrics['transform']}")
    typer.echo("mean Pearson r per held-out sample (columns) and mean over folds:")
    typer.echo(res.comparison.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    typer.echo(f"results in {out}/ (metrics.json, metrics.csv, per_gene.csv, comparison.csv, predictions/, "
               f"models/, plots/)")
