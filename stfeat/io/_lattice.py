"""Micrometres per pixel from a spot lattice: a robust fit of pixel positions on array positions.

A spot file states, for every spot, its position on the array (integers) and its centre in image
pixels. The array's physical geometry is known (legacy ST: 200 um square grid, or a 100 um
checkerboard on the 2k array; Visium: 100 um centre to centre on a hexagonal grid), so an affine fit
``pixel = M @ um + t`` gives the pixel size. A plain least-squares fit trusts every row: one mistyped
``pixel_x`` ten times too large moved HER2ST C2 from 0.689 to 0.569 um/px. This fit is iteratively
trimmed: rows whose residual is far above the typical jitter of detected spot centres are left out
and refitted without, the residual is reported, and a lattice that does not look like one (all spots
on one pixel, a line, a strongly sheared or anisotropic grid) is refused instead of giving 4.8e14 um/px.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stfeat.errors import InputError

_MIN_SPOTS = 6
# a scanner's pixels are square and the array is not sheared: more than this between the two axes' steps
# (or between the axes' angle and 90 degrees) means the positions are not a lattice of this array
_MAX_ANISOTROPY = 1.25
_MAX_SHEAR_DEG = 15.0


@dataclass
class LatticeFit:
    """Result of :func:`fit_lattice`.

    Attributes
    ----------
    um_per_px
        Micrometres per pixel (the mean of the two axes' scales).
    residual_px
        Root-mean-square distance of the kept rows from the fitted lattice, in pixels.
    residual_um
        The same in micrometres.
    n_used
        Rows the final fit used.
    outliers
        Indices (into the rows given) left out as outliers.
    """

    um_per_px: float
    residual_px: float
    residual_um: float
    n_used: int
    outliers: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    predicted_px: np.ndarray | None = None
    step_px: float = float("nan")
    far: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def describe(self) -> str:
        s = f"rms residual {self.residual_px:.1f} px ({self.residual_um:.1f} um) over {self.n_used} spots"
        if len(self.outliers):
            s += f", {len(self.outliers)} outlier rows left out"
        return s


def _affine(U: np.ndarray, P: np.ndarray) -> np.ndarray:
    A = np.column_stack([U, np.ones(len(U))])
    coef, *_ = np.linalg.lstsq(A, P, rcond=None)
    return coef  # (3, 2): rows = d/du, d/dv, offset


def fit_lattice(array_um: np.ndarray, pixel: np.ndarray, *, path: Path, what: str = "spot file",
                trim: float = 3.5, min_tol_frac: float = 0.05) -> LatticeFit:
    """Fit pixel positions on physical array positions, trimming outliers.

    Parameters
    ----------
    array_um
        (n, 2) array positions converted to micrometres (e.g. ``x * 200``).
    pixel
        (n, 2) spot centres in pixels; rows with a non-finite value are ignored.
    path
        The file the positions come from (named in errors).
    trim
        A row is an outlier when its residual exceeds ``trim`` times the median residual (the
        jitter of detected centres), or ``min_tol_frac`` of one lattice step when the lattice is exact.

    Raises
    ------
    InputError
        Too few usable spots, or positions that do not form a lattice (degenerate, sheared, anisotropic).
    """
    U = np.asarray(array_um, dtype=np.float64)
    P = np.asarray(pixel, dtype=np.float64)
    ok = np.isfinite(U).all(axis=1) & np.isfinite(P).all(axis=1)
    idx = np.flatnonzero(ok)
    if len(idx) < _MIN_SPOTS:
        raise InputError(path, f"only {len(idx)} spots of the {what} have usable array and pixel positions, "
                         f"too few to measure the lattice (need {_MIN_SPOTS}).",
                         "give the pixel size with --um-per-px (um_per_px=...).")
    if np.linalg.matrix_rank(np.column_stack([U[idx] - U[idx].mean(0)]), tol=1e-6) < 2:
        raise InputError(path, f"the array positions of the {what} lie on one line or point: no 2-D lattice "
                         "to measure the pixel size from.", "give the pixel size with --um-per-px.")
    step_um = _typical_step_um(U[idx])
    coef = _pair_start(U[idx], P[idx])
    A_all = np.column_stack([U[idx], np.ones(len(idx))])
    keep = idx
    for it in range(12):
        res = np.linalg.norm(A_all @ coef - P[idx], axis=1)
        step_px = step_um * float(np.mean(np.linalg.norm(coef[:2], axis=1)))
        base = float(np.median(res)) if it == 0 else float(np.median(res[np.isin(idx, keep)]))
        tol = max(trim * base, min_tol_frac * step_px, 1e-9)
        new = idx[res <= tol]
        if len(new) < _MIN_SPOTS or (it > 0 and np.array_equal(new, keep)):
            break
        keep = new
        coef = _affine(U[keep], P[keep])
    coef = _affine(U[keep], P[keep])
    M = coef[:2]  # px per um along u (row 0) and v (row 1)
    norms = np.linalg.norm(M, axis=1)
    _check_lattice(M, norms, path, what, step_um)
    pred = np.column_stack([U, np.ones(len(U))]) @ coef
    res_keep = np.linalg.norm(pred[keep] - P[keep], axis=1)
    um_per_px = 1.0 / float(norms.mean())
    rms = float(np.sqrt(np.mean(res_keep**2)))
    outliers = np.setdiff1d(idx, keep)
    step_px = step_um / um_per_px
    # farther than half a step from its lattice place: this row's pixel position cannot be its spot's
    res_all = np.linalg.norm(pred - np.where(np.isfinite(P), P, np.inf), axis=1)
    far = np.flatnonzero(~(res_all <= 0.5 * step_px) & np.isfinite(U).all(axis=1))
    return LatticeFit(um_per_px=um_per_px, residual_px=rms, residual_um=rms * um_per_px, n_used=len(keep),
                      outliers=outliers, predicted_px=pred, step_px=step_px, far=far)


def _pair_start(U: np.ndarray, P: np.ndarray) -> np.ndarray:
    """A robust first fit: the median pixel step between array-adjacent spots along each axis.

    Pairs come from each spot's nearest array neighbours; along an axis, the most frequent array step
    and the median of the pixel steps of those pairs give that axis' column of ``M``. Medians ignore a
    few mistyped rows (a least-squares start would be dragged by them). Falls back to least squares.
    """
    from scipy.spatial import cKDTree

    k = min(len(U), 13)
    _, nb = cKDTree(U).query(U, k=k)
    i = np.repeat(np.arange(len(U)), k - 1)
    j = nb[:, 1:].ravel()
    valid = j < len(U)  # cKDTree marks missing neighbours with index n
    i, j = i[valid], j[valid]
    du, dp = U[j] - U[i], P[j] - P[i]
    M = np.zeros((2, 2))
    for ax in (0, 1):
        other = 1 - ax
        sel = (np.abs(du[:, other]) < 1e-6) & (du[:, ax] > 1e-6)
        if not sel.any():
            return _affine(U, P)
        steps, counts = np.unique(np.round(du[sel, ax], 6), return_counts=True)
        s = steps[np.argmax(counts)]
        pick = sel & (np.abs(du[:, ax] - s) < 1e-6)
        M[ax] = np.median(dp[pick], axis=0) / s
    t = np.median(P - U @ M, axis=0)
    return np.vstack([M, t])


def _typical_step_um(U: np.ndarray) -> float:
    d = np.abs(np.diff(np.unique(U[:, 0])))
    d = d[d > 0]
    return float(d.min()) if d.size else 1.0


def _check_lattice(M: np.ndarray, norms: np.ndarray, path: Path, what: str, step_um: float) -> None:
    fix = "check the pixel columns of the spot file (swapped, rescaled or constant?), or give --um-per-px."
    if not np.isfinite(M).all() or norms.min() * step_um < 1e-3:
        raise InputError(path, f"the pixel positions of the {what} do not move with the array positions "
                         f"(all spots at about one pixel): the lattice is degenerate.", fix)
    ratio = float(norms.max() / norms.min())
    cos = float(abs(M[0] @ M[1]) / (norms[0] * norms[1]))
    shear = 90.0 - float(np.degrees(np.arccos(min(1.0, cos))))
    if ratio > _MAX_ANISOTROPY or shear > _MAX_SHEAR_DEG:
        raise InputError(path, f"the pixel positions of the {what} do not form the array's lattice (the two "
                         f"axes' steps differ {ratio:.2f}x, the axes are {shear:.0f} degrees from square).", fix)


def outlier_note(fit: LatticeFit, labels: list[str], what: str) -> str:
    """A warning naming the outlier rows (at most 10) and how far they lie from the lattice."""
    shown = ", ".join(labels[:10]) + (" ..." if len(labels) > 10 else "")
    return (f"{what}: {len(labels)} spot(s) lie far from the array lattice the other spots form "
            f"({shown}), more than half a step from their place; they were left out of the pixel-size fit and "
            "dropped (a mistyped pixel position?).")
