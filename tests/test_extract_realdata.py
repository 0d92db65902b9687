"""Stage one on a real HER2ST section with the real DenseNet-121 weights (skips without ../shared)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from stfeat.cache import read_attrs, read_cache

pytestmark = pytest.mark.realdata

N_SPOTS = 9


@pytest.fixture(scope="module")
def c2_subset(her2st):
    """Section C2 cut to a compact patch of spots (the nearest ones to a tissue-centre spot)."""
    from stfeat.io import resolve_samples
    from stfeat.io.sample import Sample

    ref = next(r for r in resolve_samples(her2st) if r.sample_id == "C2")
    s = ref.load()
    c = s.coords
    centre = np.argmin(np.linalg.norm(c - np.median(c, axis=0), axis=1))
    keep = np.sort(np.argsort(np.linalg.norm(c - c[centre], axis=1))[:N_SPOTS])
    return Sample(s.adata[keep].copy(), s.slide)


def test_real_encoder_on_a_her2st_section(c2_subset, shared_weights, tmp_path):
    """EfficientNet-Lite0 (real weights; DenseNet-121 is 7x the compute on CPU) on a patch of C2."""
    from stfeat.extraction import extract_caches as extract

    weights = shared_weights / "tf_efficientnet_lite0.in1k.safetensors"
    (path,) = extract([c2_subset], encoder="efficientnet-lite0", weights=weights, cache_dir=tmp_path,
                      batch_size=4, num_workers=1, device="cpu", k_neighbors=4)
    assert path == tmp_path / "efficientnet-lite0" / "C2.h5"
    d = read_cache(path)
    assert list(d.features) == ["112", "224", "448"]
    for v in d.features.values():
        assert v.shape == (N_SPOTS, 1280) and np.isfinite(v).all()
        assert v.std(axis=0).mean() > 0  # spots differ
    assert not np.allclose(d.features["112"], d.features["448"])
    a = d.attrs
    assert a["weights_id"].startswith("sha256:2d3c8842")  # the file's published sha256
    assert a["patient"] == "C" and a["patch_px"] == 224 and "spot-lattice" in a["um_per_px_source"]
    assert 0.68 < a["um_per_px"] < 0.70
    # legacy ST array: neighbouring spots lie 150-200 um apart (pitch 200 um, rows offset)
    assert ((d.neighbor_dist_um[:, 0] > 120) & (d.neighbor_dist_um[:, 0] < 260)).all()
    # the pooled features are post-activation (ReLU6): non-negative
    assert (d.features["224"] >= 0).all()


@pytest.fixture()
def mini_her2st(her2st, tmp_path):
    """A HER2ST-layout folder holding section C2 with only 6 spots (real counts file and image)."""
    root = tmp_path / "mini"
    for sub in ("ST-cnts", "ST-spotfiles", "ST-imgs/C/C2"):
        (root / sub).mkdir(parents=True)
    (root / "ST-cnts" / "C2.tsv.gz").symlink_to(her2st / "ST-cnts" / "C2.tsv.gz")
    img = next((her2st / "ST-imgs" / "C" / "C2").glob("*.jpg"))
    (root / "ST-imgs" / "C" / "C2" / img.name).symlink_to(img)
    lines = (her2st / "ST-spotfiles" / "C2_selection.tsv").read_text().splitlines()
    (root / "ST-spotfiles" / "C2_selection.tsv").write_text("\n".join(lines[:7]) + "\n")
    return root


def test_cli_extract_writes_then_skips(mini_her2st, shared_weights, tmp_path):
    """`stfeat extract` on a real (cut-down) section, then a no-op rerun, then bad options."""
    from stfeat.cli import app

    runner = CliRunner()
    cache = tmp_path / "cache"
    args = ["extract", str(mini_her2st), "--encoder", "efficientnet-lite0", "--weights",
            str(shared_weights / "tf_efficientnet_lite0.in1k.safetensors"), "--cache-dir", str(cache),
            "--num-workers", "0", "--device", "cpu", "--um-per-px", "0.69", "--k-neighbors", "3", "--scales-um", "112"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "C2: written, 6 spots (6 computed)" in r.output
    d = read_cache(cache / "efficientnet-lite0" / "C2.h5")
    assert d.n_spots == 6 and d.attrs["um_per_px"] == 0.69 and d.attrs["um_per_px_source"] == "user"
    assert d.neighbors.shape == (6, 3)
    r2 = runner.invoke(app, args)
    assert r2.exit_code == 0, r2.output
    assert "C2: skipped" in r2.output and "1 skipped" in r2.output
    other = runner.invoke(app, args[:4] + args[6:])  # default weights: another identity
    assert other.exit_code == 1 and "--overwrite" in other.output
    bad = runner.invoke(app, args[:-2] + ["--scales-um", "112,abc"])
    assert bad.exit_code != 0 and "--scales-um" in bad.output
    bad_shard = runner.invoke(app, args + ["--shard", "3/3"])
    assert bad_shard.exit_code != 0 and "0-based" in bad_shard.output
