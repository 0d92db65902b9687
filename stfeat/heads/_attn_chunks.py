"""Train :class:`stfeat.heads.attention.AttentionHead` from row chunks of a lazy FeatureSet.

:func:`fit_attention_featureset` is ``AttentionHead.fit`` (``mode="query"``) on samples whose features stay on
disk: token tensors are built one chunk of rows at a time (:func:`stfeat.head_inputs.token_rows`: the chunk's own
scales plus its neighbours' rows at the neighbour scale, gathered as sorted unique rows), never the whole
sample's (n, T, d) tensor. What differs from the in-memory fit, so results are close, not identical:

* per-type token standardisation from one streaming pass of float64 sums (not two passes);
* the ridge skip path is fitted from sufficient statistics (:mod:`stfeat.suffstats`, cached beside the caches
  like the ``ridge`` head's); the training spots' residuals come from ridges that leave out whole groups
  (grouped k-fold over the training groups, at most 5 folds; in-sample when there is one training group), the
  validation groups' from a ridge on the training groups, both at the penalty chosen on all samples;
* mini-batches never span two chunks (chunks visited in a seeded random order, rows shuffled within one).

Early stopping validates on whole groups (patients, else sections), chosen as the ``mlp`` chunk path chooses
them. Deterministic on CPU for a fixed ``random_state``.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)


def split_groups(ids: Sequence[str], group_of: Mapping[str, str], fraction: float, seed: int, what: str
                 ) -> tuple[list[str], list[str], dict[str, str]]:
    """(training ids, validation ids, id -> group): whole groups validate (``fraction`` of them, seeded)."""
    from stfeat.errors import InputError

    labels = {s: str(group_of.get(s, s)) for s in ids}
    if len(set(labels.values())) < 2:
        labels = {s: s for s in ids}
    uniq = np.array(sorted(set(labels.values())))
    if len(uniq) < 2:
        raise InputError(None, f"training {what} from chunks needs 2 or more samples (whole samples validate).",
                         "give more samples, or load them in memory (lazy=False) for a split over spots.")
    rng = np.random.RandomState(seed)
    n_val = max(1, int(round(float(fraction) * len(uniq))))
    val = set(uniq[rng.permutation(len(uniq))[:n_val]])
    return [s for s in ids if labels[s] not in val], [s for s in ids if labels[s] in val], labels


def _chunk_starts(fs: Any, ids: Sequence[str], chunk_rows: int) -> list[tuple[str, int]]:
    return [(s, a) for s in ids for a in range(0, fs.samples[s].n_spots, chunk_rows)]


def _baseline(head: Any, fs: Any, ids, train, valid, labels, genes, transform, flat_layout):
    """The final ridge skip path (all samples) and B (standardised baseline predictions) per sample."""
    from stfeat import suffstats_cache as ssc
    from stfeat.heads.ridge import RidgeCVHead
    from stfeat.suffstats import combine, solve

    stats = ssc.featureset_stats(fs, ids, genes, transform, flat_layout)
    base = ssc.fit_ridge(RidgeCVHead(head.baseline_alphas, n_jobs=head.n_jobs), stats, labels)
    alpha = base.alpha_

    def ridge_on(samples):
        return solve(combine(stats[s] for s in samples), RidgeCVHead([float(np.mean(alpha))], cv="gcv",
                                                                    n_jobs=head.n_jobs))

    def pred(est, s):
        P = ssc.predict_chunks(est, fs, [s], flat_layout).astype(np.float64)
        return ((P - head.y_mean_) / head.y_scale_).astype(np.float32)

    B = {}
    on_train = ridge_on(train)
    for s in valid:
        B[s] = pred(on_train, s)
    groups = sorted({labels[s] for s in train})
    if len(groups) < 2:
        for s in train:
            B[s] = pred(on_train, s)
    else:
        n_folds = min(5, len(groups))
        fold_of = {g: i % n_folds for i, g in enumerate(groups)}
        for f in range(n_folds):
            held = [s for s in train if fold_of[labels[s]] == f]
            est = ridge_on([s for s in train if fold_of[labels[s]] != f])
            for s in held:
                B[s] = pred(est, s)
    return base, B


def fit_attention_featureset(head: Any, fs: Any, ids: Sequence[str], genes: Sequence[str], transform: str,
                             group_of: Mapping[str, str], *, k: int = 8, neighbor_scale: str | None = None,
                             chunk_rows: int = 4096) -> Any:
    """Fit the unfitted ``head`` (AttentionHead, ``mode="query"``) on samples ``ids`` of a (lazy) FeatureSet."""
    import torch

    from stfeat.errors import InputError
    from stfeat.head_inputs import token_rows
    from stfeat.heads._torch import cpu_threads, pearson_loss, resolve_device, seeded, torch_seed

    if head.mode != "query":
        raise InputError(None, f"attention mode={head.mode!r} does not train from chunks (only 'query').",
                         "use mode='query', or load the features in memory (lazy=False).")
    if head.baseline not in ("ridge", None):
        raise ValueError(f"baseline must be 'ridge' or None; got {head.baseline!r}.")
    ids, genes, chunk_rows = list(ids), list(genes), int(chunk_rows)
    scales = list(fs.scales)
    seed = torch_seed(head.random_state)
    train, valid, labels = split_groups(ids, group_of, head.validation_fraction, seed, "an attention head")

    def tokens(s, a):
        return token_rows(fs.samples[s], scales, a, a + chunk_rows, k=k, neighbor_scale=neighbor_scale,
                          standardize=fs.standardize)

    Y = {s: np.asarray(fs.targets(s, genes, transform), np.float64) for s in ids}
    Yall = np.concatenate([Y[s] for s in ids])
    S, d, g = len(scales), fs.samples[ids[0]].features[scales[0]].shape[1], Yall.shape[1]
    types = np.concatenate([np.arange(S), np.full(k, S)]).astype(np.int64)
    head.n_features_in_, head.n_outputs_, head._y_1d_ = d, g, False
    head.token_type_, head.n_own_ = types, S
    head.y_mean_ = Yall.mean(0)
    head.y_scale_ = np.where(Yall.std(0) > 1e-12, Yall.std(0), 1.0)
    # offsets' scale: the median non-zero neighbour distance (float32 offsets, as the in-memory fit)
    if head.pos_scale_um:
        head.pos_scale_ = float(head.pos_scale_um)
    else:
        dists = []
        for s in ids:
            sf = fs.samples[s]
            idx, _ = sf.neighbor_graph(k)
            ok = idx >= 0
            cu = sf.coords_um
            off = (cu[np.clip(idx, 0, None)] - cu[:, None, :]).astype(np.float32)[ok]
            dists.append(np.linalg.norm(off, axis=-1))
        nz = np.concatenate(dists) if dists else np.zeros(0)
        nz = nz[nz > 0]
        head.pos_scale_ = float(np.median(nz)) if len(nz) else 1.0
    # per-type token moments over every valid token of every sample (one pass, float64 sums)
    n_types = int(types.max()) + 1
    tot, sq, cnt = np.zeros((n_types, d)), np.zeros((n_types, d)), np.zeros(n_types)
    for s, a in _chunk_starts(fs, ids, chunk_rows):
        t = tokens(s, a)
        ok = ~t["mask"]
        for j, ty in enumerate(types):
            x = t["X"][ok[:, j], j]
            tot[ty] += x.sum(0, dtype=np.float64)
            sq[ty] += np.square(x, dtype=np.float64).sum(0)
            cnt[ty] += len(x)
    mean = tot / np.maximum(cnt, 1)[:, None]
    sd = np.sqrt(np.maximum(sq / np.maximum(cnt, 1)[:, None] - mean ** 2, 0.0))
    head.tok_mean_ = mean.astype(np.float32)
    head.tok_scale_ = np.where(sd > 1e-6, sd, 1.0).astype(np.float32)

    flat_layout = {"kind": "flat", "scales": scales, "neighbor_mean": False, "k_neighbors": k}
    if head.baseline == "ridge":
        base, B = _baseline(head, fs, ids, train, valid, labels, genes, transform, flat_layout)
    else:
        base, B = None, {s: np.zeros((fs.samples[s].n_spots, g), np.float32) for s in ids}
    Ys = {s: ((Y[s] - head.y_mean_) / head.y_scale_).astype(np.float32) for s in ids}

    device = resolve_device(head.device)
    typest = torch.from_numpy(types).to(device)
    cw, bs = float(head.corr_weight), int(head.batch_size)

    def batch(s, a):
        t = tokens(s, a)
        ok = ~t["mask"]
        sl = slice(a, a + len(ok))
        return [torch.from_numpy(v).to(device) for v in
                (head._standardize(t["X"], ok), t["rel_pos"] / head.pos_scale_, ok, B[s][sl], Ys[s][sl])]

    def loss_fn(pred, target):
        loss = torch.nn.functional.mse_loss(pred, target)
        return loss + cw * pearson_loss(pred, target) if cw > 0 else loss

    valid_chunks = _chunk_starts(fs, valid, chunk_rows)

    def evaluate(module, residuals: list | None = None) -> float:
        module.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for s, a in valid_chunks:
                x, r, v, b, y = batch(s, a)
                R = module(x, r, typest, v)
                total += float(loss_fn(b + R, y)) * len(y)
                count += len(y)
                if residuals is not None:
                    residuals.append(R.double().cpu().numpy())
        return total / max(count, 1)

    train_chunks = _chunk_starts(fs, train, chunk_rows)
    rng = np.random.default_rng(seed)
    work = bs * len(types) * d * int(head.d_model)
    with seeded(seed, device), cpu_threads(head.n_jobs, work, device):
        module = head._new_module(d, n_types).to(device)
        opt = torch.optim.AdamW(module.parameters(), lr=head.lr, weight_decay=head.weight_decay)
        best = evaluate(module)
        history, best_state, best_epoch, bad = [best], copy.deepcopy(module.state_dict()), 0, 0
        for epoch in range(1, int(head.max_epochs) + 1):
            module.train()
            for j in rng.permutation(len(train_chunks)):
                x, r, v, b, y = batch(*train_chunks[j])
                perm = torch.from_numpy(rng.permutation(len(y))).to(device)
                for i in range(0, len(y), bs):
                    idx = perm[i:i + bs]
                    if len(idx) < 2:
                        continue
                    loss = loss_fn(b[idx] + module(x[idx], r[idx], typest, v[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            val = evaluate(module)
            history.append(val)
            if val < best - 1e-6 * abs(best):
                best, best_epoch, bad = val, epoch, 0
                best_state = copy.deepcopy(module.state_dict())
            else:
                bad += 1
                if bad >= int(head.patience):
                    break
        module.load_state_dict(best_state)
        module = module.cpu().eval()
        typest = typest.cpu()
        device = torch.device("cpu")
        residuals: list = []
        evaluate(module, residuals)
    head.baseline_, head.module_ = base, module
    head.best_epoch_, head.history_ = best_epoch, history
    R = np.concatenate(residuals) if residuals else np.zeros((0, g))
    Bv = np.concatenate([B[s] for s in valid]).astype(np.float64)
    r_var, b_var = float(R.var(0).sum()), float(Bv.var(0).sum())
    head.residual_share_ = r_var / (r_var + b_var) if r_var + b_var > 0 else 0.0
    head.reduced_to_skip_ = bool(base is not None and best_epoch == 0)
    logger.info("attention (chunks): %d tokens (%d own), best epoch %d, validation loss %.4f (baseline only %.4f)",
                len(types), S, best_epoch, best, history[0])
    return head


def use_attention_chunks(est: Any, fs: Any, layout: Mapping[str, Any]) -> bool:
    """Whether an attention head trains from chunks: ``AttentionHead`` (``mode="query"``) on lazy features."""
    from stfeat.heads.attention import AttentionHead

    return (type(est) is AttentionHead and layout.get("kind") == "tokens" and est.mode == "query"
            and not layout.get("patch_tokens") and fs.is_lazy)


__all__ = ["fit_attention_featureset", "use_attention_chunks", "split_groups"]
