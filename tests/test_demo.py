"""`stfeat demo`: the README's first command runs the whole pipeline offline, on synthetic data.

The quick demo run (``$STFEAT_DEMO_QUICK=1``: same command, smaller dataset) is made once per test
session and shared between pytest-xdist workers through a file lock (:func:`demo_workspace`);
tests/test_readme.py and tests/test_notebooks.py reuse it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stfeat.demo import QUICK_ENV


def shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder shared by all xdist workers of this session (the parent of the per-worker temp root)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    return base / name


def run_quick_demo_once(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """Run `stfeat demo --out WS/stfeat_demo` with reduced settings once per session; return (record, out)."""
    from filelock import FileLock

    from stfeat.cli import app

    root = shared_dir(tmp_path_factory, "stfeat_demo_ws")
    root.mkdir(parents=True, exist_ok=True)
    record = root / "run.json"
    out = root / "stfeat_demo"
    with FileLock(str(root) + ".lock"):
        if not record.exists():
            r = CliRunner().invoke(app, ["demo", "--out", str(out)], env={QUICK_ENV: "1"})
            exc = None if r.exception is None or isinstance(r.exception, SystemExit) else repr(r.exception)
            record.write_text(json.dumps({"exit_code": r.exit_code, "output": r.output, "exception": exc}))
    return json.loads(record.read_text()), out


@pytest.fixture(scope="session")
def demo_workspace(tmp_path_factory) -> Path:
    """The output folder of one quick `stfeat demo` run (data/, cache/, fit/, ...)."""
    rec, out = run_quick_demo_once(tmp_path_factory)
    assert rec["exit_code"] == 0, rec["output"] + str(rec["exception"])
    return out


def test_demo_runs_end_to_end_offline(tmp_path_factory):
    rec, out = run_quick_demo_once(tmp_path_factory)
    text = rec["output"]
    assert rec["exit_code"] == 0, text + str(rec["exception"])
    assert "SYNTHETIC DATA" in text  # the banner
    for step in ("[1/4] synthetic dataset", "[2/4] extract: encoder classical, fields of view 112, 224, 448 um",
                 "[3/4] fit: heads hest-ridge, ridge", "[4/4] predict: SYN-P1-S1"):
        assert step in text
    assert "Mean Pearson r over held-out patients (lopo split" in text
    assert "Next, on real data:" in text and "stfeat extract PATH --encoder uni" in text
    # Everything it says it wrote is there.
    assert json.loads((out / "data" / "SYNTHETIC.json").read_text())["stfeat_synthetic"] is True
    caches = sorted((out / "cache" / "classical").glob("*.h5"))
    assert [c.stem for c in caches] == ["SYN-P1-S1", "SYN-P2-S1", "SYN-P3-S1"]
    fit = out / "fit"
    for name in ("metrics.json", "metrics.csv", "per_gene.csv", "comparison.csv"):
        assert (fit / name).is_file()
    assert sorted(p.name for p in (fit / "predictions").glob("*.h5ad")) == [
        "classical__hest-ridge.h5ad", "classical__ridge.h5ad"]
    assert list((fit / "plots").rglob("*.png"))
    assert (out / "demo_prediction_SYN-P1-S1.h5ad").is_file()  # beside fit/, which a refit replaces whole
    resolved = (out / "resolved_config.yaml").read_text()
    assert "sources:" in resolved and "out: cli" in resolved


def test_demo_split_is_patient_grouped_and_heads_learn(demo_workspace):
    metrics = json.loads((demo_workspace / "fit" / "metrics.json").read_text())
    split = metrics["split"]
    assert split["mode"] == "lopo" and split["group_kind"] == "patient"
    groups = split["groups"]
    assert len(split["folds"]) == 3
    for fold in split["folds"]:
        test_patients = {groups[s] for s in fold["test"]}
        train_patients = {groups[s] for s in fold["train"]}
        assert test_patients == {fold["name"]} and not (test_patients & train_patients)
    summary = json.loads((demo_workspace / "demo_summary.json").read_text())
    assert summary["synthetic"] is True and summary["scales_um"] == [112.0, 224.0, 448.0]
    r = summary["mean_pearson_r"]
    assert set(r) == {"hest-ridge", "ridge"}
    # Expression follows morphology in the synthetic data, so held-out patients are predicted well.
    assert r["ridge"] > 0.3, r
    assert all(np.isfinite(v) for v in r.values())


def test_demo_on_user_data_and_bad_data(tmp_path):
    from stfeat.cli import app
    from stfeat.datasets import make_synthetic_dataset

    ds = make_synthetic_dataset(tmp_path / "mine", n_patients=2, sections_per_patient=1, n_genes=70,
                                size_um=(500.0, 500.0), seed=5)
    out = tmp_path / "demo_mine"
    r = CliRunner().invoke(app, ["demo", "--data", str(ds.manifest), "--out", str(out), "--head", "ridge",
                                 "--scales-um", "112", "--genes", "hvg:20"])
    assert r.exit_code == 0, r.output
    assert "SYNTHETIC DATA" not in r.output.split("[1/4]")[0]  # no banner for user data
    assert f"[1/4] your data: {ds.manifest}" in r.output and "on your data" in r.output
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["synthetic"] is False and summary["heads"] == ["ridge"] and summary["scales_um"] == [112.0]
    assert not (out / "data").exists()

    bad = CliRunner().invoke(app, ["demo", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1
    assert "nowhere" in bad.output and "Traceback" not in bad.output
    bad = CliRunner().invoke(app, ["demo", "--scales-um", "112,big", "--out", str(tmp_path / "y")])
    assert bad.exit_code == 2 and "--scales-um" in bad.output
