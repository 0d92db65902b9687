"""CLI errors: the user's mistakes read as one line; a bug is reported as a bug (traceback with --verbose)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import stfeat.config as C
from stfeat.cli import app
from stfeat.errors import InputError

runner = CliRunner()


@pytest.fixture
def raising(monkeypatch):
    """Make the library call of every command raise the given exception."""

    def arm(exc: BaseException) -> None:
        def boom(command, opts, **extra):
            raise exc

        monkeypatch.setattr(C, "call", boom)

    return arm


def _extract(tmp_path, *extra):
    return runner.invoke(app, ["extract", str(tmp_path), "--encoder", "classical", *extra])


def test_a_bug_is_not_dressed_as_the_users_mistake(tmp_path, raising):
    raising(ValueError("operands could not be broadcast together"))
    r = _extract(tmp_path)
    assert r.exit_code == 2
    assert ("internal error: ValueError: operands could not be broadcast together (run with --verbose for the "
            "traceback; please report it)") in r.output
    assert "Traceback" not in r.output and not r.output.startswith("error:")
    r = _extract(tmp_path, "--verbose")
    assert r.exit_code == 2
    assert "Traceback (most recent call last)" in r.output and "in boom" in r.output
    assert "internal error: ValueError" in r.output


def test_user_errors_stay_one_line(tmp_path, raising):
    raising(InputError(tmp_path / "x.h5", "is not a feature cache.", "run `stfeat extract` first."))
    r = _extract(tmp_path, "--verbose")
    assert r.exit_code == 1
    assert r.output.strip() == f"error: {tmp_path / 'x.h5'}: is not a feature cache. Fix: run `stfeat extract` first."


def test_bad_option_values_are_usage_errors_naming_the_flag(tmp_path, raising):
    raising(AssertionError("the library must not be reached"))
    for args, flag, words in ((["--scales-um", "112,big"], "--scales-um", "takes a number"),
                              (["--shard", "4/4"], "--shard", "0-based"),
                              (["--dtype", "int8"], "--dtype", "not allowed"),
                              (["--k-neighbors", "-1"], "--k-neighbors", "at least 0")):
        r = _extract(tmp_path, *args)
        assert r.exit_code == 2 and flag in r.output and words in r.output, r.output
    r = runner.invoke(app, ["fit", str(tmp_path), "-e", "classical", "--head", "ridge", "--head-params",
                            '{"lgbm": {"num_leaves": 3}}'])
    assert r.exit_code == 2 and "--head-params" in r.output and "lgbm" in r.output


def test_a_split_that_would_leak_is_the_users_mistake():
    """The library says so with an InputError (it used to be a plain ValueError)."""
    from stfeat.evaluate import make_splits

    with pytest.raises(InputError, match="would put sections of one patient"):
        make_splits(["A1", "A2", "B1"], ["A", "A", "B"], "loso")
    with pytest.raises(InputError, match="unknown split"):
        make_splits(["A1", "B1"], ["A", "B"], "random")
