"""``stfeat demo``: the whole pipeline, offline, on built-in synthetic data (or ``--data``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from stfeat.cli import app
from stfeat.cli._common import setup_logging, user_errors


def _split(text: str, hint: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise typer.BadParameter("give at least one value", param_hint=hint)
    return items


def _scales(text: str) -> list[float]:
    try:
        vals = [float(v) for v in _split(text, "--scales-um")]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of micrometres, e.g. 112,224,448",
                                 param_hint="--scales-um") from None
    if any(v <= 0 for v in vals):
        raise typer.BadParameter("give positive micrometres, e.g. 112,224,448", param_hint="--scales-um")
    return vals


@app.command("demo")
@user_errors
def demo_cmd(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (data/, cache/, fit/, "
                                      "demo_summary.json).")] = Path("stfeat_demo"),
    data: Annotated[Optional[Path], typer.Option(help="Your own sample, folder of samples or manifest; default: "
                                                 "a generated SYNTHETIC dataset.")] = None,
    encoder: Annotated[str, typer.Option("--encoder", "-e", help="Encoder; the default needs no weights.")]
    = "classical",
    weights: Annotated[Optional[Path], typer.Option(help="Local weights file for --encoder.")] = None,
    scales_um: Annotated[str, typer.Option("--scales-um", help="Fields of view in micrometres, comma-separated.")]
    = "112,224,448",
    head: Annotated[Optional[str], typer.Option("--head", help="Heads, comma-separated; default "
                                                "hest-ridge,ridge,knn (lgbm, attention: minutes more on CPU).")] = None,
    genes: Annotated[str, typer.Option(help="Target genes: hvg:K, hex:K, file:PATH or common.")] = "hvg:50",
    split: Annotated[str, typer.Option(help="auto (leave one patient out), lopo, group-kfold:K or loso.")] = "auto",
    um_per_px: Annotated[Optional[float], typer.Option(help="Micrometres per pixel, for data that lacks it.")]
    = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N; default CUDA when present.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data and of the heads.")] = 0,
    quick: Annotated[bool, typer.Option("--quick", help="Smaller synthetic dataset and two heads (also "
                                        "$STFEAT_DEMO_QUICK=1).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run the whole pipeline end to end: extract at several scales, fit heads, evaluate, predict.

    With no --data it uses a small SYNTHETIC H&E + spatial transcriptomics dataset that stfeat
    generates (3 patients x 2 sections, sample ids SYN-...), so it runs offline with no weights in a
    few minutes on a laptop CPU. Evaluation leaves one patient out at a time.
    """
    from stfeat.resolved_config import save_resolved_config
    from stfeat.demo import next_steps, quick_mode, run_demo
    from stfeat.datasets import SYNTHETIC_BANNER

    setup_logging(verbose)
    scale_list = _scales(scales_um)
    heads = _split(head, "--head") if head else None
    if data is None:
        typer.secho("=" * 78, fg=typer.colors.YELLOW)
        typer.secho(SYNTHETIC_BANNER, fg=typer.colors.YELLOW, bold=True)
        typer.secho("=" * 78, fg=typer.colors.YELLOW)
    res = run_demo(out, data=data, encoder=encoder, weights=weights, scales_um=scale_list, heads=heads, genes=genes,
                   split=split, um_per_px=um_per_px, device=device, seed=seed, quick=quick or quick_mode(),
                   on_step=typer.echo)
    save_resolved_config(ctx, res.out_dir)
    for note in res.notes:
        typer.secho(f"NOTE: {note}", fg=typer.colors.YELLOW, err=True)
    split_info = res.metrics.get("split", {})
    typer.echo("")
    typer.echo(f"Mean Pearson r over held-out {split_info.get('group_kind', 'group')}s "
               f"({split_info.get('mode', split)} split, genes {res.metrics.get('genes', {}).get('description', genes)}):")
    if res.comparison is not None:
        typer.echo(res.comparison.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    typer.echo("")
    tag = "SYNTHETIC data" if res.synthetic else "your data"
    typer.echo(f"Done in {sum(res.seconds.values()):.0f} s on {tag}. Everything is under {res.out_dir}/:")
    if res.synthetic:
        typer.echo(f"  data/       the generated dataset (HEST-1k layout: st/, wsis/, metadata/, manifest.csv)")
    typer.echo(f"  cache/      features: {len(res.cache_files)} HDF5 file(s) under cache/{res.encoder}*/ "
               "(`stfeat info FILE.h5`)")
    typer.echo("  fit/        metrics.json, metrics.csv, per_gene.csv, comparison.csv, predictions/, models/, plots/")
    if res.prediction is not None:
        typer.echo(f"  {res.prediction.relative_to(res.out_dir)}  a refit model's prediction as AnnData")
    typer.echo("  demo_summary.json, resolved_config.yaml")
    typer.echo("")
    typer.echo("Next, on real data:")
    for line in next_steps(res):
        typer.echo(f"  {line}")
