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
        try:
            return func(*args, **kwargs)
        except (StfeatError, FileNotFoundError) as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
