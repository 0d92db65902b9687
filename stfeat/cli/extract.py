"""``stfeat extract``: stage one from the command line (a thin layer over :func:`stfeat.extract.extract`)."""

from __future__ import annotations

import enum
import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from stfeat import _constants as K
from stfeat.cli import app
from stfeat.cli._common import parse_scales, setup_logging, user_errors


class Dtype(str, enum.Enum):
    float16 = "float16"
    float32 = "float32"


class Mode(str, enum.Enum):
    auto = "auto"
    crop = "crop"
    dense = "dense"



def _check_shard(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} should look like i/n, e.g. 0/4", param_hint="--shard") from None
    if not (n >= 1 and 0 <= i < n):
        raise typer.BadParameter(f"{text!r}: i is 0-based, so 0 <= i < n (0/4 .. 3/4)", param_hint="--shard")
    return text


@app.command("extract")
@user_errors
def extract_cmd(
    path: Annotated[Path, typer.Argument(help="A sample folder, a folder of samples, or a manifest (.csv/.yaml).")],
    encoder: Annotated[str, typer.Option("--encoder", "-e", help="Encoder name (see `stfeat encoders`), "
                                         "timm:NAME, hf-hub:ORG/NAME, or a weights file.")],
    weights: Annotated[Optional[Path], typer.Option(help="Local weights file (safetensors or torch).")] = None,
    scales: Annotated[str, typer.Option(help="Fields of view in micrometres, comma-separated.")] = "112,224,448",
    cache_dir: Annotated[Optional[Path], typer.Option(help=f"Cache root; default ${K.ENV_CACHE_DIR} or "
                                                      "./stfeat_cache.")] = None,
    k_neighbors: Annotated[int, typer.Option(min=0, help="Spatial neighbours stored per spot (0: none).")] = 8,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Spots per batch (x scales crops per "
                                                      "forward); default 32 on CPU, probed on GPU.")] = None,
    workers: Annotated[Optional[int], typer.Option(min=0, help="DataLoader decoding processes.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N; default CUDA when present.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Recompute existing cache files.")] = False,
    shard: Annotated[Optional[str], typer.Option(help="Process shard i of n (0-based, e.g. 0/4); default "
                                                 "torchrun's RANK/WORLD_SIZE.")] = None,
    dtype: Annotated[Dtype, typer.Option(help="Storage precision of the features.")] = Dtype.float16,
    um_per_px: Annotated[Optional[float], typer.Option(help="Micrometres per full-resolution pixel, "
                                                       "overriding the samples' own.")] = None,
    random_weights: Annotated[bool, typer.Option("--random-weights", help="Random (seeded) weights instead "
                                                 "of pretrained ones: benchmarks only.")] = False,
    mode: Annotated[Mode, typer.Option(help="crop: one forward per spot and field of view; dense: one per tissue "
                                       "tile, features pooled from its token map; auto: dense for bins/cells "
                                       "(points < 50 um apart), crop for spots.")] = Mode.auto,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Extract multi-scale encoder features of every spot into the HDF5 feature cache.

    One file per sample: {cache-dir}/{encoder}/{sample}.h5, with a FAISS spatial neighbour graph.
    Complete files are skipped, interrupted ones resumed. Prints one line per sample.
    """
    from stfeat.extract import extract

    setup_logging(verbose)
    if um_per_px is not None and not um_per_px > 0:
        raise typer.BadParameter("must be a positive number", param_hint="--um-per-px")
    scale_list = parse_scales(scales)
    if scale_list is None:
        raise typer.BadParameter("give at least one field of view, e.g. 112,224,448", param_hint="--scales")
    _check_shard(shard)
    root = cache_dir if cache_dir is not None else Path(os.environ.get(K.ENV_CACHE_DIR, "stfeat_cache"))
    t0 = time.perf_counter()
    counts: dict[str, int] = {}

    def on_sample(r) -> None:
        counts[r.status] = counts.get(r.status, 0) + 1
        typer.echo(r.line())

    paths = extract(path, encoder=encoder, weights=weights, scales_um=scale_list, cache_dir=root,
                    k_neighbors=k_neighbors, batch_size=batch_size, num_workers=workers, device=device,
                    overwrite=overwrite, shard=shard, dtype=dtype.value, um_per_px=um_per_px,
                    pretrained=not random_weights, progress=True, on_sample=on_sample, mode=mode.value)
    from stfeat.config import save_resolved_config

    for folder in sorted({p.parent for p in paths}):  # one per encoder tag, next to the caches
        save_resolved_config(None, folder)
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "nothing to do"
    typer.echo(f"{len(paths)} cache file(s) under {root}: {summary}; total {time.perf_counter() - t0:.2f} s")
