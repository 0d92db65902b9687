"""`import stfeat` stays fast and light: no torch, faiss, lightgbm, scikit-learn or scipy behind it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HEAVY = {"torch", "faiss", "lightgbm", "sklearn", "scipy", "timm", "pandas", "anndata", "h5py",
         "matplotlib", "skimage", "numpy"}

# what `import stfeat.datasets` may pull in: the generators import the rest inside their functions
DATASETS_ALLOWED = {"numpy"}


def _import(module: str) -> tuple[set[str], float]:
    """Top-level packages imported by ``import module`` in a fresh interpreter, and the cumulative
    import time (s) of ``module`` from ``-X importtime``."""
    code = (f"import sys; before = set(sys.modules); import {module}; "
            "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True,
                         text=True, env=env, check=True, timeout=120)
    cumulative = None
    for line in res.stderr.splitlines():  # "import time: self [us] | cumulative | name"
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[2] == module:
            cumulative = int(parts[1]) / 1e6
    assert cumulative is not None, res.stderr[-2000:]
    return set(res.stdout.split()), cumulative


@pytest.mark.parametrize("module,allowed", [("stfeat", set()), ("stfeat.datasets", DATASETS_ALLOWED)])
def test_import_is_light(module, allowed):
    imported, seconds = _import(module)
    print(f"import {module}: {seconds * 1e3:.0f} ms cumulative (-X importtime)")
    assert not (imported & HEAVY) - allowed, f"import {module} pulls in {sorted((imported & HEAVY) - allowed)}"
