"""The CLI's parameters are the options schema's fields (stfeat/options.py), so names cannot drift."""

from __future__ import annotations

import dataclasses

import pytest
import typer.main

from stfeat import options as O
from stfeat.cli import app

COMMANDS = {**O.OPTIONS, "run": O.RunOptions}


def _params(name: str) -> list:
    return [p for p in typer.main.get_command(app).commands[name].params if p.name != "help"]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_cli_parameters_equal_the_options_fields(name):
    cls = COMMANDS[name]
    params = _params(name)
    assert [p.name for p in params] == list(O.fields_of(cls)), f"`stfeat {name}` and {cls.__name__} differ"
    for p in params:
        f = O.fields_of(cls)[p.name]
        positional = bool(f.metadata.get("positional"))
        assert (p.param_type_name == "argument") == positional, p.name
        if positional:
            continue
        assert O.flag(p.name) in p.opts, f"{name}: {p.name} should be spelled {O.flag(p.name)}, not {p.opts}"
        assert all(o == O.flag(p.name) or (o.startswith("-") and len(o) == 2) for o in p.opts), p.opts
        assert p.help == O.help_of(cls, p.name) or p.help.startswith(O.help_of(cls, p.name)), p.name
        if O.is_bool(cls, p.name) and not f.metadata.get("cli_only"):
            assert p.secondary_opts == ["--no-" + p.name.replace("_", "-")], p.name
        assert bool(getattr(p, "multiple", False)) == O.is_list(cls, p.name), p.name
        default = O.default_of(cls, p.name)
        if default is dataclasses.MISSING:
            assert p.required, p.name
        else:
            got = None if p.default in (None, [], ()) else O.coerce(cls, p.name, p.default)
            assert got == default, f"{name} {O.flag(p.name)}: CLI default {p.default!r}, schema {default!r}"


def test_library_keywords_are_the_fields():
    """Positional and CLI-only fields aside, the schema's names are the library function's keywords."""
    import inspect

    from stfeat.prediction import predict

    from stfeat.extraction import extract_caches

    kw = set(O.library_kwargs(O.PredictOptions(model_dir="m", sample="s")))
    assert kw <= set(inspect.signature(predict).parameters)
    kw = set(O.library_kwargs(O.ExtractOptions(samples="d", encoder="uni")))
    assert kw <= set(inspect.signature(extract_caches).parameters)
    from stfeat import config as C

    assert set(inspect.signature(C.run).parameters) >= {n for n in O.fields_of(O.RunOptions)} - {"verbose"}


def test_old_spellings_are_gone():
    from typer.testing import CliRunner

    for args, old in ((["extract", ".", "-e", "classical", "--scales", "112"], "--scales"),
                      (["extract", ".", "-e", "classical", "--workers", "2"], "--workers"),
                      (["fit", ".", "-e", "classical", "--out", "x"], "--out"),
                      (["predict", "m", "s", "--grid", "50"], "--grid")):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2 and "No such option" in r.output and old in r.output, r.output


def test_fit_report_keywords_are_the_fields():
    import inspect

    from stfeat.fitting import fit_report

    kw = set(O.library_kwargs(O.FitOptions(samples="d", encoder=["uni"])))
    assert kw == set(inspect.signature(fit_report).parameters) - {"samples"}
