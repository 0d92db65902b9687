"""The notebooks execute on the synthetic dataset, call the library (not copies), and are committed stripped."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from test_demo import demo_workspace  # noqa: F401  (session fixture shared with tests/test_demo.py)

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
NAMES = [p.stem for p in NOTEBOOKS]


def test_the_notebooks_exist():
    assert {"00_api", "01_quickstart", "02_ablation_grid", "03_maps", "04_across_patients"} <= set(NAMES)


def test_api_notebook_runs_on_synthetic_data(tmp_path, monkeypatch):
    for var in ("STFEAT_NB_DATA", "STFEAT_NB_CACHE", "STFEAT_NB_ENCODER", "STFEAT_NB_WEIGHTS", "STFEAT_NB_SPLIT"):
        monkeypatch.delenv(var, raising=False)
    nb = _execute(REPO / "notebooks" / "00_api.ipynb", {"STFEAT_NB_WORK": str(tmp_path)}, tmp_path)
    text = _outputs(nb)
    assert "SYNTHETIC DATA" in text and "CVResult(head='ridge'" in text and "split=lopo" in text
    assert (tmp_path / "pcc.png").is_file() and (tmp_path / "maps.png").is_file()
    assert (tmp_path / "ridge" / "model.json").is_file() and (tmp_path / "run" / "metrics.json").is_file()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_committed_without_outputs(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip outputs before committing"
            assert "\ndef " not in "\n" + cell.source, f"{path.name}: call the library, do not copy it"
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "STFEAT_NB_DATA" in code


def _execute(path: Path, env: dict[str, str], cwd: Path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits the environment
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def _outputs(nb) -> str:
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            parts.append(o.get("text", "") or str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def test_quickstart_generates_synthetic_data_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("STFEAT_NB_DATA", raising=False)
    monkeypatch.delenv("STFEAT_NB_CACHE", raising=False)
    nb = _execute(REPO / "notebooks" / "01_quickstart.ipynb", {"STFEAT_NB_WORK": str(tmp_path)}, tmp_path)
    text = _outputs(nb)
    assert "SYNTHETIC DATA" in text and "SYN-P1-S1" in text
    assert "split: lopo over patients" in text
    assert sorted(p.stem for p in (tmp_path / "cache" / "classical").glob("*.h5")) == [
        "SYN-P1-S1", "SYN-P2-S1", "SYN-P3-S1"]
    assert (tmp_path / "fit_quickstart" / "metrics.json").is_file()
    assert (tmp_path / "fields_of_view.png").is_file()


@pytest.mark.parametrize("name", ["02_ablation_grid", "03_maps"])
def test_notebook_runs_from_the_demo_caches(name, demo_workspace, tmp_path):  # noqa: F811
    cache = tmp_path / "cache"
    shutil.copytree(demo_workspace / "cache", cache)  # private copy: notebooks may run in parallel
    env = {"STFEAT_NB_DATA": str(demo_workspace / "data"), "STFEAT_NB_CACHE": str(cache),
           "STFEAT_NB_WORK": str(tmp_path)}
    nb = _execute(REPO / "notebooks" / f"{name}.ipynb", env, tmp_path)
    text = _outputs(nb)
    assert "SYNTHETIC DATA" not in text  # the given data is used, nothing is generated
    if name == "02_ablation_grid":
        assert (tmp_path / "ablation.png").is_file()
        assert "112+224+448" in text and "hest-ridge" in text
        assert sorted(p.name for p in tmp_path.glob("ablation_*")) == [
            "ablation_112", "ablation_112_224_448", "ablation_448"]
    else:
        assert (tmp_path / "measured_vs_predicted.png").is_file() and (tmp_path / "grid.png").is_file()
        assert "grid points every 50 um" in text


def test_across_patients_notebook_runs_on_synthetic_data(tmp_path, monkeypatch):
    """04: every feature variant x head across two synthetic patients, printed as one table."""
    for var in ("STFEAT_NB_DATA", "STFEAT_NB_CACHE", "STFEAT_NB_ENCODER", "STFEAT_NB_WEIGHTS", "STFEAT_NB_VARIANTS",
                "STFEAT_NB_HEADS"):
        monkeypatch.delenv(var, raising=False)
    nb = _execute(REPO / "notebooks" / "04_across_patients.ipynb", {"STFEAT_NB_WORK": str(tmp_path)}, tmp_path)
    text = _outputs(nb)
    assert "SYNTHETIC DATA" in text and "| variant | head |" in text and "best across patients:" in text
    for head in ("hest-ridge", "ridge", "lgbm", "attention", "ensemble"):
        assert f"| {head} |" in text
    assert "train SYN-P1 -> test SYN-P2" in text and "within SYN-P1 (loso)" in text
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["classical", "classical+d8"]
    assert (tmp_path / "compare" / "compare.csv").is_file()
