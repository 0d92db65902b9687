"""Many-to-one attention head (``attention``): a spot attends to its other scales and its neighbours.

In the spirit of M2OST (Wang et al. 2024, many-to-one regression from multi-scale patches) and NH2ST
(neighbour-aware hierarchical prediction): every spot is a small set of tokens, its own features
at each field of view plus its spatial neighbours' features, and a query token for the spot
gathers what it needs from them by attention.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np

from stfeat.head_inputs import build_tokens  # noqa: F401 - re-exported: tokens from plain arrays
from stfeat.heads._base import BaseHead, inner_split

logger = logging.getLogger(__name__)


def _heldout_ridge(own, Y, alpha: float, splits) -> np.ndarray:
    """Ridge predictions (n, g) of each split's held-out spots from a ridge on its fit spots.

    Same model as ``RidgeCVHead([alpha])`` on each fit set (centred per fit set, penalty on
    standardised features), except that the features are standardised once with the statistics
    of all spots rather than per fit set. One Gram matrix of all spots serves every split: a
    split's fit Gram is the total minus its held-out spots' Gram, re-centred, so each split costs
    a Gram of its held-out spots and one Cholesky solve instead of a full ridge fit.
    """
    from scipy.linalg import cho_factor, cho_solve
    from scipy.linalg.blas import ssyrk

    from stfeat.heads._cpu import blas_threads

    # one BLAS thread: on a busy 2-core machine the Cholesky factorisations run several times
    # slower with two threads waiting on each other
    with blas_threads(1):
        return _heldout_ridge_impl(own, Y, alpha, splits, ssyrk, cho_factor, cho_solve)


def _heldout_ridge_impl(own, Y, alpha, splits, ssyrk, cho_factor, cho_solve):
    from scipy.linalg.blas import dsyr

    n, D = own.shape
    mean = own.mean(0, dtype=np.float64)
    Xc = own - mean.astype(np.float32)
    scale = np.linalg.norm(Xc, axis=0).astype(np.float64) / np.sqrt(n)
    scale[scale < 10 * np.finfo(np.float64).eps] = 1.0
    Xc /= scale.astype(np.float32)
    Y32 = Y.astype(np.float32)
    G = ssyrk(1.0, Xc.T, trans=0, lower=0).astype(np.float64)  # upper triangle
    x_sum = Xc.sum(0, dtype=np.float64)
    XY = (Xc.T @ Y32).astype(np.float64)
    y_sum = Y.sum(0)
    out = np.empty((n, Y.shape[1]))
    for fit_idx, pred_idx in splits:
        Xp = Xc[pred_idx]
        nf = len(fit_idx)
        mx = (x_sum - Xp.sum(0, dtype=np.float64)) / nf
        my = (y_sum - Y[pred_idx].sum(0)) / nf
        Gf = G - ssyrk(1.0, Xp.T, trans=0, lower=0)  # Fortran-ordered, upper triangle
        Gf = dsyr(-float(nf), mx, a=Gf, lower=0, overwrite_a=True)
        Gf.flat[::D + 1] += alpha
        Cf = XY - (Xp.T @ Y32[pred_idx]).astype(np.float64) - nf * np.outer(mx, my)
        try:
            W = cho_solve(cho_factor(Gf, lower=False, overwrite_a=True, check_finite=False), Cf,
                          check_finite=False)
        except np.linalg.LinAlgError:  # the float32 downdate lost definiteness (tiny alpha, few spots)
            Xf = Xc[fit_idx].astype(np.float64) - mx
            Gx = Xf.T @ Xf
            Gx.flat[::D + 1] += alpha
            W = np.linalg.lstsq(Gx, Xf.T @ (Y[fit_idx] - my), rcond=None)[0]
        out[pred_idx] = (Xp - mx.astype(np.float32)) @ W.astype(np.float32) + my
    return out


class AttentionHead(BaseHead):
    """Attention from a spot's query token to its multi-scale and neighbour tokens.

    Input layout (see :func:`build_tokens`, which produces it from a cache): ``X`` (n, T, d) with
    tokens ``0..S-1`` the spot itself at S scales and tokens ``S..`` its spatial neighbours;
    ``rel_pos`` (n, T, 2) neighbour offsets in um (0 for own tokens); ``token_type`` (T,) ints
    (own scale s -> s, neighbour at scale s -> S + s; any small ints work, each gets its own
    embedding); ``token_mask`` (n, T) bool, False for a missing neighbour (tokens that are all NaN
    are masked too). A plain (n, d) ``X`` is one token per spot.

    Model: per-type standardisation of the features; input dropout; a shared linear projection to
    ``d_model``; plus a token-type embedding and an MLP on Fourier features of the offset (in
    units of ``pos_scale_um``); layer norm. The query, initialised from token 0, goes through
    ``n_layers`` blocks of multi-head attention over all valid tokens (residual + layer norm,
    then a feed-forward residual + layer norm) and a linear layer predicts every gene at once.

    With ``baseline="ridge"`` (default), a :class:`~stfeat.heads.RidgeCVHead` on the spot's own
    tokens (its S scales concatenated; grouped CV when ``groups`` are given) predicts first and
    the network learns the residual (on the training spots, residuals of out-of-fold ridge
    predictions, grouped by ``groups`` when given, so they are as large as on new spots); its
    output layer starts at zero, so training starts from the ridge and early stopping keeps the
    ridge if attention does not help on validation. Loss: MSE
    on standardised genes plus ``corr_weight`` x (1 - Pearson r). AdamW, early stopping on an
    inner validation split (whole groups when given). CUDA when available, else CPU;
    deterministic on CPU for a fixed ``random_state``.

    ``mode="nh2st"`` (after NH2ST): the spot's own tokens cross-attend to its neighbours'
    tokens (plus a learned null token) instead of one query attending to all, and training adds
    ``contrastive_weight`` x two InfoNCE losses (temperature ``contrastive_temperature``, NH2ST's
    0.05) that align the target branch's image embedding with the spot's expression and the
    neighbour branch's image embedding with the neighbours' mean expression (found through
    ``coords_um``/``sample_ids``; without them only the first). Early stopping watches the MSE.

    Parameters
    ----------
    d_model, n_heads, n_layers
        Width, attention heads, attention blocks.
    mode
        ``"query"`` (one query token attends to all tokens) or ``"nh2st"``.
    contrastive_weight, contrastive_temperature
        Weight and temperature of the NH2ST auxiliary losses.
    patch_tokens
        An input option (``mode="query"``): also attend to the G x G patch tokens of every field of view that
        ``stfeat extract --tokens G`` cached (M2OST's many-to-one input, :mod:`stfeat.patch_tokens`).
    dropout, input_dropout
        Dropout in the blocks and on the input features.
    lr, weight_decay, batch_size, max_epochs, patience
        Optimiser and early stopping.
    corr_weight
        Weight of the (1 - Pearson r) loss term.
    baseline
        ``"ridge"`` or ``None`` (the network predicts the genes alone).
    baseline_alphas
        Penalty grid of the ridge baseline (``None`` = RidgeCVHead's default).
    pos_scale_um
        Offsets are divided by this before the Fourier features; ``None`` = the median
        non-zero neighbour distance seen at fit.
    n_pos_freqs
        Number of Fourier frequencies (2^0..2^(F-1) times pi) per coordinate.
    validation_fraction
        Share of spots (or groups) held out for early stopping.
    device, random_state
        ``"auto"`` = CUDA when available; seed of split, initialisation, dropout and batch order.
    n_jobs
        Torch CPU threads (scikit-learn's convention: -1 = all cores); ``None`` = 1 for small
        problems, else ``$STFEAT_CPU_THREADS`` or the cores of the process's CPU affinity
        (:func:`stfeat.heads._cpu.resolve_n_jobs`). Never taken from the machine's load, so
        refits are bit-identical; rounding may differ between two explicit thread counts.

    Attributes
    ----------
    module_ : torch.nn.Module (on CPU after fit); baseline_ : RidgeCVHead or None;
    n_own_ : int (own tokens); token_type_ : ndarray (T,); best_epoch_ : int; history_ : list;
    residual_share_ : float, the share of the prediction's variance on the inner validation
    spots that comes from the attention residual (the rest from the ridge skip path);
    reduced_to_skip_ : bool, True when early stopping kept the untrained residual, so the head
    predicts exactly what its ridge skip path predicts.
    """

    name = "attention"
    _fitted_attr = "module_"

    def __init__(self, d_model: int = 128, *, n_heads: int = 4, n_layers: int = 1,
                 dropout: float = 0.2, input_dropout: float = 0.2, lr: float = 5e-4,
                 weight_decay: float = 0.05, batch_size: int = 256, max_epochs: int = 100,
                 patience: int = 10, corr_weight: float = 0.0, baseline: str | None = "ridge",
                 baseline_alphas=None, pos_scale_um: float | None = None, n_pos_freqs: int = 4,
                 validation_fraction: float = 0.15, device: str = "auto",
                 n_jobs: int | None = None, random_state: int | None = 0,
                 mode: str = "query", contrastive_weight: float = 0.1,
                 contrastive_temperature: float = 0.05, patch_tokens: bool = False):
        self.mode = mode
        self.patch_tokens = patch_tokens
        self.contrastive_weight = contrastive_weight
        self.contrastive_temperature = contrastive_temperature
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.corr_weight = corr_weight
        self.baseline = baseline
        self.baseline_alphas = baseline_alphas
        self.pos_scale_um = pos_scale_um
        self.n_pos_freqs = n_pos_freqs
        self.validation_fraction = validation_fraction
        self.device = device
        self.n_jobs = n_jobs
        self.random_state = random_state

    # ------------------------------------------------------------------ input handling
    def _tokens(self, X, rel_pos, token_type, token_mask, fitting: bool):
        if getattr(X, "ndim", 2) <= 2:  # plain features: sklearn's checks (sparse, NaN, empty)
            from sklearn.utils.validation import check_array

            X = check_array(X, dtype=np.float32, input_name="X")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim == 2:
            X = X[:, None, :]
        if X.ndim != 3:
            raise ValueError(f"X must be (n, d) features or (n, T, d) tokens; got shape {X.shape}.")
        n, T, d = X.shape
        nan_tok = np.isnan(X).all(axis=2)
        mask = np.ones((n, T), bool) if token_mask is None else np.asarray(token_mask, bool).copy()
        if mask.shape != (n, T):
            raise ValueError(f"token_mask must be (n, T) = {(n, T)}; got {mask.shape}.")
        mask &= ~nan_tok
        if np.isinf(X).any() or np.isnan(X[mask]).any():
            raise ValueError("Input X contains NaN or infinity inside a token. Fix: a missing token must be NaN "
                             "in all its features (or masked with token_mask); re-extract features that hold NaN.")
        if not mask[:, 0].all():
            raise ValueError("token 0 (the spot itself) is missing or NaN for some spots. Fix: "
                             "put each spot's own features first and drop spots without features.")
        if np.isnan(X).any():
            X = np.where(mask[..., None], np.nan_to_num(X), 0.0).astype(np.float32)
        rel = np.zeros((n, T, 2), np.float32) if rel_pos is None else \
            np.asarray(rel_pos, np.float32)
        if rel.shape != (n, T, 2):
            raise ValueError(f"rel_pos must be (n, T, 2) = {(n, T, 2)} offsets in um; got "
                             f"{rel.shape}.")
        rel = np.where(mask[..., None], rel, 0.0).astype(np.float32)
        if fitting:
            types = np.arange(T) if token_type is None else np.asarray(token_type, np.int64)
            if types.shape != (T,) or types.min() < 0:
                raise ValueError(f"token_type must be (T,) = ({T},) non-negative ints; got "
                                 f"{np.asarray(token_type).shape}.")
        else:
            types = self.token_type_ if token_type is None else np.asarray(token_type, np.int64)
            if T != len(self.token_type_) or not np.array_equal(types, self.token_type_):
                raise ValueError(f"tokens ({T}, types {types.tolist()}) differ from fit "
                                 f"({len(self.token_type_)}, types {self.token_type_.tolist()}). "
                                 "Fix: build tokens with the same scales and neighbour count.")
        return X, rel, types, mask

    def _standardize(self, X, mask):
        Xs = np.empty_like(X)
        for t in range(X.shape[1]):
            ty = self.token_type_[t]
            Xs[:, t] = (X[:, t] - self.tok_mean_[ty]) / self.tok_scale_[ty]
        Xs *= mask[..., None]
        return Xs

    def _own(self, X):
        return X[:, :self.n_own_].reshape(len(X), -1)

    # ------------------------------------------------------------------ fit / predict
    def fit(self, X, Y, rel_pos=None, token_type=None, token_mask=None, groups=None,
            coords_um=None, sample_ids=None) -> "AttentionHead":
        """Train on tokens ``X`` (n, T, d) or features (n, d) and targets ``Y`` (n, g)."""
        import torch

        from stfeat.heads._torch import (cpu_threads, pearson_loss, resolve_device, seeded,
                                         torch_seed, train_early_stopping)
        from stfeat.heads.ridge import RidgeCVHead

        if self.baseline not in ("ridge", None):
            raise ValueError(f"baseline must be 'ridge' or None; got {self.baseline!r}.")
        if self.mode not in ("query", "nh2st"):
            raise ValueError(f"mode must be 'query' or 'nh2st'; got {self.mode!r}.")
        if self.patch_tokens and self.mode != "query":
            raise ValueError("patch_tokens=True works with mode='query' (NH2ST's neighbour branch takes every token "
                             "after the spot's own as a neighbour). Fix: mode='query', or patch_tokens=False.")
        if Y is None:
            raise ValueError("AttentionHead requires y to be passed, but the target y is None. Fix: pass the "
                             "expression targets (spots x genes).")
        X, rel, types, mask = self._tokens(X, rel_pos, token_type, token_mask, fitting=True)
        self._check_xy(X[:, 0], Y)  # n_features_in_, n_outputs_, 1-D handling
        Y = np.asarray(Y, dtype=np.float64)
        Y = Y.reshape(len(Y), -1)
        n, T, d = X.shape
        self.token_type_ = types
        # own tokens: the leading run with zero offset everywhere
        still = (np.abs(rel).sum(axis=2) == 0).all(axis=0) & mask.all(axis=0)
        self.n_own_ = int(np.argmin(still)) if not still.all() else T
        self.n_own_ = max(self.n_own_, 1)
        nz = np.linalg.norm(rel[mask], axis=-1)
        nz = nz[nz > 0]
        self.pos_scale_ = float(self.pos_scale_um) if self.pos_scale_um else \
            (float(np.median(nz)) if len(nz) else 1.0)
        n_types = int(types.max()) + 1
        self.tok_mean_ = np.zeros((n_types, d), np.float32)
        self.tok_scale_ = np.ones((n_types, d), np.float32)
        for ty in np.unique(types):
            # two passes over the type's valid tokens, one token at a time (float64 sums of
            # float32 values: no float64 copy of the tokens)
            toks = np.flatnonzero(types == ty)
            cnt = sum(int(mask[:, t].sum()) for t in toks)
            m = sum(X[mask[:, t], t].sum(0, dtype=np.float64) for t in toks) / max(cnt, 1)
            m32 = m.astype(np.float32)
            ss = sum(np.square(X[mask[:, t], t] - m32).sum(0, dtype=np.float64) for t in toks)
            s = np.sqrt(ss / max(cnt, 1))
            self.tok_mean_[ty], self.tok_scale_[ty] = m, np.where(s > 1e-6, s, 1.0)

        device = resolve_device(self.device)
        seed = torch_seed(self.random_state)
        tr, va = inner_split(n, self.validation_fraction, seed, groups)
        self.y_mean_ = Y.mean(0)
        self.y_scale_ = np.where(Y.std(0) > 1e-12, Y.std(0), 1.0)
        Ys = (Y - self.y_mean_) / self.y_scale_
        if self.baseline == "ridge":
            own = self._own(X)
            g_all = None if groups is None else np.asarray(groups)
            # penalty chosen on all training spots (grouped CV when >= 3 groups, else GCV);
            # this ridge is the final baseline
            base = RidgeCVHead(self.baseline_alphas, n_jobs=self.n_jobs).fit(own, Y, groups=g_all)
            alpha = float(base.alpha_)
            # validation spots: a ridge that has not seen them, as new spots will be; training
            # spots: out-of-fold predictions, so the network learns from residuals as large as
            # those it will meet on new spots (in-sample ridge residuals are too small)
            splits = [(tr, va)] + self._oof_splits(tr, None if g_all is None else g_all[tr], seed)
            from stfeat.heads.slide_transformer import oof_ridge

            B = (oof_ridge(own, Y, alpha, splits) - self.y_mean_) / self.y_scale_
        else:
            base, B = None, np.zeros_like(Ys)
        Xs = torch.from_numpy(self._standardize(X, mask))
        relt = torch.from_numpy(rel / self.pos_scale_)
        maskt = torch.from_numpy(mask)
        Bt = torch.from_numpy(B.astype(np.float32))
        Yt = torch.from_numpy(Ys.astype(np.float32))
        typest = torch.from_numpy(types).to(device)
        cw = float(self.corr_weight)

        def loss_fn(pred, target):
            loss = torch.nn.functional.mse_loss(pred, target)
            return loss + cw * pearson_loss(pred, target) if cw > 0 else loss

        def forward(m, x, r, v, b):
            return b + m(x, r, typest, v)

        tensors = [Xs, relt, maskt, Bt, Yt]
        if self.mode == "nh2st":
            from stfeat.heads._nh2st import neighbour_targets

            # neighbours' expression from inner-training rows only (no validation leak)
            Ynb, nb_ok = neighbour_targets(Ys, rel, mask, self.n_own_, coords_um, sample_ids,
                                           allowed=np.isin(np.arange(n), tr))
            tensors = [Xs, relt, maskt, Bt, Yt, torch.from_numpy(Ynb), torch.from_numpy(nb_ok), Yt]
            cwt, tau = float(self.contrastive_weight), float(self.contrastive_temperature)
            base_loss = loss_fn

            def forward(m, x, r, v, b, y, ynb, ok):  # noqa: F811
                if not m.training:
                    return b + m(x, r, typest, v), None
                pred, aux = m(x, r, typest, v, y, ynb, ok, tau)
                return b + pred, aux

            def loss_fn(out, target):  # noqa: F811
                pred, aux = out
                loss = base_loss(pred, target)
                return loss if aux is None else loss + cwt * aux

        trt, vat = torch.from_numpy(tr), torch.from_numpy(va)
        work = int(self.batch_size) * T * d * int(self.d_model)
        with seeded(seed, device), cpu_threads(self.n_jobs, work, device):
            module = self._new_module(d, n_types).to(device)
            info = train_early_stopping(
                module, forward, [t[trt] for t in tensors],
                [t[vat] for t in tensors], loss_fn=loss_fn, lr=self.lr,
                weight_decay=self.weight_decay, batch_size=int(self.batch_size),
                max_epochs=int(self.max_epochs), patience=int(self.patience), seed=seed,
                device=device)
        self.baseline_ = base
        self.module_ = module.cpu().eval()
        self.best_epoch_ = int(info["best_epoch"])
        self.history_ = info["history"]
        with torch.no_grad():
            R = self.module_(Xs[vat], relt[vat], typest.cpu(), maskt[vat]).double().numpy()
        r_var, b_var = float(R.var(0).sum()), float(B[va].var(0).sum())
        self.residual_share_ = r_var / (r_var + b_var) if r_var + b_var > 0 else 0.0
        self.reduced_to_skip_ = bool(base is not None and self.best_epoch_ == 0)
        logger.info("attention (%s): %d tokens (%d own), best epoch %d, validation loss %.4f "
                    "(baseline only %.4f), residual share %.3f%s", self.mode, T, self.n_own_,
                    self.best_epoch_, info["best_val_loss"], info["history"][0],
                    self.residual_share_, " (reduced to its ridge skip path)"
                    if self.reduced_to_skip_ else "")
        return self

    @staticmethod
    def _oof_splits(idx, groups, seed: int) -> list:
        """k-fold (grouped when groups are given) over the spots ``idx``, as global indices."""
        from sklearn.model_selection import GroupKFold, KFold

        if groups is not None and len(np.unique(groups)) >= 2:
            folds = GroupKFold(n_splits=min(5, len(np.unique(groups)))).split(idx, groups=groups)
        else:
            folds = KFold(n_splits=min(5, len(idx)), shuffle=True, random_state=seed).split(idx)
        return [(idx[f], idx[p]) for f, p in folds]

    def _new_module(self, d, n_types):
        from stfeat.heads._attn_net import AttnNet, NH2STNet

        if self.mode == "nh2st":
            return NH2STNet(d, n_types, int(self.d_model), int(self.n_heads), int(self.n_layers),
                            self.n_outputs_, float(self.dropout), float(self.input_dropout),
                            int(self.n_pos_freqs), self.n_own_)
        return AttnNet(d, n_types, int(self.d_model), int(self.n_heads), int(self.n_layers),
                         self.n_outputs_, float(self.dropout), float(self.input_dropout),
                         int(self.n_pos_freqs))

    def predict(self, X, rel_pos=None, token_type=None, token_mask=None) -> np.ndarray:
        """Predict (n, g) from tokens (n, T, d) laid out as at fit (or features (n, d))."""
        import torch
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "module_")
        X, rel, types, mask = self._tokens(X, rel_pos, token_type, token_mask, fitting=False)
        if X.shape[2] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[2]} features, but AttentionHead is expecting "
                             f"{self.n_features_in_} features as input. Fix: use the same encoder as at fit.")
        base = np.zeros((len(X), self.n_outputs_)) if self.baseline_ is None else \
            (self.baseline_.predict(self._own(X)).reshape(len(X), -1) - self.y_mean_) / self.y_scale_
        typest = torch.from_numpy(self.token_type_)
        out = []
        from stfeat.heads._torch import cpu_threads

        self.module_.eval()
        work = min(len(X), 4096) * X.shape[1] * X.shape[2] * int(self.d_model) / 3
        with torch.no_grad(), cpu_threads(self.n_jobs, work, torch.device("cpu")):
            for i in range(0, len(X), 4096):
                sl = slice(i, i + 4096)
                xs = torch.from_numpy(self._standardize(X[sl], mask[sl]))
                r = torch.from_numpy(rel[sl] / self.pos_scale_)
                out.append(self.module_(xs, r, typest, torch.from_numpy(mask[sl])).double())
        P = (base + torch.cat(out).numpy()) * self.y_scale_ + self.y_mean_
        return self._format_out(P)

    # ------------------------------------------------------------------ persistence
    def _get_state(self):
        from stfeat.heads._torch import state_to_arrays

        meta = self._base_meta() | {"n_own_": self.n_own_, "pos_scale_": self.pos_scale_,
                                    "best_epoch_": self.best_epoch_, "history_": self.history_,
                                    "residual_share_": self.residual_share_,
                                    "reduced_to_skip_": self.reduced_to_skip_,
                                    "has_baseline": self.baseline_ is not None}
        arrays = {"token_type_": self.token_type_, "tok_mean_": self.tok_mean_,
                  "tok_scale_": self.tok_scale_, "y_mean_": self.y_mean_,
                  "y_scale_": self.y_scale_} | state_to_arrays(self.module_)
        if self.baseline_ is not None:
            bmeta, barr, _ = self.baseline_._get_state()
            meta["baseline_meta"] = bmeta
            meta["baseline_params"] = self.baseline_.get_params()
            arrays |= {"baseline." + k: v for k, v in barr.items()}
        return meta, arrays, {}

    def _set_state(self, meta, arrays, texts):
        from stfeat.heads._torch import arrays_to_state
        from stfeat.heads.ridge import RidgeCVHead

        self._set_base_meta(meta)
        self.n_own_ = int(meta["n_own_"])
        self.pos_scale_ = float(meta["pos_scale_"])
        self.best_epoch_ = int(meta["best_epoch_"])
        self.history_ = list(meta["history_"])
        self.residual_share_ = float(meta.get("residual_share_", float("nan")))
        self.reduced_to_skip_ = bool(meta.get("reduced_to_skip_", False))
        for key in ("token_type_", "tok_mean_", "tok_scale_", "y_mean_", "y_scale_"):
            setattr(self, key, arrays[key])
        self.baseline_ = None
        if meta["has_baseline"]:
            base = RidgeCVHead(**meta["baseline_params"])
            base._set_state(meta["baseline_meta"], {k[len("baseline."):]: v for k, v in
                                                    arrays.items() if k.startswith("baseline.")},
                            {})
            self.baseline_ = base
        module = self._new_module(self.n_features_in_, len(self.tok_mean_))
        module.load_state_dict(arrays_to_state(arrays))
        self.module_ = module.eval()
