"""Small PyTorch MLP head (``mlp``): one hidden layer, dropout, AdamW, early stopping."""

from __future__ import annotations

import logging

import numpy as np

from stfeat.heads._base import BaseHead, inner_split, standardize_fit

logger = logging.getLogger(__name__)


def _build_mlp(d_in: int, hidden: int, d_out: int, dropout: float, input_dropout: float):
    import torch.nn as nn

    return nn.Sequential(nn.Dropout(input_dropout), nn.Linear(d_in, hidden), nn.GELU(),
                         nn.Dropout(dropout), nn.Linear(hidden, d_out))


class MLPHead(BaseHead):
    """Features -> Linear(hidden) -> GELU -> Dropout -> Linear(n_genes), all genes at once.

    Inputs and targets are standardised with training statistics (predictions are returned in the
    original units). Training: AdamW, mini-batches, early stopping on an inner validation split
    (by group when ``groups`` is given to ``fit``), the best epoch's weights kept. Runs on CUDA
    when available (``device="auto"``), else CPU; deterministic on CPU for a fixed
    ``random_state``.

    Parameters
    ----------
    hidden
        Hidden width (256-512 suits 1k-3k-dimensional features).
    dropout, input_dropout
        Dropout after the hidden layer and on the input features.
    lr, weight_decay, batch_size, max_epochs, patience
        Optimiser and early-stopping settings.
    corr_weight
        Weight of a (1 - Pearson r) term added to the MSE loss (0 = plain MSE).
    validation_fraction
        Share of spots (or groups) held out for early stopping.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    n_jobs
        Torch CPU threads (scikit-learn's convention: -1 = all cores); ``None`` = 1 for small
        problems, else ``$STFEAT_CPU_THREADS`` or the cores of the process's CPU affinity
        (:func:`stfeat.heads._cpu.resolve_n_jobs`). Never taken from the machine's load, so
        refits are bit-identical; rounding may differ between two explicit thread counts.
    random_state
        Seed of the split, the initialisation, dropout and batch order.

    Attributes
    ----------
    module_ : torch.nn.Module
        The trained network (on CPU after fit). best_epoch_ : int. history_ : list of float
        (validation loss per epoch).
    """

    name = "mlp"
    _fitted_attr = "module_"

    def __init__(self, hidden: int = 512, *, dropout: float = 0.3, input_dropout: float = 0.1,
                 lr: float = 1e-3, weight_decay: float = 0.05, batch_size: int = 256,
                 max_epochs: int = 200, patience: int = 10, corr_weight: float = 0.0,
                 validation_fraction: float = 0.15, device: str = "auto",
                 n_jobs: int | None = None, random_state: int | None = 0):
        self.hidden = hidden
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.corr_weight = corr_weight
        self.validation_fraction = validation_fraction
        self.device = device
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X, Y, groups=None) -> "MLPHead":
        """Train on features ``X`` (n, d) and targets ``Y`` (n, g)."""
        import torch

        from stfeat.heads._torch import (pearson_loss, cpu_threads, resolve_device, seeded,
                                         torch_seed,
                                         train_early_stopping)

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
        cw = float(self.corr_weight)

        def loss_fn(pred, target):
            loss = torch.nn.functional.mse_loss(pred, target)
            return loss + cw * pearson_loss(pred, target) if cw > 0 else loss

        work = int(self.batch_size) * X.shape[1] * int(self.hidden)
        with seeded(seed, device), cpu_threads(self.n_jobs, work, device):
            module = _build_mlp(X.shape[1], int(self.hidden), Y.shape[1], float(self.dropout),
                                float(self.input_dropout)).to(device)
            info = train_early_stopping(
                module, lambda m, x: m(x), (Xs[tr], Ys[tr]), (Xs[va], Ys[va]), loss_fn=loss_fn,
                lr=self.lr, weight_decay=self.weight_decay, batch_size=int(self.batch_size),
                max_epochs=int(self.max_epochs), patience=int(self.patience), seed=seed,
                device=device)
        self.module_ = module.cpu().eval()
        self.best_epoch_ = int(info["best_epoch"])
        self.history_ = info["history"]
        logger.info("mlp: best epoch %d, validation loss %.4f", self.best_epoch_,
                    info["best_val_loss"])
        return self

    def predict(self, X) -> np.ndarray:
        """Predict (n, g) from features (n, d)."""
        import torch

        X = self._check_x(X)
        Xs = torch.from_numpy(((X - self.x_mean_) / self.x_scale_).astype(np.float32))
        from stfeat.heads._torch import cpu_threads

        self.module_.eval()
        work = min(len(Xs), 8192) * X.shape[1] * int(self.hidden) / 3
        with torch.no_grad(), cpu_threads(self.n_jobs, work, torch.device("cpu")):
            P = torch.cat([self.module_(Xs[i:i + 8192]) for i in range(0, len(Xs), 8192)])
        return self._format_out(P.double().numpy() * self.y_scale_ + self.y_mean_)

    def _get_state(self):
        from stfeat.heads._torch import state_to_arrays

        meta = self._base_meta() | {"best_epoch_": self.best_epoch_, "history_": self.history_}
        arrays = {"x_mean_": self.x_mean_, "x_scale_": self.x_scale_, "y_mean_": self.y_mean_,
                  "y_scale_": self.y_scale_} | state_to_arrays(self.module_)
        return meta, arrays, {}

    def _set_state(self, meta, arrays, texts):
        from stfeat.heads._torch import arrays_to_state

        self._set_base_meta(meta)
        self.best_epoch_ = int(meta["best_epoch_"])
        self.history_ = list(meta["history_"])
        for key in ("x_mean_", "x_scale_", "y_mean_", "y_scale_"):
            setattr(self, key, arrays[key])
        module = _build_mlp(self.n_features_in_, int(self.hidden), self.n_outputs_,
                            float(self.dropout), float(self.input_dropout))
        module.load_state_dict(arrays_to_state(arrays))
        self.module_ = module.eval()
