"""Shared fixtures. Real-data tests find ../shared/data (or $STFEAT_SHARED_DATA) and skip without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_root() -> Path | None:
    env = os.environ.get("STFEAT_SHARED_DATA")
    candidates = [Path(env).parent if env else None, REPO.parent / "shared", REPO / "shared"]
    for c in candidates:
        if c is not None and (c / "data").is_dir():
            return c
    return None


SHARED = _shared_root()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip: real-data tests need the HER2ST sections and format fixtures."""
    if SHARED is None:
        pytest.skip("real data not found: ../shared/data is absent (set STFEAT_SHARED_DATA to its path)")
    return SHARED / "data"


@pytest.fixture(scope="session")
def shared_weights() -> Path:
    """../shared/weights, or skip: real-weights tests need the DenseNet-121 / EfficientNet-Lite0 files."""
    if SHARED is None or not (SHARED / "weights").is_dir():
        pytest.skip("real weights not found: ../shared/weights is absent")
    return SHARED / "weights"


@pytest.fixture(scope="session")
def her2st(shared_data: Path) -> Path:
    p = shared_data / "her2st"
    if not p.is_dir():
        pytest.skip(f"{p} is absent")
    return p


@pytest.fixture(autouse=True, scope="session")
def _private_slide_cache(tmp_path_factory):
    """Decoded slides of the test run go to a temporary slide cache, not the user's ~/.cache/stfeat."""
    if "STFEAT_SLIDE_CACHE" in os.environ:
        yield
        return
    os.environ["STFEAT_SLIDE_CACHE"] = str(tmp_path_factory.mktemp("slide-cache"))
    try:
        yield
    finally:
        os.environ.pop("STFEAT_SLIDE_CACHE", None)
