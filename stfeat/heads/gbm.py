"""Gradient-boosted trees head (``lgbm``): one LightGBM booster per gene with early stopping."""

from __future__ import annotations

import logging
import queue

import numpy as np

from stfeat.heads._base import BaseHead, inner_split

logger = logging.getLogger(__name__)

#: features per tree when ``colsample_bytree`` is None
_FEATURES_PER_TREE = 150
#: memory allowed for the extra copies of the binned data that concurrent boosters need
_MAX_COPY_BYTES = 2 * 2**30


def _map_genes(fn, n_genes: int, workers: int) -> list:
    """``[fn(j) for j in range(n_genes)]``, on ``workers`` threads when more than one."""
    if workers == 1:
        return [fn(j) for j in range(n_genes)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, range(n_genes)))


class LGBMHead(BaseHead):
    """One LightGBM regressor per gene, each stopped early on an inner validation split.

    The features are binned once (one ``lgb.Dataset`` for train and one for validation) and only
    the labels change from gene to gene, so binning is paid once, not per gene. Genes are boosted
    concurrently, one single-threaded booster per core: on a few thousand spots LightGBM's own
    threads gain little, and on a busy machine they wait on each other at every histogram. Each
    booster is seeded alike, so the result does not depend on ``n_jobs``. Each booster keeps its
    best iteration (``best_iterations_``).

    The defaults boost the raw embedding with ~150 random features per tree, which bounds the
    cost of a round whatever the embedding's width (histograms over 150 features, not thousands),
    and use smaller trees with larger leaves. Against the earlier defaults (31 leaves of >= 20
    spots, 30% of the features per tree, row-wise histograms, all threads on one booster):
    10,000 spots x 3,072 features on 2 busy cores (``benchmarks/bench_heads.py``) 250 genes in
    7 min instead of ~100 min, held-out r 0.812 vs 0.806 (5 synthetic genes); HER2ST DenseNet-121
    (leave-one-section-out, 50 genes) mean r 0.465 vs 0.457, 55 s vs 380 s. A PCA of the
    embedding first (``pca_components``) is no faster at 150 features per tree and costs
    accuracy: trees split on single embedding channels, and rotating them into principal
    components lowered the HER2ST r to 0.38-0.40.

    Parameters
    ----------
    n_estimators
        Maximum boosting rounds per gene.
    learning_rate, num_leaves, min_child_samples, subsample, reg_lambda, max_bin
        LightGBM parameters (``min_data_in_leaf``, ``bagging_fraction`` and ``lambda_l2`` in
        LightGBM's own names).
    colsample_bytree
        Share of the features each tree may split on (LightGBM's ``feature_fraction``). ``None``
        (default): 150 features per tree, i.e. ``min(1, 150 / n_features)``, so that the cost of a
        round does not grow with the embedding's width.
    early_stopping_rounds
        Stop when the validation MSE has not improved for this many rounds.
    validation_fraction
        Share of spots (or of groups, when ``groups`` is given to ``fit``) held out for early
        stopping. The final boosters are trained on the remaining spots only.
    pca_components
        Optional PCA of the (standardised) features to this many dimensions before boosting,
        fitted on the training spots (``None``, the default: boost the features as they are).
    n_jobs
        Threads in all (scikit-learn's convention: -1 = every core this process may use);
        ``None`` = ``$STFEAT_CPU_THREADS`` or those cores (:func:`stfeat.heads._cpu.resolve_n_jobs`).
        With at least as many genes as threads, each booster runs on one thread.
    random_state
        Seed of the split, PCA and LightGBM's bagging/feature sampling (deterministic results).

    Attributes
    ----------
    boosters_ : list of lightgbm.Booster
        One per gene.
    best_iterations_ : ndarray of shape (n_outputs,)
        The round each booster predicts with (best validation MSE).
    feature_fraction_ : float
        The share of features per tree that was used.
    """

    name = "lgbm"
    _fitted_attr = "boosters_"

    def __init__(self, n_estimators: int = 500, *, learning_rate: float = 0.05, num_leaves: int = 15,
                 min_child_samples: int = 40, colsample_bytree: float | None = None,
                 subsample: float = 0.8, reg_lambda: float = 1.0, max_bin: int = 63,
                 early_stopping_rounds: int = 30, validation_fraction: float = 0.15,
                 pca_components: int | None = None, n_jobs: int | None = None,
                 random_state: int | None = 0):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.colsample_bytree = colsample_bytree
        self.subsample = subsample
        self.reg_lambda = reg_lambda
        self.max_bin = max_bin
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.pca_components = pca_components
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _threads(self) -> int:
        from stfeat.heads._cpu import resolve_n_jobs

        return resolve_n_jobs(self.n_jobs)

    def _workers(self, n_genes: int, binned_bytes: int) -> tuple[int, int]:
        """(boosters trained at once, threads per booster) for ``n_genes`` genes.

        Each extra concurrent booster needs its own copy of the binned training data
        (``binned_bytes``, one byte per value); the copies are kept under ``_MAX_COPY_BYTES``.
        """
        threads = self._threads()
        by_memory = 1 + _MAX_COPY_BYTES // max(1, binned_bytes)
        workers = max(1, min(threads, n_genes, by_memory))
        return workers, max(1, threads // workers)

    def _feature_fraction(self, n_features: int) -> float:
        if self.colsample_bytree is not None:
            return float(self.colsample_bytree)
        return min(1.0, _FEATURES_PER_TREE / max(1, n_features))

    def _params(self, threads: int, n_features: int) -> dict:
        seed = 0 if self.random_state is None else int(self.random_state)
        return {"objective": "regression", "learning_rate": self.learning_rate,
                "num_leaves": self.num_leaves, "min_data_in_leaf": self.min_child_samples,
                "feature_fraction": self._feature_fraction(n_features),
                "bagging_fraction": self.subsample,
                "bagging_freq": 1 if self.subsample < 1 else 0, "lambda_l2": self.reg_lambda,
                "max_bin": self.max_bin, "num_threads": threads, "seed": seed,
                "deterministic": True, "force_col_wise": True, "verbosity": -1}

    def _transform(self, X: np.ndarray) -> np.ndarray:
        if self.components_ is None:
            return X
        return ((X - self.mean_) / self.scale_).astype(np.float32) @ self.components_.T \
            - self.pca_offset_

    def fit(self, X, Y, groups=None) -> "LGBMHead":
        """Fit one booster per column of ``Y`` (n, g) on features ``X`` (n, d)."""
        import lightgbm as lgb

        X, Y = self._check_xy(X, Y)
        self.components_ = None
        if self.pca_components is not None:
            from sklearn.decomposition import PCA

            from stfeat.heads._base import standardize_fit

            self.mean_, self.scale_ = standardize_fit(X)
            Z = ((X - self.mean_) / self.scale_).astype(np.float32)
            pca = PCA(n_components=min(int(self.pca_components), *X.shape),
                      random_state=self.random_state).fit(Z)
            self.components_ = pca.components_.astype(np.float32)
            self.pca_offset_ = (pca.mean_ @ pca.components_.T).astype(np.float32)
        Xf = self._transform(X)
        tr, va = inner_split(len(X), self.validation_fraction, self.random_state, groups)
        workers, per_booster = self._workers(Y.shape[1], len(X) * Xf.shape[1])
        params = self._params(per_booster, Xf.shape[1])
        self.feature_fraction_ = params["feature_fraction"]
        dtrain = lgb.Dataset(Xf[tr], label=Y[tr, 0], params=params, free_raw_data=False)
        dvalid = lgb.Dataset(Xf[va], label=Y[va, 0], reference=dtrain, params=params,
                             free_raw_data=False)
        dtrain.construct()
        dvalid.construct()
        # one (train, valid) pair per worker; subset() copies the binned data without re-binning
        pairs = [(dtrain, dvalid)] + [
            (dtrain.subset(np.arange(len(tr))).construct(),
             dvalid.subset(np.arange(len(va))).construct()) for _ in range(workers - 1)]
        free = queue.SimpleQueue()
        for pair in pairs:
            free.put(pair)

        def one_gene(j: int):
            dt, dv = free.get()
            try:
                dt.set_label(Y[tr, j])
                dv.set_label(Y[va, j])
                return lgb.train(params, dt, num_boost_round=int(self.n_estimators),
                                 valid_sets=[dv], valid_names=["valid"],
                                 callbacks=[lgb.early_stopping(int(self.early_stopping_rounds),
                                                               verbose=False)])
            finally:
                free.put((dt, dv))

        # genes are independent and each booster is seeded alike, so running them concurrently
        # (ctypes releases the GIL) gives the same boosters as running them one by one
        self.boosters_ = _map_genes(one_gene, Y.shape[1], workers)
        self.best_iterations_ = np.asarray(
            [b.best_iteration or b.current_iteration() for b in self.boosters_], dtype=np.int64)
        logger.info("lgbm: %d genes on %d features (%.3g per tree), %d worker(s) x %d thread(s), "
                    "median best iteration %d", Y.shape[1], Xf.shape[1], self.feature_fraction_,
                    workers, per_booster,
                    int(np.median(self.best_iterations_)))
        return self

    def predict(self, X) -> np.ndarray:
        """Predict (n, g) with each gene's booster at its best iteration."""
        X = self._check_x(X)
        Xf = np.ascontiguousarray(self._transform(X))
        workers, per_booster = self._workers(len(self.boosters_), 0)

        def one_gene(j: int) -> np.ndarray:
            return self.boosters_[j].predict(Xf, num_iteration=int(self.best_iterations_[j]),
                                             num_threads=per_booster)

        # like fit: genes side by side on one thread each (a prediction does not depend on it)
        return self._format_out(np.column_stack(_map_genes(one_gene, len(self.boosters_),
                                                           workers)))

    def _get_state(self):
        meta = self._base_meta() | {"feature_fraction_": float(self.feature_fraction_)}
        arrays = {"best_iterations_": self.best_iterations_}
        if self.components_ is not None:
            arrays |= {"mean_": self.mean_, "scale_": self.scale_, "components_": self.components_,
                       "pca_offset_": self.pca_offset_}
        texts = {f"booster_{j:05d}": b.model_to_string(num_iteration=int(it))
                 for j, (b, it) in enumerate(zip(self.boosters_, self.best_iterations_))}
        return meta, arrays, texts

    def _set_state(self, meta, arrays, texts):
        import lightgbm as lgb

        self._set_base_meta(meta)
        self.feature_fraction_ = meta.get("feature_fraction_")
        self.best_iterations_ = arrays["best_iterations_"]
        self.components_ = arrays.get("components_")
        if self.components_ is not None:
            self.mean_, self.scale_ = arrays["mean_"], arrays["scale_"]
            self.pca_offset_ = arrays["pca_offset_"]
        keys = sorted(k for k in texts if k.startswith("booster_"))
        if len(keys) != self.n_outputs_:
            from stfeat.errors import InputError

            raise InputError(None, f"saved lgbm head has {len(keys)} booster files for "
                             f"{self.n_outputs_} genes.", "save the head again.")
        self.boosters_ = [lgb.Booster(model_str=texts[k]) for k in keys]
