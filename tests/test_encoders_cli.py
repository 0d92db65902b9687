"""``stfeat encoders``: table, glob filter, JSON."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from stfeat.cli import app
from stfeat.encoders import list_encoders

runner = CliRunner()


def test_table_lists_every_encoder_with_columns():
    res = runner.invoke(app, ["encoders"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["name", "family", "px", "um/px", "dim", "precision", "gated", "license", "pooling"]
    names = {ln.split()[0] for ln in lines[2:]}
    assert names == {s.name for s in list_encoders()}
    v2 = next(ln for ln in lines if ln.startswith("virchow2 "))
    assert v2.split()[1:7] == ["paige", "224", "0.5", "2560", "fp16", "yes"]


def test_glob_and_json():
    res = runner.invoke(app, ["encoders", "h*optimus*", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["name"] for r in rows] == ["h-optimus-0", "h-optimus-1"]
    assert rows[0]["hub_id"] == "bioptimus/H-optimus-0" and rows[0]["gated"] is False
    assert rows[1]["gated"] is True and "hoptimus1" in rows[1]["aliases"]
    assert rows[0]["model_kwargs"]["init_values"] == 1e-5


def test_no_match_is_an_error():
    res = runner.invoke(app, ["encoders", "nothing-like-this*"])
    assert res.exit_code == 1 and "no encoder matches" in res.output
