"""Fit :class:`stfeat.heads.knn.KNNHead` from row chunks of a (lazy) FeatureSet: the feature matrix is never whole.

:func:`fit_knn_featureset` leaves the head in the state ``KNNHead.fit`` gives on the concatenated rows (the
same attributes: ``mean_``, ``scale_``, ``components_``, ``pca_mean_``, ``index_features_``, ``Y_train_`` and
the FAISS index), so ``predict``, ``save`` and ``load`` work unchanged. Two passes over the chunks of
:meth:`stfeat.features.FeatureSet.iter_flat` (standardised per slide under ``fs.standardize``):

1. the standardisation, as :func:`stfeat.heads._base.standardize_fit` (population variance, constant columns
   scale 1), merged over chunks by Chan et al.'s pairwise update (float64); with ``pca_components`` also the
   feature covariance (float64 sums about the first chunk's mean), whose leading eigenvectors are the PCA
   axes (``PCA(svd_solver="covariance_eigh")``'s; an axis's sign and the search results do not depend on it);
2. each chunk's searched vectors (:meth:`KNNHead._embed`: standardised, projected, L2-normalised for
   ``metric="cosine"``) into ``index_features_``.

The index is then built as ``KNNHead.fit`` builds it (:meth:`KNNHead._new_index`): exact (flat) below
``ivf_threshold`` training spots, else IVF with the same ``nlist``, trained on the same seeded rows, and the
vectors added in row blocks. Memory: the searched vectors (n x d' float32, which the head keeps anyway and
the index copies), the targets (n x g float32) and one chunk of features.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np

from stfeat.heads._base import RowMoments

logger = logging.getLogger(__name__)


class _Moments(RowMoments):
    """:class:`RowMoments` plus, optionally, the cross-products about the first chunk's mean (the covariance)."""

    def __init__(self, d: int, cov: bool):
        super().__init__(d)
        self.cov = cov
        self.shift = self.sx = self.sxx = None

    def add(self, X: np.ndarray) -> None:
        t = np.asarray(X, np.float64)
        if self.cov and len(t):
            if self.shift is None:
                self.shift, self.sx, self.sxx = t.mean(0), np.zeros(t.shape[1]), np.zeros((t.shape[1],) * 2)
            u = t - self.shift
            self.sx += u.sum(0)
            self.sxx += u.T @ u
        super().add(t)

    def covariance(self) -> np.ndarray:
        """Population covariance of the rows (float64 d x d)."""
        C = (self.sxx - np.outer(self.sx, self.sx) / self.n) / self.n
        return (C + C.T) / 2


def _pca(cov_z: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` leading principal axes (k, d) of a covariance, signed so each axis's largest entry is positive."""
    w, v = np.linalg.eigh(cov_z)
    comp = v[:, ::-1][:, :k].T
    sign = np.sign(comp[np.arange(k), np.argmax(np.abs(comp), axis=1)])
    sign[sign == 0] = 1.0
    return comp * sign[:, None]


def _check_rows(fs: Any, sid: str, a: int, X: np.ndarray, d: int | None) -> None:
    from stfeat.errors import InputError

    if d is not None and X.shape[1] != d:
        raise InputError(fs.samples[sid].source, f"has {X.shape[1]} features per spot, the other samples {d}.",
                         "extract every sample with the same encoder and scales.")
    if not np.isfinite(X).all():
        raise InputError(fs.samples[sid].source, f"features of rows {a}..{a + len(X)} hold NaN or infinite values "
                         "(KNNHead.fit refuses them too).", "re-extract this sample (stfeat extract --overwrite).")


def fit_knn_featureset(est: Any, fs: Any, ids: Sequence[str], genes: Sequence[str], transform: str, *,
                       chunk_rows: int | None = None) -> Any:
    """Fit the unfitted ``est`` (KNNHead) on every spot of samples ``ids`` of ``fs`` from row chunks of their
    flat input (no neighbour mean): the state ``est.fit(fs.flat(ids), targets)`` gives. Returns ``est``."""
    from stfeat.errors import InputError
    from stfeat.features import CHUNK_ROWS
    from stfeat.heads._cpu import blas_threads

    est._check_options()
    ids = list(ids)
    cr = int(chunk_rows or CHUNK_ROWS)
    Y = np.concatenate([np.asarray(fs.targets(s, list(genes), transform), np.float32).reshape(fs.samples[s].n_spots, -1)
                        for s in ids]) if ids else np.zeros((0, len(genes)), np.float32)
    n = len(Y)
    if n < 2:
        raise InputError(None, f"the knn head needs 2 or more training spots; samples {ids} have {n}.",
                         "train on more samples.")
    if not np.isfinite(Y).all():
        raise InputError(None, "the targets hold NaN or infinite values.", "check the counts of these samples.")

    def chunks():
        return fs.iter_flat(ids, chunk_rows=cr, reuse_buffer=True)

    pca = est.pca_components is not None
    mom, d = None, None
    with blas_threads(est.n_jobs):
        for sid, a, X in chunks():  # pass 1: standardisation (and covariance for PCA)
            _check_rows(fs, sid, a, X, d)
            if mom is None:
                d = X.shape[1]
                mom = _Moments(d, pca)
            mom.add(X)
        if mom.n != n:
            raise InputError(None, f"the features have {mom.n} rows, the targets {n}.", "re-extract these samples.")
        est.mean_, est.scale_ = mom.standardization()
        est.components_ = est.pca_mean_ = None
        if pca:
            k = min(int(est.pca_components), n, d)
            cov_z = mom.covariance() / np.outer(est.scale_, est.scale_)
            est.components_ = _pca(cov_z, k).astype(np.float32)
            est.pca_mean_ = np.zeros(d, np.float32)  # the mean of the standardised rows
        est.n_features_in_, est.n_outputs_, est._y_1d_ = int(d), int(Y.shape[1]), False
        V = np.empty((n, est.components_.shape[0] if pca else d), np.float32)
        at = 0
        for _, _, X in chunks():  # pass 2: the searched vectors
            V[at:at + len(X)] = est._embed(X)
            at += len(X)
    est.index_features_ = V
    est.Y_train_ = Y
    est._index = None
    est._get_index()  # flat or IVF as KNNHead.fit chooses, vectors added in row blocks
    logger.info("knn (chunks): %d spots of %d samples, %d features -> %d searched dims, %s index", n, len(ids), d,
                V.shape[1], est.index_kind())
    return est


def use_knn_chunks(est: Any, fs: Any, layout: Mapping[str, Any]) -> bool:
    """Whether a knn head trains from row chunks: the ``knn`` head on flat inputs (no neighbour mean) of lazy
    features."""
    from stfeat.heads.knn import KNNHead

    return type(est) is KNNHead and layout.get("kind") == "flat" and not layout.get("neighbor_mean") and fs.is_lazy


__all__ = ["fit_knn_featureset", "use_knn_chunks"]
