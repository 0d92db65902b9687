"""`stfeat fit` through the CLI (CliRunner) on small in-code caches and on-disk samples."""

from __future__ import annotations

import json

import pandas as pd
from typer.testing import CliRunner

from stfeat.cli import app
from test_fit_support import toy_dataset, write_toy_disk

runner = CliRunner()


def test_fit_cli_several_heads_one_table(tmp_path):
    samples = toy_dataset(tmp_path / "cache", layout=(("A", 2), ("B", 1), ("C", 1)), n_side=6)
    manifest = write_toy_disk(tmp_path / "data", samples)
    params = json.dumps({"attention": {"max_epochs": 3, "d_model": 16, "n_heads": 2, "device": "cpu"}})
    res = runner.invoke(app, ["fit", str(manifest), "--encoder", "toy", "--cache-dir", str(tmp_path / "cache"),
                              "--head", "ridge,attention", "--genes", "hvg:6", "--k-neighbors", "4",
                              "--head-params", params, "--out-dir", str(tmp_path / "out"), "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "split: lopo over patients" in res.output
    assert "ridge" in res.output and "attention" in res.output
    comp = pd.read_csv(tmp_path / "out" / "comparison.csv")
    assert list(comp["head"]) == ["ridge", "attention"]
    assert list(comp.columns) == ["encoder", "head", "A1", "A2", "B1", "C1", "mean"]
    assert comp.set_index("head").loc["ridge", "mean"] > 0.4
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["heads"]["attention"]["max_epochs"] == 3
    man = json.loads((tmp_path / "out" / "models" / "toy__attention" / "model.json").read_text())
    assert man["layout"]["kind"] == "tokens" and man["head_format"] == "stfeat-head"
    assert (tmp_path / "out" / "models" / "toy__attention" / "head").is_dir()
    assert not (tmp_path / "out" / "plots").exists()
    assert (tmp_path / "out" / "resolved_config.yaml").exists()


def test_fit_cli_user_errors_are_one_line(tmp_path):
    samples = toy_dataset(tmp_path / "cache", layout=(("A", 2), ("B", 1)), n_side=4)
    manifest = write_toy_disk(tmp_path / "data", samples)
    base = ["fit", str(manifest), "--encoder", "toy", "--out-dir", str(tmp_path / "out")]
    res = runner.invoke(app, base + ["--cache-dir", str(tmp_path / "nocache")])
    assert res.exit_code == 1
    assert "stfeat extract" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, base + ["--cache-dir", str(tmp_path / "cache"), "--split", "loso"])
    assert res.exit_code == 1 and "would put sections of one patient" in res.output
    res = runner.invoke(app, base + ["--cache-dir", str(tmp_path / "cache"), "--head", "forest"])
    assert res.exit_code == 2 and "unknown head" in res.output
    res = runner.invoke(app, base + ["--cache-dir", str(tmp_path / "cache"), "--genes", "top:5"])
    assert res.exit_code == 2 and "unknown gene rule" in res.output
