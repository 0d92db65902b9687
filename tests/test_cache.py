"""The HDF5 feature cache: layout, round trip, refusals, and the OS lock."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from stfeat import _constants as K
from stfeat.cache import (
    cache_lock,
    cache_path,
    describe_cache,
    encoder_tag,
    partial_path,
    read_attrs,
    read_cache,
    scale_name,
    write_cache,
)
from stfeat.errors import CacheLockedError, InputError

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, n: int = 20, dtype: str = "float16", neighbors: bool = True) -> dict:
    rng = np.random.default_rng(0)
    feats = {112.0: rng.normal(size=(n, 6)).astype(np.float32), 224.0: rng.normal(size=(n, 6)).astype(np.float32)}
    pad = {"224": np.arange(n) % 5 == 0}
    nb = np.stack([(np.arange(n) + j) % n for j in (1, 2)], 1) if neighbors else None
    write_cache(path, barcodes=[f"b{i}" for i in range(n)], coords=rng.uniform(0, 100, (n, 2)),
                features=feats, padded=pad, attrs={"encoder": "toy", "sample_id": "S", "um_per_px": 0.5},
                neighbors=nb, neighbor_dist_um=None if nb is None else np.ones((n, 2), np.float32),
                dtype=dtype)
    return feats


def test_names_and_paths():
    assert scale_name(112) == "112" and scale_name(56.5) == "56.5"
    assert encoder_tag("timm:densenet121") == "timm-densenet121"
    assert encoder_tag("hf-hub:MahmoodLab/UNI") == "hf-hub-mahmoodlab-uni"
    assert encoder_tag("/x/y/My Weights.safetensors") == "my-weights"
    assert cache_path("/c", "uni", "C2") == Path("/c/uni/C2.h5")  # a safe id is kept as it is
    p = cache_path("/c", "uni", "A/B 1")
    assert p.parent == Path("/c/uni") and p.name.startswith("A_B_1~") and p.name.endswith(".h5")
    assert partial_path(p).name == p.name + ".partial"


def test_cache_names_are_injective():
    ids = ["A B", "A_B", "A/B", "A_B~x", "\u00e9\u00e8", "\u00e8\u00e9", ".x", "x", "A_B~" + "0" * 10]
    names = {cache_path("/c", "uni", i).name for i in ids}
    assert len(names) == len(ids)


def test_round_trip_layout_and_attrs(tmp_path):
    path = tmp_path / "toy" / "S.h5"
    feats = _write(path)
    with h5py.File(path, "r") as f:
        assert set(f) == {"barcodes", "coords", "features", "padded", "done", "tissue", "neighbors", "faiss"}
        assert set(f["faiss"]) == {"112", "224"}  # the FAISS index of each scale (stfeat.spot_index)
        assert f["features/112"].dtype == np.float16 and f["features/112"].shape == (20, 6)
        assert f["neighbors/spatial"].dtype == np.int64
        assert f["neighbors/spatial_dist_um"].dtype == np.float32
        assert f["done/224"][...].all()
    d = read_cache(path)
    assert d.scales_um == [112.0, 224.0] and d.n_spots == 20
    np.testing.assert_allclose(d.features["112"], feats[112.0], atol=2e-3)  # float16 storage
    assert d.features["112"].dtype == np.float32
    assert d.padded["224"].sum() == 4 and not d.padded["112"].any()
    assert d.barcodes[3] == "b3" and d.coords.shape == (20, 2)
    assert d.neighbors.shape == (20, 2) and d.attrs["k_neighbors"] == 2
    assert d.attrs["schema_version"] == K.CACHE_SCHEMA_VERSION and d.attrs["complete"] is True
    assert d.stacked().shape == (20, 12)
    only = read_cache(path, scales=[224])
    assert list(only.features) == ["224"]


def test_float32_storage_is_exact(tmp_path):
    path = tmp_path / "S.h5"
    feats = _write(path, dtype="float32", neighbors=False)
    d = read_cache(path)
    np.testing.assert_array_equal(d.features["224"], feats[224.0])
    assert d.neighbors is None


def test_refusals_name_the_file_and_the_fix(tmp_path):
    path = tmp_path / "S.h5"
    _write(path)
    with pytest.raises(InputError, match="scale"):
        read_cache(path, scales=[448])
    missing = tmp_path / "none.h5"
    partial_path(missing).write_bytes(b"")
    with pytest.raises(InputError, match="partial") as e:
        read_cache(missing)
    assert e.value.path == missing
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    with pytest.raises(InputError, match="not an stfeat feature cache"):
        read_cache(foreign)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all")
    with pytest.raises(InputError, match="HDF5"):
        read_cache(garbage)
    with h5py.File(path, "a") as f:
        f.attrs["complete"] = False
    with pytest.raises(InputError, match="incomplete"):
        read_cache(path)
    assert "INCOMPLETE" in describe_cache(path)


def test_describe_cache(tmp_path):
    path = tmp_path / "S.h5"
    _write(path)
    text = describe_cache(path)
    assert "complete" in text and "toy" in text
    assert "features/112" in text and "20 x 6 float16" in text and "4 padded" in text
    assert "k=2 spatial" in text and "median distance 1.0 um" in text


def test_read_attrs_reads_no_dataset(tmp_path):
    path = tmp_path / "S.h5"
    _write(path)
    a = read_attrs(path)
    assert a["encoder"] == "toy" and a["n_spots"] == 20 and a["scales_um"] == [112.0, 224.0]


def test_lock_refuses_a_second_holder(tmp_path):
    path = tmp_path / "S.h5"
    with cache_lock(path):
        with pytest.raises(CacheLockedError, match="another stfeat process"):
            with cache_lock(path):
                pass
    with cache_lock(path):  # released after the block
        pass


def test_lock_of_a_dead_process_is_released(tmp_path):
    path = tmp_path / "S.h5"
    code = (
        "import sys, time\n"
        "from stfeat.cache import cache_lock\n"
        f"with cache_lock({str(path)!r}):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(CacheLockedError, match=f"pid {proc.pid}"):
            with cache_lock(path):
                pass
    finally:
        proc.kill()
        proc.wait()
    for _ in range(50):  # the OS drops the lock with the process
        try:
            with cache_lock(path):
                break
        except CacheLockedError:
            time.sleep(0.05)
    else:
        pytest.fail("the lock of a killed process was not released")
