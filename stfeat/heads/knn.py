"""Exemplar retrieval head (``knn``): predict a spot as the weighted mean of its nearest training spots."""

from __future__ import annotations

import logging

import numpy as np

from stfeat.heads._base import BaseHead, standardize_fit

logger = logging.getLogger(__name__)


class KNNHead(BaseHead):
    """Retrieve the ``k`` most similar training spots in feature space and average their expression.

    In the spirit of BLEEP (Xie et al. 2023) and mclSTExp, which predict a query spot from the
    expression of the reference spots whose image embeddings are closest, but on frozen features
    with no contrastive training. Features are standardised with the training statistics; with
    ``metric="cosine"`` they are then L2-normalised and searched by inner product
    (``faiss.IndexFlatIP``), with ``metric="l2"`` by Euclidean distance (``faiss.IndexFlatL2``).
    Exact search, so results are deterministic.

    Parameters
    ----------
    n_neighbors
        Number of training spots averaged per query.
    metric
        ``"cosine"`` (default) or ``"l2"``.
    weighting
        ``"softmax"``: weights ``exp(sim / temperature)`` (for l2, sim = -squared distance divided
        by its median over the query's neighbours); ``"distance"``: inverse distance; ``"uniform"``.
    temperature
        Softmax temperature (cosine similarities lie in [-1, 1]; 0.05 gives a clear preference for
        the closest spots without ignoring the rest).
    pca_components
        Optional PCA to this many dimensions after standardisation (faster search, less noise);
        ``None`` keeps all features.
    n_jobs
        FAISS (OpenMP) and BLAS threads (scikit-learn's convention); ``None`` =
        ``$STFEAT_CPU_THREADS`` or the cores of the process's CPU affinity
        (:func:`stfeat.heads._cpu.resolve_n_jobs`).

    Attributes
    ----------
    mean_, scale_ : ndarray (n_features,)
        Standardisation. index_features_ : ndarray (n_train, d') searched vectors.
    Y_train_ : ndarray (n_train, n_outputs)
        Expression of the training spots.
    """

    name = "knn"
    _fitted_attr = "Y_train_"

    def __init__(self, n_neighbors: int = 32, *, metric: str = "cosine", weighting: str = "softmax",
                 temperature: float = 0.05, pca_components: int | None = None,
                 n_jobs: int | None = None):
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.weighting = weighting
        self.temperature = temperature
        self.pca_components = pca_components
        self.n_jobs = n_jobs

    def _embed(self, X: np.ndarray) -> np.ndarray:
        Z = ((X - self.mean_) / self.scale_).astype(np.float32)
        if self.components_ is not None:
            Z = (Z - self.pca_mean_) @ self.components_.T
        if self.metric == "cosine":
            Z /= np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(Z, dtype=np.float32)

    def fit(self, X, Y) -> "KNNHead":
        """Store standardised training features (n, d) and their expression (n, g)."""
        if self.metric not in ("cosine", "l2"):
            raise ValueError(f"metric must be 'cosine' or 'l2'; got {self.metric!r}.")
        if self.weighting not in ("softmax", "distance", "uniform"):
            raise ValueError(f"weighting must be 'softmax', 'distance' or 'uniform'; got "
                             f"{self.weighting!r}.")
        if int(self.n_neighbors) < 1:
            raise ValueError(f"n_neighbors must be >= 1; got {self.n_neighbors}.")
        X, Y = self._check_xy(X, Y)
        self.mean_, self.scale_ = standardize_fit(X)
        self.components_ = self.pca_mean_ = None
        if self.pca_components is not None:
            from sklearn.decomposition import PCA

            from stfeat.heads._cpu import blas_threads

            k = min(int(self.pca_components), *X.shape)
            Z = ((X - self.mean_) / self.scale_).astype(np.float32)
            with blas_threads(self.n_jobs):
                pca = PCA(n_components=k, random_state=0).fit(Z)
            self.components_ = pca.components_.astype(np.float32)
            self.pca_mean_ = pca.mean_.astype(np.float32)
        self.index_features_ = self._embed(X)
        self.Y_train_ = Y.astype(np.float32)
        self._index = None
        self._get_index()  # built now, so predict never changes the estimator's state
        return self

    def _get_index(self):
        import faiss

        if getattr(self, "_index", None) is None:
            d = self.index_features_.shape[1]
            index = faiss.IndexFlatIP(d) if self.metric == "cosine" else faiss.IndexFlatL2(d)
            index.add(self.index_features_)
            self._index = index
        return self._index

    def kneighbors(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Similarities (cosine) or squared distances (l2), and indices of the nearest training spots."""
        X = self._check_x(X)
        import faiss

        from stfeat.heads._cpu import blas_threads, resolve_n_jobs

        k = min(int(self.n_neighbors), len(self.Y_train_))
        old = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(resolve_n_jobs(self.n_jobs))
        try:
            with blas_threads(self.n_jobs):
                D, idx = self._get_index().search(self._embed(X), k)
        finally:
            faiss.omp_set_num_threads(old)
        return D, idx

    def predict(self, X) -> np.ndarray:
        """Similarity-weighted mean expression of the nearest training spots, (n, g)."""
        D, idx = self.kneighbors(X)
        D = D.astype(np.float64)
        if self.weighting == "uniform":
            w = np.ones_like(D)
        elif self.weighting == "distance":
            dist = np.sqrt(np.maximum(1.0 - D, 0.0) * 2.0) if self.metric == "cosine" \
                else np.sqrt(np.maximum(D, 0.0))
            w = 1.0 / np.maximum(dist, 1e-6)
        else:
            if self.metric == "cosine":
                logits = D / float(self.temperature)
            else:
                med = np.maximum(np.median(D, axis=1, keepdims=True), 1e-12)
                logits = -D / med / float(self.temperature)
            logits -= logits.max(axis=1, keepdims=True)
            w = np.exp(logits)
        w /= w.sum(axis=1, keepdims=True)
        P = np.einsum("nk,nkg->ng", w, self.Y_train_[idx].astype(np.float64))
        return self._format_out(P)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_index"] = None  # FAISS indexes do not pickle; rebuilt on first predict
        return state

    def _get_state(self):
        arrays = {"mean_": self.mean_, "scale_": self.scale_,
                  "index_features_": self.index_features_, "Y_train_": self.Y_train_}
        if self.components_ is not None:
            arrays |= {"components_": self.components_, "pca_mean_": self.pca_mean_}
        return self._base_meta(), arrays, {}

    def _set_state(self, meta, arrays, texts):
        self._set_base_meta(meta)
        for key in ("mean_", "scale_", "index_features_", "Y_train_"):
            setattr(self, key, arrays[key])
        self.components_ = arrays.get("components_")
        self.pca_mean_ = arrays.get("pca_mean_")
        self._index = None
