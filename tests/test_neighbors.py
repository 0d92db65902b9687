"""The spatial neighbour graph (scipy cKDTree) against brute-force numpy."""

from __future__ import annotations

import numpy as np
import pytest

from stfeat.neighbors import spatial_neighbors


def _brute(c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = np.linalg.norm(c[:, None, :] - c[None, :, :], axis=2)
    np.fill_diagonal(d, np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(len(c)), d.shape), d), axis=1)[:, :k]
    return order, np.take_along_axis(d, order, axis=1)


def test_random_points_match_brute_force():
    rng = np.random.default_rng(0)
    c = rng.uniform(0, 8000, (600, 2)) + 1e5  # large offsets: precision must survive float32
    idx, dist = spatial_neighbors(c, 8)
    bi, bd = _brute(c, 8)
    assert idx.shape == (600, 8) and idx.dtype == np.int64 and dist.dtype == np.float32
    np.testing.assert_array_equal(idx, bi)
    np.testing.assert_allclose(dist, bd, rtol=1e-6)
    assert not (idx == np.arange(600)[:, None]).any()


def test_lattice_with_ties_has_exact_distances():
    # a legacy-ST-like lattice: 200 um pitch, many equal distances
    g = np.stack(np.meshgrid(np.arange(12), np.arange(9)), -1).reshape(-1, 2) * 200.0
    idx, dist = spatial_neighbors(g, 6)
    _, bd = _brute(g, 6)
    np.testing.assert_allclose(dist, bd, rtol=1e-6)  # same distance profile whichever tie is kept
    own = np.linalg.norm(g[idx] - g[:, None], axis=2)
    np.testing.assert_allclose(dist, own, rtol=1e-6)  # every index really is at its stated distance
    assert (np.diff(dist, axis=1) >= 0).all()
    interior = 5 * 12 + 5
    assert sorted(dist[interior][:4].tolist()) == [200.0] * 4
    assert set(idx[interior][:4]) == {interior - 1, interior + 1, interior - 12, interior + 12}
    # ties are broken by index, so the result is deterministic
    np.testing.assert_array_equal(idx, spatial_neighbors(g, 6)[0])


def test_fewer_points_than_k_and_duplicates():
    c = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    idx, dist = spatial_neighbors(c, 4)
    assert idx.shape == (3, 4)
    assert (idx[:, 2:] == -1).all() and np.isinf(dist[:, 2:]).all()
    assert idx[0, 0] == 2 and dist[0, 0] == 0.0  # the duplicate, never itself
    assert idx[2, 0] == 0 and dist[2, 1] == 5.0
    one_i, one_d = spatial_neighbors(np.zeros((1, 2)), 3)
    assert (one_i == -1).all() and np.isinf(one_d).all()


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        spatial_neighbors(np.zeros((5, 3)), 2)
    with pytest.raises(ValueError, match="NaN"):
        spatial_neighbors(np.array([[0.0, np.nan], [1.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="k must be"):
        spatial_neighbors(np.zeros((5, 2)), 0)


@pytest.mark.parametrize("layout", ["uniform", "clusters", "hex", "line", "rings"])
def test_spatial_neighbors_equal_brute_force(layout):
    """The reference: exact neighbours and distances, ties broken by index, on hard layouts."""
    rng = np.random.default_rng(3)
    if layout == "uniform":
        c = rng.uniform(0, 5000, (2500, 2))
    elif layout == "clusters":  # dense blobs plus isolated spots far away
        c = np.concatenate([rng.normal(mu, 30, (800, 2)) for mu in ((0, 0), (3000, 500), (800, 4000))]
                           + [rng.uniform(-9000, 9000, (12, 2))])
    elif layout == "hex":  # Visium-like lattice: many exact ties, resolved by index
        i, j = np.meshgrid(np.arange(50), np.arange(45))
        c = np.stack([i * 100.0 + (j % 2) * 50.0, j * 100.0 * np.sqrt(3) / 2], -1).reshape(-1, 2)
        c = np.concatenate([c, c[:5]])  # and a few duplicated positions
    elif layout == "line":  # all on a line: a degenerate bounding box
        c = np.stack([rng.uniform(0, 1e5, 2000), np.full(2000, 7.0)], -1)
    else:  # more equidistant spots than the candidates the first query takes
        # 20 spots exactly 300 um from the origin (Pythagorean triples): more ties than candidates
        ring = np.array([(sx * a, sy * b) for a, b in ((300, 0), (0, 300), (180, 240), (240, 180),
                                                       (84, 288), (288, 84))
                         for sx in (1, -1) for sy in (1, -1)], float)
        ring = np.unique(ring, axis=0)[::-1]
        c = np.concatenate([rng.uniform(2000, 4000, (60, 2)), ring * 3, ring, [[0.0, 0.0]]])
        c = np.concatenate([c, np.zeros((12, 2)) + 5000])  # and 13 spots at one position
    c = c + 2e5  # slide-scale offsets
    idx, dist = spatial_neighbors(c, 8)
    bi, bd = _brute(c, 8)
    np.testing.assert_allclose(dist, bd, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(idx, bi)
