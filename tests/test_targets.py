"""Target genes and transforms: training-only selection, library size over all genes."""

from __future__ import annotations

import numpy as np
import pytest

from stfeat.errors import InputError
from stfeat.targets import (Expression, GeneRule, select_genes, target_matrix, transform_counts)


def _expr(sid, counts, genes):
    return Expression.from_matrix(sid, np.asarray(counts, dtype=np.float32), genes)


def test_log1p_cp10k_uses_library_size_of_all_genes():
    counts = np.array([[1, 3, 6], [0, 0, 10], [0, 0, 0]], dtype=np.float32)
    e = _expr("s", counts, ["A", "B", "C"])
    Y = target_matrix(e, ["A", "B"], "log1p_cp10k")
    lib = np.array([10.0, 10.0, 0.0])
    expected = np.log1p(1e4 * counts[:, :2] / np.where(lib > 0, lib, 1)[:, None])
    expected[2] = 0.0  # empty spot: zeros, not NaN
    np.testing.assert_allclose(Y, expected, rtol=1e-6)
    # other transforms
    np.testing.assert_allclose(transform_counts(counts[:, :2], lib, "raw"), counts[:, :2])
    np.testing.assert_allclose(transform_counts(counts[:, :2], lib, "log1p"), np.log1p(counts[:, :2]))
    with pytest.raises(ValueError, match="unknown target transform"):
        transform_counts(counts, lib, "zscore")


def test_hvg_and_hex_are_chosen_on_training_data_only():
    rng = np.random.default_rng(0)
    genes = ["FLAT", "VAR", "HIGH", "TESTONLY"]
    def make(sid, test_var):
        c = np.zeros((50, 4), np.float32)
        c[:, 0] = 5
        c[:, 1] = rng.choice([0, 20], size=50)  # variable everywhere
        c[:, 2] = 200  # highly expressed, constant
        c[:, 3] = rng.choice([0, 500], size=50) if test_var else 1  # variable only in the test sample
        return _expr(sid, c, genes)
    train = [make("tr1", False), make("tr2", False)]
    test = make("te", True)
    sel = select_genes(train, "hvg:1")
    assert sel.genes == ["VAR"]
    assert sel.train_samples == ["tr1", "tr2"]
    assert select_genes([test], "hvg:1").genes == ["TESTONLY"]  # the test data would have chosen it
    assert select_genes(train, "hex:1").genes == ["HIGH"]
    assert "variance of log1p(counts per 10k)" in sel.description


def test_gene_rules_file_and_common(tmp_path):
    a = _expr("a", np.ones((4, 3)), ["X", "Y", "Z"])
    b = _expr("b", np.ones((4, 2)), ["Z", "X"])
    assert select_genes([a, b], "common").genes == ["X", "Z"]
    f = tmp_path / "genes.txt"
    f.write_text("# my genes\nZ\nNOPE\nY\n\n")
    sel = select_genes([a, b], f"file:{f}")
    assert sel.genes == ["Z"]
    assert set(sel.missing) == {"NOPE", "Y"}
    f.write_text("NOPE\n")
    with pytest.raises(InputError, match="none of the 1 listed genes"):
        select_genes([a, b], f"file:{f}")
    with pytest.raises(InputError, match="not found"):
        GeneRule.parse(f"file:{tmp_path / 'absent.txt'}")
    for bad in ("hvg", "hvg:0", "top:5"):
        with pytest.raises(ValueError):
            GeneRule.parse(bad)


def test_absent_gene_in_a_sample_is_zero_and_duplicates_summed():
    e = _expr("s", [[1, 2, 3]], ["A", "A", "B"])
    assert list(e.genes) == ["A", "B"]
    assert e.counts.toarray().tolist() == [[3, 3]]
    Y = target_matrix(e, ["B", "MISSING"], "raw")
    assert Y.tolist() == [[3, 0]]


def test_smooth_targets_neighbourhood_within_samples():
    from stfeat.targets import smooth_targets

    # two samples on the same 3 x 3 grid (200 um pitch): smoothing must never mix them
    grid = np.stack(np.meshgrid(np.arange(3), np.arange(3)), -1).reshape(-1, 2) * 200.0
    coords = np.concatenate([grid, grid])
    sids = np.array(["a"] * 9 + ["b"] * 9)
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((18, 2))
    S = smooth_targets(Y, coords, sids, radius_um=1.5 * 200)  # 3 x 3 neighbourhood
    np.testing.assert_allclose(S[4], Y[:9].mean(0))  # the centre spot: all 9 of its sample
    np.testing.assert_allclose(S[13], Y[9:].mean(0))
    np.testing.assert_allclose(S[0], Y[[0, 1, 3, 4]].mean(0))  # a corner: itself + 3
    # radius below the pitch: every spot is its own neighbourhood
    np.testing.assert_allclose(smooth_targets(Y, coords, sids, 100.0), Y)
    # 4-neighbourhood at exactly one pitch (inclusive)
    np.testing.assert_allclose(smooth_targets(Y[:, 0], coords, sids, 200.0)[4],
                               Y[[1, 3, 4, 5, 7], 0].mean())
    with pytest.raises(ValueError, match="radius_um"):
        smooth_targets(Y, coords, sids, 0)
    with pytest.raises(ValueError, match="sample_ids"):
        smooth_targets(Y, coords[:5], sids, 300)
