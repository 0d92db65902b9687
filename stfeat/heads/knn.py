"""Exemplar retrieval head (``knn``): predict a spot as the weighted mean of its nearest training spots."""

from __future__ import annotations

import logging

import numpy as np

from stfeat.heads._base import BaseHead, standardize_fit

logger = logging.getLogger(__name__)
_ADD_ROWS = 1 << 18  # vectors per index.add


class KNNHead(BaseHead):
    """Retrieve the ``k`` most similar training spots in feature space and average their expression.

    In the spirit of BLEEP (Xie et al. 2023) and mclSTExp, which predict a query spot from the
    expression of the reference spots whose image embeddings are closest, but on frozen features
    with no contrastive training. Features are standardised with the training statistics; with
    ``metric="cosine"`` they are then L2-normalised and searched by inner product
    (``faiss.IndexFlatIP``), with ``metric="l2"`` by Euclidean distance (``faiss.IndexFlatL2``).
    Exact search, so results are deterministic, up to ``ivf_threshold`` training spots (1,000,000 by
    default; Visium HD gives ~600k bins per slide); beyond it (``index="auto"``) the search is
    approximate: an inverted-file index (``faiss.IndexIVFFlat``, ``nlist`` k-means cells trained with a
    fixed seed on at most 256 spots per cell, ``nprobe`` cells searched per query), moved to the GPU
    when FAISS sees one. A loaded head rebuilds its index from the stored vectors. On lazy features
    :func:`stfeat.heads._knn_chunks.fit_knn_featureset` fits it from row chunks (same fitted state).

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
    index
        ``"auto"`` (exact below ``ivf_threshold`` training spots, IVF from it), ``"flat"`` or ``"ivf"``.
    ivf_threshold
        Training spots from which ``index="auto"`` uses IVF.
    nlist, nprobe
        IVF cells (default ``4 * sqrt(n_train)``, at most ``n_train / 39``) and cells searched per query.
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
                 temperature: float = 0.05, pca_components: int | None = None, index: str = "auto",
                 ivf_threshold: int = 1_000_000, nlist: int | None = None, nprobe: int = 32,
                 n_jobs: int | None = None):
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.weighting = weighting
        self.temperature = temperature
        self.pca_components = pca_components
        self.index = index
        self.ivf_threshold = ivf_threshold
        self.nlist = nlist
        self.nprobe = nprobe
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
        self._check_options()
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

    def _check_options(self) -> None:
        if self.metric not in ("cosine", "l2"):
            raise ValueError(f"metric must be 'cosine' or 'l2'; got {self.metric!r}.")
        if self.weighting not in ("softmax", "distance", "uniform"):
            raise ValueError(f"weighting must be 'softmax', 'distance' or 'uniform'; got "
                             f"{self.weighting!r}.")
        if int(self.n_neighbors) < 1:
            raise ValueError(f"n_neighbors must be >= 1; got {self.n_neighbors}.")
        if self.index not in ("auto", "flat", "ivf"):
            raise ValueError(f"index must be 'auto', 'flat' or 'ivf'; got {self.index!r}.")

    def index_kind(self, n_train: int | None = None) -> str:
        """``"flat"`` (exact) or ``"ivf"`` for ``n_train`` training spots (default: the fitted ones)."""
        n = len(self.index_features_) if n_train is None else int(n_train)
        if self.index == "auto":
            return "ivf" if n >= int(self.ivf_threshold) else "flat"
        return self.index

    def ivf_plan(self, n: int) -> tuple[int, np.ndarray | None]:
        """IVF cells and the training rows (sorted indices, None = all ``n``) for ``n`` training spots: ``nlist``
        (default ``4 * sqrt(n)``, at most ``n / 39``) and ``min(n, 256 * nlist)`` rows drawn with seed 0."""
        nlist = int(self.nlist) if self.nlist else int(np.clip(4 * np.sqrt(n), 1, max(1, n // 39)))
        m = min(n, 256 * nlist)
        return nlist, None if m == n else np.sort(np.random.default_rng(0).choice(n, m, replace=False))

    def _new_index(self, n: int, d: int, vectors):
        """The empty index for ``n`` vectors of dimension ``d`` (IVF: trained on ``vectors(rows)``, the
        searched vectors of the rows :meth:`ivf_plan` draws; ``rows`` None = all), on the GPU for IVF when FAISS
        sees one. Shared by :meth:`fit` and the chunked fit (:mod:`stfeat.heads._knn_chunks`)."""
        import faiss

        kind = self.index_kind(n)
        flat = faiss.IndexFlatIP(d) if self.metric == "cosine" else faiss.IndexFlatL2(d)
        self._gpu_res = None
        if kind == "flat":
            return flat
        nlist, rows = self.ivf_plan(n)
        metric = faiss.METRIC_INNER_PRODUCT if self.metric == "cosine" else faiss.METRIC_L2
        index = faiss.IndexIVFFlat(flat, d, nlist, metric)
        index.cp.seed = 0
        index.train(np.ascontiguousarray(vectors(rows), dtype=np.float32))
        index.nprobe = max(1, min(int(self.nprobe), nlist))
        self._quantizer = flat  # the IVF index points into it
        if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            self._gpu_res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._gpu_res, 0, index)
        return index

    def _get_index(self):
        if getattr(self, "_index", None) is None:
            V = self.index_features_
            n, d = V.shape
            index = self._new_index(n, d, lambda rows: V if rows is None else V[rows])
            for a in range(0, n, _ADD_ROWS):  # row blocks: bounded transfers to a GPU index
                index.add(np.ascontiguousarray(V[a:a + _ADD_ROWS]))
            self._index = index
            logger.info("knn: %s index over %d spots%s", self.index_kind(), n,
                        " on the GPU" if getattr(self, "_gpu_res", None) is not None else "")
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
        state.pop("_gpu_res", None)
        state.pop("_quantizer", None)
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
