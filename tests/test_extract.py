"""Stage one on in-code fakes: layout, skip, resume after interruption, mismatch, lock, shards, points."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from stfeat.cache import cache_lock, partial_path, read_attrs, read_cache
from stfeat.errors import CacheLockedError, InputError
from stfeat.extraction import extract_caches as extract, extract_points
from stfeat.neighbors import spatial_neighbors

from test_extract_fakes import UM_PER_PX, fake_sample, tiny_encoder

SCALES = (16, 32, 64)
TESTS = Path(__file__).resolve().parent


def _run(samples, cache, **kw):
    results = []
    kw.setdefault("encoder", tiny_encoder())
    kw.setdefault("scales_um", SCALES)
    kw.setdefault("batch_size", 8)
    kw.setdefault("num_workers", 0)
    kw.setdefault("device", "cpu")
    paths = extract(samples, cache_dir=cache, on_sample=results.append, **kw)
    return paths, results


def test_layout_provenance_and_neighbours(tmp_path):
    s = fake_sample(30)
    (path,), (res,) = _run([s], tmp_path, k_neighbors=5)
    assert path == tmp_path / "tiny-test" / "S1.h5" and res.status == "written" and res.n_computed == 30
    assert not partial_path(path).exists()
    d = read_cache(path)
    assert list(d.features) == ["16", "32", "64"]
    assert all(v.shape == (30, 16) and v.dtype == np.float32 for v in d.features.values())
    np.testing.assert_array_equal(d.barcodes, s.barcodes)
    np.testing.assert_array_equal(d.coords, s.coords)
    a = d.attrs
    for key in ("encoder", "weights_id", "config_hash", "um_per_px", "um_per_px_source", "scales_um", "patch_px",
                "stfeat_version", "torch_version", "timm_version", "schema_version", "sample_id", "patient",
                "created", "completed"):
        assert a.get(key) not in (None, ""), key
    assert a["encoder"] == "tiny-test" and a["weights_id"] == "tiny-seed0" and a["patch_px"] == 32
    assert a["um_per_px"] == UM_PER_PX and a["patient"] == "P1" and a["scales_um"] == [16.0, 32.0, 64.0]
    with h5py.File(path, "r") as f:
        assert f["features/32"].dtype == np.float16 and f["features/32"].chunks is not None
    # neighbours are FAISS over coords in um, stored with their distances
    idx, dist = spatial_neighbors(s.coords * UM_PER_PX, 5)
    np.testing.assert_array_equal(d.neighbors, idx)
    np.testing.assert_allclose(d.neighbor_dist_um, dist)
    # a 64 um field (128 px) around spots 30 px from the edge runs off the image; 16 um fields do not
    assert d.padded["64"].any() and not d.padded["16"].any()
    # different scales see different tissue -> different features
    assert not np.allclose(d.features["16"], d.features["64"])


def test_features_equal_direct_encoder_on_the_crops(tmp_path):
    import torch

    s = fake_sample(12)
    enc = tiny_encoder()
    (path,), _ = _run([s], tmp_path, encoder=enc, dtype="float32")
    d = read_cache(path)
    crops, _ = s.slide.read_regions(s.coords, 32, 32, um_per_px=UM_PER_PX)
    direct = enc(torch.from_numpy(crops)).numpy()
    np.testing.assert_allclose(d.features["32"], direct, rtol=1e-5, atol=1e-6)
    pts = extract_points(s.slide, s.coords, encoder=enc, scales_um=SCALES, um_per_px=UM_PER_PX, batch_size=5)
    np.testing.assert_allclose(pts["32"], direct, rtol=1e-5, atol=1e-6)
    # and at points that are not spots (a grid)
    grid = np.array([[100.0, 100.0], [250.0, 300.0]])
    g = extract_points(s.slide, grid, encoder=enc, scales_um=[32], um_per_px=UM_PER_PX)
    gc, _ = s.slide.read_regions(grid, 32, 32)
    np.testing.assert_allclose(g["32"], enc(torch.from_numpy(gc)).numpy(), rtol=1e-5, atol=1e-6)


def test_complete_files_are_skipped_without_building_a_model(tmp_path, monkeypatch):
    s = fake_sample(10)
    (path,), _ = _run([s], tmp_path)
    mtime = path.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("a model was built for a complete cache")

    monkeypatch.setattr("stfeat.extraction._build_encoder", boom)
    (p2,), (res,) = _run([s], tmp_path)
    assert p2 == path and res.status == "skipped" and res.n_computed == 0 and res.n_spots == 10
    assert path.stat().st_mtime_ns == mtime


class _Stop(Exception):
    pass


def _stop_after(n_batches):
    calls = []

    def cb(sample_id, done, total):
        calls.append(done)
        if len(calls) == n_batches:
            raise _Stop

    return cb


def test_interrupted_run_resumes_to_identical_embeddings(tmp_path):
    s = fake_sample(45)
    (clean,), _ = _run([s], tmp_path / "clean", batch_size=7)
    with pytest.raises(_Stop):
        _run([s], tmp_path / "cut", batch_size=7, callback=_stop_after(3))
    final = tmp_path / "cut" / "tiny-test" / "S1.h5"
    assert not final.exists() and partial_path(final).exists()  # never looks complete
    attrs = read_attrs(partial_path(final))
    assert attrs["complete"] is False
    with h5py.File(partial_path(final), "r") as f:
        assert f["done/16"][...].sum() == 21  # three batches of 7 were flushed
    with pytest.raises(InputError, match="partial"):
        read_cache(final)
    (p,), (res,) = _run([s], tmp_path / "cut", batch_size=None)  # the batch size comes from the file
    assert res.status == "resumed" and res.n_computed == 45 - 21
    a, b = read_cache(clean), read_cache(p)
    for k in a.features:
        np.testing.assert_array_equal(a.features[k], b.features[k])
        np.testing.assert_array_equal(a.padded[k], b.padded[k])
    np.testing.assert_array_equal(a.neighbors, b.neighbors)


def test_killed_process_resumes_to_identical_embeddings(tmp_path):
    """SIGKILL a real extract process mid-run: the lock dies with it and the rerun finishes the file."""
    s = fake_sample(40)
    (clean,), _ = _run([s], tmp_path / "clean", batch_size=5)
    cut = tmp_path / "cut"
    code = (
        "import sys, time\n"
        "from test_extract_fakes import fake_sample, tiny_encoder\n"
        "from stfeat.extraction import extract_caches as extract\n"
        "def cb(sid, done, total):\n"
        "    if done >= 15:\n"
        "        print('ready', flush=True); time.sleep(120)\n"
        f"extract([fake_sample(40)], encoder=tiny_encoder(), scales_um={SCALES!r}, cache_dir={str(cut)!r},\n"
        "        batch_size=5, num_workers=0, device='cpu', callback=cb)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(CacheLockedError):  # while it runs, a second process is refused
            _run([s], cut)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (p,), (res,) = _run([s], cut)
    assert res.status == "resumed" and 0 < res.n_computed < 40
    a, b = read_cache(clean), read_cache(p)
    for k in a.features:
        np.testing.assert_array_equal(a.features[k], b.features[k])


def test_other_encoder_weights_are_an_error_unless_overwrite(tmp_path):
    s = fake_sample(10)
    _run([s], tmp_path)
    with pytest.raises(InputError, match="--overwrite") as e:
        _run([s], tmp_path, encoder=tiny_encoder(seed=1))
    assert "tiny-seed1" in str(e.value) and e.value.path.name == "S1.h5"
    (p,), (res,) = _run([s], tmp_path, encoder=tiny_encoder(seed=1), overwrite=True)
    assert res.status == "written" and read_attrs(p)["weights_id"] == "tiny-seed1"
    with pytest.raises(InputError, match="float16"):
        _run([s], tmp_path, encoder=tiny_encoder(seed=1), dtype="float32")


def test_missing_scales_and_neighbours_are_added(tmp_path):
    s = fake_sample(20)
    (full,), _ = _run([s], tmp_path / "full", dtype="float32")
    (p,), _ = _run([s], tmp_path / "grow", scales_um=(16, 32), dtype="float32", k_neighbors=3)
    before = read_cache(p)
    (p,), (res,) = _run([s], tmp_path / "grow", scales_um=(64,), dtype="float32", k_neighbors=3)
    assert res.status == "updated" and res.n_computed == 20
    d, ref = read_cache(p), read_cache(full)
    assert list(d.features) == ["16", "32", "64"] and d.attrs["scales_um"] == [16.0, 32.0, 64.0]
    np.testing.assert_array_equal(d.features["16"], before.features["16"])  # untouched
    np.testing.assert_allclose(d.features["64"], ref.features["64"], rtol=1e-5, atol=1e-6)
    assert d.neighbors.shape == (20, 3)
    (p,), (res,) = _run([s], tmp_path / "grow", scales_um=(64,), dtype="float32", k_neighbors=6)
    assert res.status == "updated" and res.n_computed == 0 and read_cache(p).neighbors.shape == (20, 6)


def test_a_locked_file_is_refused(tmp_path):
    s = fake_sample(8)
    final = tmp_path / "tiny-test" / "S1.h5"
    with cache_lock(final):
        with pytest.raises(CacheLockedError):
            _run([s], tmp_path)
    assert not final.exists()


def test_shards_split_samples(tmp_path, monkeypatch):
    samples = [fake_sample(6, seed=i, sample_id=f"S{i}") for i in range(3)]
    paths, res = _run(samples, tmp_path, shard="1/2")
    assert [p.name for p in paths] == ["S1.h5"] and [r.sample_id for r in res] == ["S1"]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    paths, _ = _run(samples, tmp_path)
    assert [p.name for p in paths] == ["S0.h5", "S2.h5"]
    with pytest.raises(ValueError, match="0-based"):
        _run(samples, tmp_path, shard="2/2")


def test_workers_give_the_same_features(tmp_path):
    s = fake_sample(24)
    (a,), _ = _run([s], tmp_path / "w0", num_workers=0)
    (b,), _ = _run([s], tmp_path / "w2", num_workers=2)
    for k, v in read_cache(a).features.items():
        np.testing.assert_array_equal(v, read_cache(b).features[k])


def test_bad_options(tmp_path):
    s = fake_sample(4)
    with pytest.raises(ValueError, match="scales_um"):
        _run([s], tmp_path, scales_um=(0, 112))
    with pytest.raises(ValueError, match="float16 or float32"):
        _run([s], tmp_path, dtype="int8")
    s.slide = None
    with pytest.raises(InputError, match="no H&E image"):
        _run([s], tmp_path)


def test_resume_finishes_every_started_scale(tmp_path):
    s = fake_sample(20)
    with pytest.raises(_Stop):
        _run([s], tmp_path, callback=_stop_after(1))
    (p,), (res,) = _run([s], tmp_path, scales_um=(16,), batch_size=None)
    assert res.status == "resumed"
    d = read_cache(p)
    assert list(d.features) == ["16", "32", "64"] and d.attrs["scales_um"] == [16.0, 32.0, 64.0]
