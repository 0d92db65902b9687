"""Slide-context transformer head (``slide-transformer``): spots of a section attend to each other.

After HisToSGE (one transformer layer over chunks of spots with coordinate embeddings and an MLP
head with a non-negative output on frozen features) and mclSTExp (spots as words in a transformer
over the section). Each section is cut into spatially contiguous chunks of at most ``chunk_size``
spots (recursive median bisection along the longer axis); a spot's token is its cached feature
vector plus a sinusoidal encoding of its offset in micrometres from its chunk's centre, so the
model sees where spots lie relative to each other but cannot memorise a slide's absolute array
positions. Absolute learned positions are an opt-in (``learned_positions=True``), and they are
slide-specific: they tie the model to the training slides' frames.
"""

from __future__ import annotations

import logging

import numpy as np

from stfeat.heads._base import BaseHead, inner_split, standardize_fit

logger = logging.getLogger(__name__)


def spatial_chunks(coords_um: np.ndarray | None, sample_ids: np.ndarray | None,
                   chunk_size: int) -> list[np.ndarray]:
    """Row indices of spatially contiguous chunks of at most ``chunk_size`` spots.

    Chunks never cross samples. Each sample's spots are split recursively at the median of the
    coordinate with the larger spread until every part fits; ties are broken by row order, so the
    result is deterministic. Without coordinates every spot is its own chunk.
    """
    n = len(sample_ids) if coords_um is None and sample_ids is not None else None
    if coords_um is None:
        return [np.array([i]) for i in range(n if n is not None else 0)]
    coords = np.asarray(coords_um, dtype=np.float64)
    sids = np.zeros(len(coords), dtype=object) if sample_ids is None else np.asarray(sample_ids)
    out: list[np.ndarray] = []

    def split(idx: np.ndarray) -> None:
        if len(idx) <= chunk_size:
            out.append(idx)
            return
        c = coords[idx]
        axis = int(np.argmax(c.max(0) - c.min(0)))
        order = idx[np.lexsort((idx, c[:, axis]))]
        half = len(order) // 2
        split(np.sort(order[:half]))
        split(np.sort(order[half:]))

    _, first = np.unique(sids.astype(str), return_index=True)
    for s in sids[np.sort(first)]:
        split(np.flatnonzero(sids == s))
    return out


def oof_ridge(X, Y, alpha: float, splits) -> np.ndarray:
    """Held-out ridge predictions of each split's spots (the attention head's fast Gram-update
    path; when its float32 Gram update loses positive definiteness, e.g. on nearly collinear
    features, plain ridge refits with the same penalty)."""
    from stfeat.heads.attention import _heldout_ridge
    from stfeat.heads.ridge import RidgeCVHead

    try:
        return _heldout_ridge(X, Y, alpha, splits)
    except np.linalg.LinAlgError:
        out = np.empty((len(X), Y.shape[1]))
        for fit_idx, pred_idx in splits:
            ridge = RidgeCVHead([alpha]).fit(X[fit_idx], Y[fit_idx])
            out[pred_idx] = ridge.predict(X[pred_idx]).reshape(len(pred_idx), -1)
        return out


class SlideTransformerHead(BaseHead):
    """A small transformer over spatially contiguous chunks of a section's spots.

    Inputs: ``X`` (n, d) cached features (scales concatenated, as the flat heads take them),
    ``coords_um`` (n, 2) spot centres in micrometres and ``sample_ids`` (n,) the section of each
    row (``stfeat fit`` passes both). Without ``coords_um`` each spot is a chunk of its own (no
    context; a warning says so).

    Model: features standardised; input dropout; a linear projection to ``d_model`` plus a linear
    map of the sinusoidal encoding (``n_pos_freqs`` wavelengths from 1 to 2^(F-1) spot pitches)
    of the offset from the chunk centre, in units of ``pos_scale_um`` (default: the median
    nearest-neighbour distance at fit, i.e. the spot pitch); ``n_layers`` pre-norm transformer
    encoder layers whose attention logits also get a learned per-head bias of the pairwise
    offset between spots (translation-invariant); a linear output layer. With ``baseline="ridge"`` (default) a
    :class:`~stfeat.heads.RidgeCVHead` on the spot's own features predicts first and the
    transformer learns the residual (trained on out-of-fold ridge predictions; output layer
    initialised at zero, so early stopping keeps the ridge when context does not help:
    ``reduced_to_skip_`` then says so). ``nonneg=True`` floors predictions at zero in the
    original units (HisToSGE's non-negative output). Loss: MSE on standardised genes. AdamW,
    early stopping on whole validation chunks (whole groups when ``groups`` are given).

    Parameters
    ----------
    d_model, n_heads, n_layers, dropout, input_dropout
        Transformer width, attention heads, layers and dropout.
    chunk_size
        Most spots per chunk (a few hundred: legacy ST sections have ~200-700 spots, Visium
        ~3,000-5,000).
    pos_scale_um, n_pos_freqs
        Unit of the offsets and number of sinusoidal wavelengths.
    learned_positions
        Also add learned embeddings of the absolute grid position (offset from the sample's
        lower-left spot in pitches, up to ``n_abs_positions`` per axis). SLIDE-SPECIFIC: it lets
        the model memorise where things are on the training slides; off by default.
    nonneg
        Floor predictions at 0 (for non-negative targets such as log1p counts).
    baseline, baseline_alphas
        ``"ridge"`` skip path (and its penalty grid) or ``None``.
    lr, weight_decay, batch_size, max_epochs, patience, validation_fraction
        Optimiser and early stopping; ``batch_size`` counts chunks.
    device, n_jobs, random_state
        As in :class:`~stfeat.heads.AttentionHead`.

    Attributes
    ----------
    module_ : torch.nn.Module; baseline_ : RidgeCVHead or None; pos_scale_ : float;
    best_epoch_ : int; history_ : list; residual_share_ : float (share of the prediction's
    variance on the inner validation spots that comes from the transformer residual);
    reduced_to_skip_ : bool (early stopping kept the untrained residual: the ridge alone).
    """

    name = "slide-transformer"
    _fitted_attr = "module_"

    def __init__(self, d_model: int = 128, *, n_heads: int = 4, n_layers: int = 1,
                 chunk_size: int = 256, dropout: float = 0.1, input_dropout: float = 0.1,
                 pos_scale_um: float | None = None, n_pos_freqs: int = 6,
                 learned_positions: bool = False, n_abs_positions: int = 128,
                 nonneg: bool = False, baseline: str | None = "ridge", baseline_alphas=None,
                 lr: float = 1e-3, weight_decay: float = 0.05, batch_size: int = 2,
                 max_epochs: int = 100, patience: int = 10, validation_fraction: float = 0.15,
                 device: str = "auto", n_jobs: int | None = None,
                 random_state: int | None = 0):
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.chunk_size = chunk_size
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.pos_scale_um = pos_scale_um
        self.n_pos_freqs = n_pos_freqs
        self.learned_positions = learned_positions
        self.n_abs_positions = n_abs_positions
        self.nonneg = nonneg
        self.baseline = baseline
        self.baseline_alphas = baseline_alphas
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.device = device
        self.n_jobs = n_jobs
        self.random_state = random_state

    # ------------------------------------------------------------------ helpers
    def _new_module(self):
        from stfeat.heads._paper_nets import SlideTransformerNet

        return SlideTransformerNet(self.n_features_in_, self.n_outputs_, int(self.d_model),
                                   int(self.n_heads), int(self.n_layers), float(self.dropout),
                                   float(self.input_dropout), int(self.n_pos_freqs),
                                   int(self.n_abs_positions) if self.learned_positions else 0)

    @staticmethod
    def _coords(X, coords_um, sample_ids):
        n = len(X)
        if sample_ids is None:
            sample_ids = np.zeros(n, dtype=object)
        sample_ids = np.asarray(sample_ids).astype(str)
        if sample_ids.shape != (n,):
            raise ValueError(f"sample_ids must be (n,) = ({n},); got {sample_ids.shape}. Fix: "
                             "pass the sample id of every row.")
        if coords_um is None:
            logger.warning("slide-transformer: no coords_um given, so every spot is a chunk of "
                           "its own and the model sees no spatial context")
            return None, sample_ids
        coords = np.asarray(coords_um, dtype=np.float64)
        if coords.shape != (n, 2) or not np.isfinite(coords).all():
            raise ValueError(f"coords_um must be (n, 2) = ({n}, 2) finite spot centres in um; got "
                             f"{coords.shape}. Fix: pass the spots' micrometre coordinates.")
        return coords, sample_ids

    def _pack(self, Z, coords, sample_ids, chunks, extra=()):
        """Pad chunks into (C, L, ...) arrays: features, offsets, padding, abs positions, extras."""
        C = len(chunks)
        L = max(len(c) for c in chunks)
        d = Z.shape[1]
        x = np.zeros((C, L, d), np.float32)
        off = np.zeros((C, L, 2), np.float32)
        pad = np.ones((C, L), bool)
        ab = np.zeros((C, L, 2), np.int64)
        ex = [np.full((C, L) + e.shape[1:], np.nan, np.float32) for e in extra]
        for j, c in enumerate(chunks):
            m = len(c)
            x[j, :m] = Z[c]
            pad[j, :m] = False
            if coords is not None:
                cc = coords[c]
                off[j, :m] = (cc - cc.mean(0)) / self.pos_scale_
                if self.learned_positions:
                    lo = self.sample_origin_.get(sample_ids[c[0]], cc.min(0))
                    ab[j, :m] = np.clip(np.rint((cc - lo) / self.pos_scale_), 0,
                                        int(self.n_abs_positions) - 1)
            for e, arr in zip(extra, ex):
                arr[j, :m] = e[c]
        return x, off, pad, ab, ex

    # ------------------------------------------------------------------ fit / predict
    def fit(self, X, Y, coords_um=None, sample_ids=None, groups=None) -> "SlideTransformerHead":
        """Train on features ``X`` (n, d), targets ``Y`` (n, g) and the spots' positions."""
        import torch

        from stfeat.heads._torch import (cpu_threads, resolve_device, seeded, torch_seed,
                                         train_early_stopping)
        from stfeat.heads.attention import AttentionHead
        from stfeat.heads.ridge import RidgeCVHead

        if self.baseline not in ("ridge", None):
            raise ValueError(f"baseline must be 'ridge' or None; got {self.baseline!r}.")
        X, Y = self._check_xy(X, Y)
        coords, sids = self._coords(X, coords_um, sample_ids)
        n = len(X)
        if coords is not None:
            from scipy.spatial import cKDTree

            nn_d = np.concatenate([cKDTree(coords[sids == s]).query(coords[sids == s], k=2)[0][:, 1]
                                   for s in np.unique(sids) if (sids == s).sum() > 1] or [[1.0]])
            nn_d = nn_d[nn_d > 0]
            self.pos_scale_ = float(self.pos_scale_um) if self.pos_scale_um else \
                (float(np.median(nn_d)) if len(nn_d) else 1.0)
            self.sample_origin_ = {s: coords[sids == s].min(0) for s in np.unique(sids)}
        else:
            self.pos_scale_ = float(self.pos_scale_um or 1.0)
            self.sample_origin_ = {}
        if self.learned_positions:
            logger.warning("slide-transformer: learned_positions=True ties the model to the "
                           "training slides' absolute positions (slide-specific)")
        chunks = spatial_chunks(coords, sids, int(self.chunk_size)) if coords is not None \
            else [np.array([i]) for i in range(n)]
        device = resolve_device(self.device)
        seed = torch_seed(self.random_state)
        g_all = None if groups is None else np.asarray(groups)
        cgroups = None if g_all is None else g_all[[c[0] for c in chunks]]
        if len(chunks) < 2:  # one chunk: validate on random spots' halves of it
            half = np.array_split(chunks[0], 2)
            chunks, cgroups = [half[0], half[1]], None
        ctr, cva = inner_split(len(chunks), self.validation_fraction, seed, cgroups)
        tr = np.sort(np.concatenate([chunks[i] for i in ctr]))
        va = np.sort(np.concatenate([chunks[i] for i in cva]))
        self.x_mean_, self.x_scale_ = standardize_fit(X)
        Z = ((X - self.x_mean_) / self.x_scale_).astype(np.float32)
        self.y_mean_ = Y.mean(0)
        self.y_scale_ = np.where(Y.std(0) > 1e-12, Y.std(0), 1.0)
        Ys = (Y - self.y_mean_) / self.y_scale_
        if self.baseline == "ridge":
            base = RidgeCVHead(self.baseline_alphas).fit(X, Y, groups=g_all)
            splits = [(tr, va)] + AttentionHead._oof_splits(
                tr, None if g_all is None else g_all[tr], seed)
            B = (oof_ridge(X, Y, float(base.alpha_), splits) - self.y_mean_) / self.y_scale_
        else:
            base, B = None, np.zeros_like(Ys)
        floor = torch.from_numpy((-self.y_mean_ / self.y_scale_).astype(np.float32)) \
            if self.nonneg else None
        x, off, pad, ab, (Bc, Yc) = self._pack(Z, coords, sids, chunks,
                                               (B.astype(np.float32), Ys.astype(np.float32)))
        tens = [torch.from_numpy(a) for a in (x, off, pad, ab, np.nan_to_num(Bc), Yc)]

        def forward(m, x_, o_, p_, a_, b_):
            out = b_ + m(x_, o_, p_, a_ if self.learned_positions else None)
            return torch.maximum(out, floor.to(out.device)) if floor is not None else out

        def loss_fn(pred, target):
            ok = ~torch.isnan(target[..., 0])
            return torch.nn.functional.mse_loss(pred[ok], target[ok])

        trt, vat = torch.from_numpy(ctr), torch.from_numpy(cva)
        work = int(self.batch_size) * x.shape[1] * (x.shape[2] + 8 * int(self.d_model)) \
            * int(self.d_model)
        # without coordinates every chunk is one spot: batch them like a plain MLP's rows
        bs = int(self.batch_size) if coords is not None else max(int(self.batch_size), 256)
        with seeded(seed, device), cpu_threads(self.n_jobs, work, device):
            module = self._new_module().to(device)
            info = train_early_stopping(
                module, forward, [t[trt] for t in tens], [t[vat] for t in tens],
                loss_fn=loss_fn, lr=self.lr, weight_decay=self.weight_decay,
                batch_size=bs, max_epochs=int(self.max_epochs),
                patience=int(self.patience), seed=seed, device=device, min_batch=1)
        self.baseline_ = base
        self.module_ = module.cpu().eval()
        self.best_epoch_ = int(info["best_epoch"])
        self.history_ = info["history"]
        self.reduced_to_skip_ = bool(base is not None and self.best_epoch_ == 0)
        with torch.no_grad():
            R = self.module_(*[t[vat] for t in tens[:3]],
                             tens[3][vat] if self.learned_positions else None).numpy()
        ok = ~pad[cva]
        r_var = float(R[ok].var(0).sum())
        b_var = float(Bc[cva][ok].var(0).sum())
        self.residual_share_ = r_var / (r_var + b_var) if r_var + b_var > 0 else 0.0
        logger.info("slide-transformer: %d chunks (<= %d spots), best epoch %d, validation loss "
                    "%.4f (skip path only %.4f), residual share %.3f", len(chunks),
                    int(self.chunk_size), self.best_epoch_, info["best_val_loss"],
                    info["history"][0], self.residual_share_)
        return self

    def predict(self, X, coords_um=None, sample_ids=None) -> np.ndarray:
        """Predict (n, g) for the spots of one or more sections (chunked as at fit)."""
        import torch

        from stfeat.heads._torch import cpu_threads

        X = self._check_x(X)
        coords, sids = self._coords(X, coords_um, sample_ids)
        chunks = spatial_chunks(coords, sids, int(self.chunk_size)) if coords is not None \
            else [np.array([i]) for i in range(len(X))]
        Z = ((X - self.x_mean_) / self.x_scale_).astype(np.float32)
        B = np.zeros((len(X), self.n_outputs_)) if self.baseline_ is None else \
            (self.baseline_.predict(X).reshape(len(X), -1) - self.y_mean_) / self.y_scale_
        out = np.empty((len(X), self.n_outputs_))
        self.module_.eval()
        with torch.no_grad(), cpu_threads(self.n_jobs, 1e8, torch.device("cpu")):
            step = 8 if coords is not None else 4096  # pairwise biases: 8 x L^2 x 4F floats
            for i in range(0, len(chunks), step):
                part = chunks[i:i + step]
                x, off, pad, ab, _ = self._pack(Z, coords, sids, part)
                R = self.module_(torch.from_numpy(x), torch.from_numpy(off),
                                 torch.from_numpy(pad),
                                 torch.from_numpy(ab) if self.learned_positions else None)
                R = R.double().numpy()
                for j, c in enumerate(part):
                    out[c] = R[j, :len(c)]
        S = B + out
        if self.nonneg:
            S = np.maximum(S, -self.y_mean_ / self.y_scale_)
        return self._format_out(S * self.y_scale_ + self.y_mean_)

    # ------------------------------------------------------------------ persistence
    def _get_state(self):
        from stfeat.heads._torch import state_to_arrays

        meta = self._base_meta() | {
            "pos_scale_": self.pos_scale_, "best_epoch_": self.best_epoch_,
            "history_": self.history_, "residual_share_": self.residual_share_,
            "reduced_to_skip_": self.reduced_to_skip_, "has_baseline": self.baseline_ is not None,
            "sample_origin_": {k: list(map(float, v)) for k, v in self.sample_origin_.items()}}
        arrays = {"x_mean_": self.x_mean_, "x_scale_": self.x_scale_, "y_mean_": self.y_mean_,
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
        for key in ("pos_scale_", "best_epoch_", "residual_share_", "reduced_to_skip_"):
            setattr(self, key, meta[key])
        self.history_ = list(meta["history_"])
        self.sample_origin_ = {k: np.asarray(v) for k, v in meta["sample_origin_"].items()}
        for key in ("x_mean_", "x_scale_", "y_mean_", "y_scale_"):
            setattr(self, key, arrays[key])
        self.baseline_ = None
        if meta["has_baseline"]:
            base = RidgeCVHead(**meta["baseline_params"])
            base._set_state(meta["baseline_meta"], {k[len("baseline."):]: v for k, v in
                                                    arrays.items() if k.startswith("baseline.")},
                            {})
            self.baseline_ = base
        module = self._new_module()
        module.load_state_dict(arrays_to_state(arrays))
        self.module_ = module.eval()
