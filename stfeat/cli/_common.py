"""Shared CLI helpers: one place that turns stfeat's user errors into clean messages."""

from __future__ import annotations

import functools
import logging
import traceback
from typing import Any, Callable, TypeVar

import typer

from stfeat.errors import StfeatError

F = TypeVar("F", bound=Callable)


def user_errors(func: F) -> F:
    """Run a command so that the user's mistakes read as one line and bugs are not dressed as them.

    - :class:`StfeatError` (``InputError`` ...) and ``FileNotFoundError``: ``error: ...`` in red, exit 1;
    - ``typer.BadParameter`` and the other usage errors: click's usage message, exit 2;
    - anything else is a bug in stfeat: with ``--verbose`` its traceback, without it one line
      ``internal error: ... (run with --verbose for the traceback; please report it)``; exit 2.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from stfeat._faults import ABANDONED

        n_abandoned = len(ABANDONED)
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except (StfeatError, FileNotFoundError) as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            if len(ABANDONED) > n_abandoned:  # HDF5 would crash closing a file whose writes failed: exit now, the file resumes
                import os
                import sys

                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(1)
            raise typer.Exit(1) from None
        except Exception as exc:  # noqa: BLE001 - the one place that reports bugs
            if kwargs.get("verbose"):
                typer.echo(traceback.format_exc(), err=True)
            what = f"{type(exc).__name__}: {exc}"
            hint = "please report it" if kwargs.get("verbose") else \
                "run with --verbose for the traceback; please report it"
            typer.secho(f"internal error: {what} ({hint})", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def build_options(cls: type, params: dict[str, Any]) -> Any:
    """The options object of a command from its click parameters (``ctx.params``); a bad value
    becomes a usage error naming the flag."""
    from stfeat.options import OptionError, build, flag

    try:
        return build(cls, dict(params))
    except OptionError as exc:
        fix = exc.fix[:1].upper() + exc.fix[1:]
        raise typer.BadParameter(f"{exc.problem} {fix}", param_hint=flag(exc.name)) from None


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
