"""``stfeat extract``: stage one from the command line (a thin layer over the library's extraction).

Its parameters are the fields of :class:`stfeat.options.ExtractOptions` (checked by a test).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from stfeat.cli import app
from stfeat.cli._common import build_options, setup_logging, user_errors
from stfeat.options import DTYPES, ExtractOptions, help_of

def _h(name: str) -> str:
    return help_of(ExtractOptions, name)


@app.command("extract")
@user_errors
def extract_cmd(
    ctx: typer.Context,
    samples: Annotated[Path, typer.Argument(help=_h("samples"))],
    encoder: Annotated[str, typer.Option("--encoder", "-e", help=_h("encoder"))],
    weights: Annotated[Optional[Path], typer.Option("--weights", help=_h("weights"))] = None,
    scales_um: Annotated[List[str], typer.Option("--scales-um", metavar="UM[,UM...]", help=_h("scales_um"))]
    = ["112", "224", "448"],  # noqa: B006 - typer's way of a list default
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help=_h("cache_dir"))] = None,
    k_neighbors: Annotated[int, typer.Option("--k-neighbors", help=_h("k_neighbors"))] = 8,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help=_h("batch_size"))] = None,
    num_workers: Annotated[Optional[int], typer.Option("--num-workers", help=_h("num_workers"))] = None,
    device: Annotated[Optional[str], typer.Option("--device", help=_h("device"))] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite/--no-overwrite", help=_h("overwrite"))] = False,
    shard: Annotated[Optional[str], typer.Option("--shard", help=_h("shard"))] = None,
    dtype: Annotated[str, typer.Option("--dtype", help=_h("dtype") + f" One of {', '.join(DTYPES)}.")] = "float16",
    um_per_px: Annotated[Optional[float], typer.Option("--um-per-px", help=_h("um_per_px"))] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help=_h("image"))] = None,
    pretrained: Annotated[bool, typer.Option("--pretrained/--no-pretrained", help=_h("pretrained"))] = True,
    mode: Annotated[str, typer.Option("--mode", help=_h("mode") + " One of auto, crop, dense.")] = "auto",
    stain_norm: Annotated[str, typer.Option("--stain-norm", help=_h("stain_norm"))] = "none",
    stain_reference: Annotated[Optional[Path], typer.Option("--stain-reference", help=_h("stain_reference"))] = None,
    tta: Annotated[str, typer.Option("--tta", help=_h("tta"))] = "none",
    tta_hed_jitter: Annotated[float, typer.Option("--tta-hed-jitter", help=_h("tta_hed_jitter"))] = 0.0,
    background: Annotated[str, typer.Option("--background", help=_h("background"))] = "keep",
    tokens: Annotated[int, typer.Option("--tokens", metavar="G", help=_h("tokens"))] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=_h("verbose"))] = False,
) -> None:
    """Extract multi-scale encoder features of every spot into the HDF5 feature cache.

    One file per sample: {cache-dir}/{encoder}/{sample}.h5 ({encoder}+{views}/ with --stain-norm, --tta,
    --tta-hed-jitter, --background fill or --tokens G), with a spatial neighbour graph.
    Complete files are skipped, interrupted ones resumed. Prints one line per sample.
    """
    from stfeat.config import call
    from stfeat.resolved_config import save_resolved_config
    from stfeat.options import default_cache_dir

    setup_logging(verbose)
    opts = build_options(ExtractOptions, ctx.params)
    t0 = time.perf_counter()
    counts: dict[str, int] = {}

    def on_sample(r) -> None:
        counts[r.status] = counts.get(r.status, 0) + 1
        typer.echo(r.line())

    paths = call("extract", opts, progress=True, on_sample=on_sample)
    for folder in sorted({Path(p).parent for p in paths}):  # one per encoder tag, next to the caches
        save_resolved_config(ctx, folder, options=opts)
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "nothing to do"
    root = opts.cache_dir if opts.cache_dir is not None else default_cache_dir()
    typer.echo(f"{len(paths)} cache file(s) under {root}: {summary}; total {time.perf_counter() - t0:.2f} s")
