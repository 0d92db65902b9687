"""``stfeat cache du`` / ``stfeat cache clean``: show and free what stfeat holds on disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from stfeat.cli import app
from stfeat.cli._common import user_errors

cache_app = typer.Typer(help="Show (du) and free (clean) the decoded-slide cache and feature caches.",
                        no_args_is_help=True)
app.add_typer(cache_app, name="cache")

_CACHE_DIR = Annotated[
    Optional[Path],
    typer.Option("--cache-dir", help="Feature cache root (default $STFEAT_CACHE_DIR or ./stfeat_cache)."),
]


def _feature_root(cache_dir: Path | None) -> Path:
    from stfeat import _constants as K

    return Path(cache_dir if cache_dir is not None else os.environ.get(K.ENV_CACHE_DIR, "stfeat_cache"))


@cache_app.command("du")
@user_errors
def du(cache_dir: _CACHE_DIR = None) -> None:
    """Show the size of the decoded-slide cache (and its cap) and of the feature caches."""
    from stfeat import slide_cache
    from stfeat.disk_usage import feature_usage, human

    u = slide_cache.usage()
    typer.echo(f"decoded slides  {u.root}")
    typer.echo(f"  {u.slides} slide(s), {u.files} level file(s), {human(u.bytes)} of a {human(u.cap_bytes)} cap "
               f"(${slide_cache.ENV_MAX})")
    if u.tmp_files:
        typer.echo(f"  {u.tmp_files} temporary file(s), {human(u.tmp_bytes)} (removed once their writer is gone)")
    f = feature_usage(_feature_root(cache_dir))
    typer.echo(f"feature caches  {f.root}{'' if f.root.is_dir() else ' (none)'}")
    for enc, (n, b) in f.encoders.items():
        typer.echo(f"  {enc}: {n} file(s), {human(b)}")
    if f.partial:
        typer.echo(f"  {len(f.partial)} unfinished (.partial) file(s), {human(f.partial_bytes)}: rerun "
                   "`stfeat extract` to resume them, or `stfeat cache clean --partial`")
    if f.locks:
        typer.echo(f"  {len(f.locks)} lock file(s)")
    typer.echo(f"total           {human(u.bytes + u.tmp_bytes + f.bytes)}")


@cache_app.command("clean")
@user_errors
def clean(
    max_size: Annotated[
        Optional[str], typer.Option("--max-size", help="Keep the most recently used decoded slides up to this size "
                                    "(e.g. 2GB); default: remove them all.")
    ] = None,
    partial: Annotated[bool, typer.Option("--partial", help="Also remove unfinished feature caches (.partial) "
                                          "that no process is writing.")] = False,
    cache_dir: _CACHE_DIR = None,
) -> None:
    """Free the decoded-slide cache (slides are decoded again when needed). Finished feature caches are kept."""
    from stfeat import slide_cache
    from stfeat.disk_usage import clean_features, human

    limit = 0
    if max_size is not None:
        try:
            limit = slide_cache.parse_size(max_size)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--max-size") from None
    before = slide_cache.usage()
    freed = slide_cache.evict(limit)
    after = slide_cache.usage()
    typer.echo(f"decoded slides: freed {human(freed)} ({before.files} -> {after.files} level files, "
               f"{human(after.bytes)} left) in {after.root}")
    ffreed = clean_features(_feature_root(cache_dir), partial=partial)
    if partial or ffreed:
        typer.echo(f"feature caches: freed {human(ffreed)} of unfinished files")
