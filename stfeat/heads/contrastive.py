"""Contrastive retrieval head (``contrastive``): an image-expression joint space, then top-k retrieval.

After mclSTExp (Min et al. 2024) and BLEEP (Xie et al. 2023): two projection heads, one for the
cached image features of a spot and one for its expression, are trained with a symmetric InfoNCE
loss so that a spot's image embedding lies next to its own expression embedding in a shared
``dim``-dimensional space. A new spot is predicted by retrieving the ``n_neighbors`` TRAINING spots
whose embeddings are most similar to its image embedding (exact FAISS inner-product search) and
averaging their measured expression with softmax-of-similarity weights. Only training spots are
ever in the index, so a prediction is always a convex combination of training expression.
"""

from __future__ import annotations

import logging

import numpy as np

from stfeat.heads._base import BaseHead, inner_split, standardize_fit

logger = logging.getLogger(__name__)


class ContrastiveHead(BaseHead):
    """Image/expression projection heads trained with symmetric InfoNCE; prediction by retrieval.

    Features and genes are standardised with training statistics. Two MLPs (``hidden`` units, GELU)
    map image features and expression into a ``dim``-dimensional space, each output L2-normalised;
    the loss is the symmetric InfoNCE of the batch's similarity matrix divided by ``temperature``,
    plus ``mse_weight`` x the MSE of an optional linear gene regressor on the image projection
    (before normalisation).
    AdamW, early stopping on an inner validation split (whole groups when ``groups`` are given).

    Prediction: the query's image embedding is searched (exact inner product, FAISS
    ``IndexFlatIP``) against the TRAINING spots' embeddings (``index_on="expression"``: their
    expression embeddings, as BLEEP/mclSTExp; ``"image"``: their image embeddings); the top
    ``n_neighbors`` (capped at the number of training spots) are averaged with weights
    ``softmax(similarity / retrieval_temperature)``. The FAISS index is saved with the head as
    ``faiss.serialize_index`` bytes (a uint8 array, no pickle).

    Parameters
    ----------
    dim
        Joint-space dimension (mclSTExp: 256).
    hidden
        Hidden width of both projection MLPs.
    temperature
        InfoNCE temperature.
    n_neighbors
        Training spots retrieved per query (mclSTExp: about 200).
    retrieval_temperature
        Softmax temperature of the retrieval weights (``None`` = ``temperature``).
    index_on
        ``"expression"`` or ``"image"``: which embedding of the training spots is searched.
    mse_weight
        Weight of the MSE branch (0 = no branch).
    prediction
        ``"retrieval"`` (default), ``"regression"`` (the MSE branch's output) or ``"average"``
        (mean of both); the last two need ``mse_weight > 0``.
    dropout, input_dropout, lr, weight_decay, batch_size, max_epochs, patience,
    validation_fraction, device, n_jobs, random_state
        As in :class:`~stfeat.heads.MLPHead`.

    Attributes
    ----------
    module_ : torch.nn.Module; Y_train_ : ndarray (n_train, g) training expression (original
    units); index_bytes_ : ndarray uint8 (the serialised FAISS index); best_epoch_ : int;
    history_ : list.
    """

    name = "contrastive"
    _fitted_attr = "module_"

    def __init__(self, dim: int = 256, *, hidden: int = 512, temperature: float = 0.07,
                 n_neighbors: int = 200, retrieval_temperature: float | None = None,
                 index_on: str = "expression", mse_weight: float = 0.0,
                 prediction: str = "retrieval", dropout: float = 0.1, input_dropout: float = 0.1,
                 lr: float = 1e-3, weight_decay: float = 1e-3, batch_size: int = 256,
                 max_epochs: int = 100, patience: int = 10, validation_fraction: float = 0.15,
                 device: str = "auto", n_jobs: int | None = None,
                 random_state: int | None = 0):
        self.dim = dim
        self.hidden = hidden
        self.temperature = temperature
        self.n_neighbors = n_neighbors
        self.retrieval_temperature = retrieval_temperature
        self.index_on = index_on
        self.mse_weight = mse_weight
        self.prediction = prediction
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.device = device
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _new_module(self):
        from stfeat.heads._paper_nets import ContrastiveNet

        return ContrastiveNet(self.n_features_in_, self.n_outputs_, int(self.hidden), int(self.dim),
                      float(self.dropout), float(self.input_dropout), float(self.mse_weight) > 0)

    def _check_params(self):
        if self.index_on not in ("expression", "image"):
            raise ValueError(f"index_on must be 'expression' or 'image'; got {self.index_on!r}.")
        if self.prediction not in ("retrieval", "regression", "average"):
            raise ValueError(f"prediction must be 'retrieval', 'regression' or 'average'; got "
                             f"{self.prediction!r}.")
        if self.prediction != "retrieval" and not float(self.mse_weight) > 0:
            raise ValueError(f"prediction={self.prediction!r} needs the MSE branch. Fix: set "
                             "mse_weight > 0 (e.g. 1.0) or use prediction='retrieval'.")
        if int(self.n_neighbors) < 1 or not float(self.temperature) > 0:
            raise ValueError("n_neighbors must be >= 1 and temperature > 0; got "
                             f"{self.n_neighbors} and {self.temperature}.")

    def fit(self, X, Y, groups=None) -> "ContrastiveHead":
        """Train the joint space on features ``X`` (n, d) and expression ``Y`` (n, g)."""
        import faiss
        import torch

        from stfeat.heads._paper_nets import info_nce
        from stfeat.heads._torch import (cpu_threads, resolve_device, seeded, torch_seed,
                                         train_early_stopping)

        self._check_params()
        X, Y = self._check_xy(X, Y)
        device = resolve_device(self.device)
        seed = torch_seed(self.random_state)
        self.x_mean_, self.x_scale_ = standardize_fit(X)
        self.y_mean_ = Y.mean(0)
        self.y_scale_ = np.where(Y.std(0) > 1e-12, Y.std(0), 1.0)
        Xs = torch.from_numpy(((X - self.x_mean_) / self.x_scale_).astype(np.float32))
        Ys = torch.from_numpy(((Y - self.y_mean_) / self.y_scale_).astype(np.float32))
        tr, va = inner_split(len(X), self.validation_fraction, seed, groups)
        tr, va = torch.from_numpy(tr), torch.from_numpy(va)
        tau, mw = float(self.temperature), float(self.mse_weight)

        def loss_fn(out, target):
            zi, ze, yhat = out
            loss = info_nce(zi, ze, tau)
            if mw > 0:
                loss = loss + mw * torch.nn.functional.mse_loss(yhat, target)
            return loss

        work = int(self.batch_size) * (X.shape[1] + Y.shape[1]) * int(self.hidden)
        with seeded(seed, device), cpu_threads(self.n_jobs, work, device):
            module = self._new_module().to(device)
            info = train_early_stopping(
                module, lambda m, x, y: m(x, y), (Xs[tr], Ys[tr], Ys[tr]),
                (Xs[va], Ys[va], Ys[va]), loss_fn=loss_fn, lr=self.lr,
                weight_decay=self.weight_decay, batch_size=int(self.batch_size),
                max_epochs=int(self.max_epochs), patience=int(self.patience), seed=seed,
                device=device)
        self.module_ = module.cpu().eval()
        self.best_epoch_ = int(info["best_epoch"])
        self.history_ = info["history"]
        with torch.no_grad():
            Z = (self.module_.embed_expr(Ys) if self.index_on == "expression"
                 else self.module_.embed_image(Xs)).numpy()
        index = faiss.IndexFlatIP(Z.shape[1])
        index.add(np.ascontiguousarray(Z, dtype=np.float32))
        self.index_bytes_ = np.asarray(faiss.serialize_index(index), dtype=np.uint8)
        self._index = index
        self.Y_train_ = Y.astype(np.float32)
        logger.info("contrastive: best epoch %d, validation loss %.4f (untrained %.4f), %d "
                    "training spots indexed", self.best_epoch_, info["best_val_loss"],
                    info["history"][0], len(Z))
        return self

    def _get_index(self):
        import faiss

        if getattr(self, "_index", None) is None:
            self._index = faiss.deserialize_index(np.ascontiguousarray(self.index_bytes_))
        return self._index

    def _embed_image(self, X):
        import torch

        from stfeat.heads._torch import cpu_threads

        Xs = torch.from_numpy(((X - self.x_mean_) / self.x_scale_).astype(np.float32))
        work = min(len(Xs), 8192) * X.shape[1] * int(self.hidden) / 3
        with torch.no_grad(), cpu_threads(self.n_jobs, work, torch.device("cpu")):
            return torch.cat([self.module_.embed_image(Xs[i:i + 8192])
                              for i in range(0, len(Xs), 8192)]).numpy()

    def kneighbors(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarities and row indices (into the training data) of the retrieved spots."""
        X = self._check_x(X)
        k = min(int(self.n_neighbors), len(self.Y_train_))
        sim, idx = self._get_index().search(np.ascontiguousarray(self._embed_image(X)), k)
        return sim, idx

    def predict(self, X) -> np.ndarray:
        """Similarity-weighted mean expression of the retrieved training spots, (n, g)."""
        import torch

        X = self._check_x(X)
        parts = []
        if self.prediction in ("retrieval", "average"):
            sim, idx = self.kneighbors(X)
            t = float(self.retrieval_temperature or self.temperature)
            logits = sim.astype(np.float64) / t
            logits -= logits.max(axis=1, keepdims=True)
            w = np.exp(logits)
            w /= w.sum(axis=1, keepdims=True)
            parts.append(np.einsum("nk,nkg->ng", w, self.Y_train_[idx].astype(np.float64)))
        if self.prediction in ("regression", "average"):
            Xs = torch.from_numpy(((X - self.x_mean_) / self.x_scale_).astype(np.float32))
            with torch.no_grad():
                R = self.module_.regress(Xs).double().numpy()
            parts.append(R * self.y_scale_ + self.y_mean_)
        return self._format_out(np.mean(parts, axis=0))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_index"] = None  # rebuilt from index_bytes_ on first use
        return state

    # ------------------------------------------------------------------ persistence
    def _get_state(self):
        from stfeat.heads._torch import state_to_arrays

        meta = self._base_meta() | {"best_epoch_": self.best_epoch_, "history_": self.history_}
        arrays = {"x_mean_": self.x_mean_, "x_scale_": self.x_scale_, "y_mean_": self.y_mean_,
                  "y_scale_": self.y_scale_, "Y_train_": self.Y_train_,
                  "index_bytes_": self.index_bytes_} | state_to_arrays(self.module_)
        return meta, arrays, {}

    def _set_state(self, meta, arrays, texts):
        from stfeat.heads._torch import arrays_to_state

        self._set_base_meta(meta)
        self.best_epoch_ = int(meta["best_epoch_"])
        self.history_ = list(meta["history_"])
        for key in ("x_mean_", "x_scale_", "y_mean_", "y_scale_", "Y_train_", "index_bytes_"):
            setattr(self, key, arrays[key])
        module = self._new_module()
        module.load_state_dict(arrays_to_state(arrays))
        self.module_ = module.eval()
        self._index = None
