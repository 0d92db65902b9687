"""The README's Python API block runs verbatim (in a sandbox holding a quick `stfeat demo` output)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from test_demo import demo_workspace  # noqa: F401  (session fixture shared with tests/test_demo.py)
from test_readme import blocks

REPO = Path(__file__).resolve().parents[1]


def test_python_api_block_runs(demo_workspace, tmp_path):  # noqa: F811
    (body,) = [b for k, lang, b in blocks() if k == "python-api"]
    assert body.lstrip().startswith("import stfeat as st")
    sandbox = tmp_path / "sandbox"
    shutil.copytree(demo_workspace, sandbox / "stfeat_demo", ignore=shutil.ignore_patterns("*.lock"))
    old = Path.cwd()
    os.chdir(sandbox)
    try:
        ns: dict = {}
        exec(compile(body, "README.md:python-api", "exec"), ns)  # noqa: S102 - our own README
    finally:
        os.chdir(old)
    cv, pred = ns["cv"], ns["pred"]
    assert cv.plan.mode == "lopo" and len(cv.estimators) == 3
    assert (sandbox / "pcc.png").is_file() and (sandbox / "maps.png").is_file()
    assert (sandbox / "runs" / "ridge" / "model.json").is_file()
    assert pred.n_vars == 50 and (pred.X >= 0).all()
    # the cache the README's extract reused: no new file, nothing recomputed
    assert sorted(p.name for p in (sandbox / "stfeat_demo" / "cache" / "classical").glob("*.h5")) == sorted(
        p.name for p in (demo_workspace / "cache" / "classical").glob("*.h5"))
