"""Shared CLI helpers: one place that turns stfeat's user errors into clean messages."""

from __future__ import annotations

import functools
import logging
from typing import Callable, TypeVar

import typer

from stfeat.errors import StfeatError

F = TypeVar("F", bound=Callable)


def user_errors(func: F) -> F:
    """Print :class:`StfeatError` (and FileNotFoundError) as one red line and exit 1, no traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from stfeat._faults import ABANDONED

        n_abandoned = len(ABANDONED)
        try:
            return func(*args, **kwargs)
        except (StfeatError, FileNotFoundError) as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            if len(ABANDONED) > n_abandoned:  # HDF5 would crash closing a file whose writes failed: exit now, the file resumes
                import os
                import sys

                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(1)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def parse_scales(text: str | None) -> list[float] | None:
    """``"112,224,448"`` -> ``[112.0, 224.0, 448.0]`` (fields of view in micrometres); empty -> ``None``."""
    if not text:
        return None
    try:
        scales = [float(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of micrometres, e.g. 112,224,448",
                                 param_hint="--scales") from None
    if not scales or any(s <= 0 for s in scales):
        raise typer.BadParameter("give positive micrometres, e.g. 112,224,448", param_hint="--scales")
    return scales


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # Data warnings already name the file and the fix; the source line of stfeat that raised them is noise.
    typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)


def setup_logging(verbose: bool = False) -> None:
    import warnings

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # faiss logs each optional SIMD build it fails to import at INFO: not the user's concern.
    logging.getLogger("faiss").setLevel(logging.WARNING)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    if not verbose:
        warnings.showwarning = _show_warning
