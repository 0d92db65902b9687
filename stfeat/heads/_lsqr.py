"""LSQR for many right-hand sides at once, as scikit-learn's ``Ridge(solver="lsqr")`` runs it.

scikit-learn solves a multi-output ridge with LSQR one target at a time
(``sklearn.linear_model._ridge._solve_lsqr`` -> ``scipy.sparse.linalg.lsqr(X, y_j, damp=sqrt(alpha),
atol=tol, btol=tol, iter_lim=max_iter)``); each iteration is two matrix-vector products over all
spots, so hundreds of genes on thousands of spots take minutes. This module runs the same
Paige-Saunders recurrence (scipy's ``lsqr``: same scalars, same stopping tests, each target
stopping at its own iteration) for all targets together, so each iteration is two matrix-matrix
products (BLAS-3) instead of 2g matrix-vector products. Only the summation order of those
products differs from scipy, so iterations and solutions agree to rounding.
"""

from __future__ import annotations

import numpy as np


def _sym_ortho(a: np.ndarray, b: np.ndarray):
    """Vectorised scipy ``_sym_ortho``: a stable Givens rotation (c, s, r) with r = hypot(a, b)."""
    c = np.zeros_like(a)
    s = np.zeros_like(a)
    r = np.zeros_like(a)
    b0 = b == 0
    a0 = (a == 0) & ~b0
    big_b = ~b0 & ~a0 & (np.abs(b) > np.abs(a))
    rest = ~b0 & ~a0 & ~big_b
    c[b0], s[b0], r[b0] = np.sign(a[b0]), 0.0, np.abs(a[b0])
    c[a0], s[a0], r[a0] = 0.0, np.sign(b[a0]), np.abs(b[a0])
    tau = a[big_b] / b[big_b]
    s[big_b] = np.sign(b[big_b]) / np.sqrt(1 + tau * tau)
    c[big_b] = s[big_b] * tau
    r[big_b] = b[big_b] / s[big_b]
    tau = b[rest] / a[rest]
    c[rest] = np.sign(a[rest]) / np.sqrt(1 + tau * tau)
    s[rest] = c[rest] * tau
    r[rest] = a[rest] / c[rest]
    return c, s, r


def lsqr_multi(A: np.ndarray, B: np.ndarray, *, damp: float = 0.0, atol: float = 1e-4,
               btol: float = 1e-4, conlim: float = 1e8, iter_lim: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``min ||A x_j - b_j||^2 + damp^2 ||x_j||^2`` for every column ``b_j`` of ``B``.

    Parameters
    ----------
    A
        (n, k) float64.
    B
        (n, g) float64 right-hand sides.
    damp, atol, btol, conlim, iter_lim
        As in :func:`scipy.sparse.linalg.lsqr` (``iter_lim=None`` -> 2k).

    Returns
    -------
    X : ndarray (k, g)
        Solutions.
    n_iter : ndarray (g,) int
        Iterations used per column (scipy's ``itn``).
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    n, k = A.shape
    g = B.shape[1]
    if iter_lim is None:
        iter_lim = 2 * k
    eps = np.finfo(np.float64).eps
    bb = np.einsum("ij,ij->j", B, B)  # (g,)
    dampsq = damp * damp
    ctol = 1.0 / conlim if conlim > 0 else 0.0
    zeros = np.zeros(g)
    anorm, ddnorm, res2, xnorm, xxnorm, z = (zeros.copy() for _ in range(6))
    cs2, sn2 = -np.ones(g), zeros.copy()
    bnorm = np.sqrt(bb)
    x = np.zeros((k, g))
    beta = bnorm.copy()
    U = B * np.where(beta > 0, 1.0 / np.where(beta > 0, beta, 1.0), 0.0)
    v = A.T @ U
    alfa = np.linalg.norm(v, axis=0)
    v = v / np.where(alfa > 0, alfa, 1.0)
    w = v.copy()
    rhobar, phibar = alfa.copy(), beta.copy()
    active = alfa * beta != 0         # arnorm == 0: x = 0 is the solution
    n_iter = np.zeros(g, dtype=np.int64)
    itn = 0
    while active.any() and itn < iter_lim:
        itn += 1
        cols = np.flatnonzero(active)
        # u = A v - alfa u ; v = A^T u - beta v (normalised), as scipy
        u = A @ v[:, cols] - alfa[cols] * U[:, cols]
        beta_c = np.linalg.norm(u, axis=0)
        pos = beta_c > 0
        u = u / np.where(pos, beta_c, 1.0)
        U[:, cols] = u
        anorm_c = np.where(pos, np.sqrt(anorm[cols] ** 2 + alfa[cols] ** 2 + beta_c ** 2 + dampsq),
                           anorm[cols])
        v_new = A.T @ u - beta_c * v[:, cols]
        alfa_c = np.where(pos, np.linalg.norm(v_new, axis=0), alfa[cols])
        v_new = np.where(pos & (alfa_c > 0), v_new / np.where(alfa_c > 0, alfa_c, 1.0),
                         np.where(pos, v_new, v[:, cols]))
        beta[cols], anorm[cols], alfa[cols] = beta_c, anorm_c, alfa_c
        v[:, cols] = v_new

        rb, pb = rhobar[cols], phibar[cols]
        if damp > 0:
            rhobar1 = np.sqrt(rb ** 2 + dampsq)
            cs1 = rb / rhobar1
            sn1 = damp / rhobar1
            psi = sn1 * pb
            pb = cs1 * pb
        else:
            rhobar1 = rb
            psi = np.zeros_like(rb)
        cs, sn, rho = _sym_ortho(rhobar1, beta_c)
        theta = sn * alfa_c
        rhobar[cols] = -cs * alfa_c
        phi = cs * pb
        phibar[cols] = sn * pb
        tau = sn * phi
        t1 = phi / rho
        t2 = -theta / rho
        wc = w[:, cols]
        dk = wc / rho
        x[:, cols] += t1 * wc
        w[:, cols] = v[:, cols] + t2 * wc
        ddnorm[cols] += np.einsum("ij,ij->j", dk, dk)
        delta = sn2[cols] * rho
        gambar = -cs2[cols] * rho
        rhs = phi - delta * z[cols]
        zbar = rhs / gambar
        xnorm[cols] = np.sqrt(xxnorm[cols] + zbar ** 2)
        gamma = np.sqrt(gambar ** 2 + theta ** 2)
        cs2[cols] = gambar / gamma
        sn2[cols] = theta / gamma
        z[cols] = rhs / gamma
        xxnorm[cols] += z[cols] ** 2
        acond = anorm[cols] * np.sqrt(ddnorm[cols])
        res1 = phibar[cols] ** 2
        res2[cols] += psi ** 2
        rnorm = np.sqrt(res1 + res2[cols])
        arnorm = alfa_c * np.abs(tau)
        test1 = rnorm / bnorm[cols]
        test2 = arnorm / (anorm[cols] * rnorm + eps)
        test3 = 1.0 / (acond + eps)
        t1b = test1 / (1 + anorm[cols] * xnorm[cols] / bnorm[cols])
        rtol = btol + atol * anorm[cols] * xnorm[cols] / bnorm[cols]
        stop = ((itn >= iter_lim) | (1 + test3 <= 1) | (1 + test2 <= 1) | (1 + t1b <= 1)
                | (test3 <= ctol) | (test2 <= atol) | (test1 <= rtol))
        n_iter[cols] = itn
        active[cols[stop]] = False
    return x, n_iter


def lsqr_multi_compressed(A: np.ndarray, B: np.ndarray, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """:func:`lsqr_multi` on tall ``A`` (n, k), n > k, after compressing the rows by a QR.

    LSQR's iterates are unchanged when ``A`` and ``b`` are both multiplied on the left by an
    orthogonal matrix (its bidiagonalisation, scalars and stopping tests use only inner products
    and norms). With ``A = Q R`` (thin QR) and ``b_j = Q c_j + r_j`` (``r_j`` orthogonal to
    ``range(Q)``), the orthogonal map sending ``Q``'s columns to ``e_1..e_k`` and ``r_j / |r_j|`` to
    ``e_{k+1}`` turns the problem of column j into ``A' = [R; 0]`` ((k+1, k)) and
    ``b'_j = [c_j; |r_j|]``. The zero row is shared by every column, so all columns run together on
    a (k+1, k) matrix: each iteration costs O(k^2 g) instead of O(n k g). Same iterates in exact
    arithmetic; rounding differs only in the summation order (tests compare with scipy).
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    n, k = A.shape
    if n <= k + 1:
        return lsqr_multi(A, B, **kwargs)
    from stfeat.heads._cpu import blas_threads

    with blas_threads():
        R, C, rr = _compress(A, B)
        A_red = np.vstack([R, np.zeros((1, k))])
        B_red = np.vstack([C, np.sqrt(rr)[None, :]])
        return lsqr_multi(A_red, B_red, **kwargs)


def _compress(A: np.ndarray, B: np.ndarray):
    """``R`` (k, k), ``C = Q^T B`` (k, g) and ``|B - Q C|^2`` per column, for ``A = Q R``.

    Cholesky QR (``R`` from ``A^T A``; two products of the size of ``A`` instead of a Householder
    QR and an explicit ``Q``) when ``A`` is well conditioned (cond < 1e4, so ``Q = A R^-1`` is
    orthonormal to ~1e-8); Householder QR otherwise.
    """
    from scipy import linalg

    k = A.shape[1]
    bb = np.einsum("ij,ij->j", B, B)
    try:
        R = linalg.cholesky(A.T @ A, lower=False, check_finite=False)
        ok = np.linalg.cond(R) < 1e4
    except (np.linalg.LinAlgError, ValueError):
        ok = False
    if ok:
        C = linalg.solve_triangular(R, A.T @ B, trans="T", check_finite=False)
        rr = bb - np.einsum("ij,ij->j", C, C)
        # where the residual is a tiny part of |b|^2 the difference cancels: compute it directly
        small = rr < 1e-6 * bb
        if small.any():
            Q = linalg.solve_triangular(R, A.T, trans="T", check_finite=False).T
            resid = B[:, small] - Q @ C[:, small]
            rr[small] = np.einsum("ij,ij->j", resid, resid)
        return R, C, np.maximum(rr, 0.0)
    Q, R = linalg.qr(A, mode="economic", check_finite=False)
    C = Q.T @ B
    resid = B - Q @ C
    return R[:k], C, np.einsum("ij,ij->j", resid, resid)
