"""Train :class:`stfeat.heads.mlp.MLPHead` from row chunks (lazy features that never fit in memory).

:func:`fit_mlp_chunks` is ``MLPHead.fit`` with the data given as a callable that yields ``(X, Y)``
chunks afresh on every call, for a training and a validation part. Standardisation comes from the
chunks' sufficient statistics (:class:`stfeat.suffstats.SuffStats`: means and population variances,
as ``standardize_fit``); each epoch visits the training chunks in a seeded random order and shuffles
rows within each chunk (HDF5 rows are cheap to read in runs, not one by one), with AdamW, the head's
loss, early stopping on the validation chunks and the best epoch's weights kept. Mini-batches of
``batch_size`` rows never span two chunks, so the batches differ from ``MLPHead.fit``'s (a global
permutation); results are deterministic on CPU for a fixed ``random_state``.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Callable, Iterable

import numpy as np

logger = logging.getLogger(__name__)

Chunks = Callable[[str], Iterable[tuple[np.ndarray, np.ndarray]]]


def _moments(stats: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x mean, x scale, y mean, y scale) from statistics, with MLPHead's rules for constant columns."""
    n = float(stats.n)
    xm, G, _, ym, yy = stats.centred()
    xs = np.sqrt(np.maximum(np.diag(G) / n, 0.0))
    xs[xs <= np.sqrt(np.finfo(np.float64).eps) * np.maximum(np.abs(xm), 1.0)] = 1.0
    ysd = np.sqrt(np.maximum(yy / n, 0.0))
    return xm, xs, ym, np.where(ysd > 1e-12, ysd, 1.0)


def fit_mlp_chunks(head: Any, chunks: Chunks, stats: Any) -> Any:
    """Fit the unfitted ``head`` (MLPHead) from ``chunks("train")`` / ``chunks("valid")``.

    ``chunks("train")`` yields zero-argument loaders returning ``(X, Y)`` (one chunk in memory at a time)
    or ``(X, Y)`` pairs; ``chunks("valid")`` yields ``(X, Y)`` pairs.
    ``stats``: :class:`stfeat.suffstats.SuffStats` of the TRAINING chunks (for standardisation).
    """
    import torch

    from stfeat.heads._torch import cpu_threads, pearson_loss, resolve_device, seeded, torch_seed
    from stfeat.heads.mlp import _build_mlp

    device = resolve_device(head.device)
    seed = torch_seed(head.random_state)
    head.x_mean_, head.x_scale_, head.y_mean_, head.y_scale_ = _moments(stats)
    d, g = stats.n_features, stats.n_targets
    head.n_features_in_, head.n_outputs_, head._y_1d_ = d, g, False
    xm, xs = head.x_mean_.astype(np.float32), head.x_scale_.astype(np.float32)
    ym, ys = head.y_mean_.astype(np.float32), head.y_scale_.astype(np.float32)
    cw, bs = float(head.corr_weight), int(head.batch_size)

    def tensors(X, Y):
        X = torch.from_numpy(((np.asarray(X, np.float32) - xm) / xs).astype(np.float32))
        Y = torch.from_numpy(((np.asarray(Y, np.float32).reshape(len(X), -1) - ym) / ys).astype(np.float32))
        return X.to(device), Y.to(device)

    def loss_fn(pred, target):
        loss = torch.nn.functional.mse_loss(pred, target)
        return loss + cw * pearson_loss(pred, target) if cw > 0 else loss

    def evaluate(module) -> float:
        module.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for X, Y in chunks("valid"):
                Xt, Yt = tensors(X, Y)
                for i in range(0, len(Xt), 4096):
                    total += float(loss_fn(module(Xt[i:i + 4096]), Yt[i:i + 4096])) * len(Yt[i:i + 4096])
                    count += len(Yt[i:i + 4096])
        return total / max(count, 1)

    rng = np.random.default_rng(seed)
    work = bs * d * int(head.hidden)
    with seeded(seed, device), cpu_threads(head.n_jobs, work, device):
        module = _build_mlp(d, int(head.hidden), g, float(head.dropout), float(head.input_dropout)).to(device)
        opt = torch.optim.AdamW(module.parameters(), lr=head.lr, weight_decay=head.weight_decay)
        best = evaluate(module)
        history, best_state, best_epoch, bad = [best], copy.deepcopy(module.state_dict()), 0, 0
        for epoch in range(1, int(head.max_epochs) + 1):
            module.train()
            parts = list(chunks("train"))  # loaders (see fs_chunks) or (X, Y) pairs
            for j in rng.permutation(len(parts)):
                part = parts[j] if isinstance(parts[j], tuple) else parts[j]()
                Xt, Yt = tensors(*part)
                perm = torch.from_numpy(rng.permutation(len(Xt))).to(device)
                for i in range(0, len(Xt), bs):
                    idx = perm[i:i + bs]
                    if len(idx) < 2:
                        continue
                    loss = loss_fn(module(Xt[idx]), Yt[idx])
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
    head.module_ = module.cpu().eval()
    head.best_epoch_, head.history_ = best_epoch, history
    logger.info("mlp (chunks): best epoch %d, validation loss %.4f", best_epoch, best)
    return head


def fs_chunks(fs: Any, train_ids: list[str], valid_ids: list[str], genes: list[str], transform: str,
              chunk_rows: int = 16384) -> Chunks:
    """``chunks(part)`` over a FeatureSet: each training chunk is a loader called when it is visited, so
    only one chunk of features is in memory at a time."""

    def loader(sid: str, a: int):
        def load():
            sf = fs.samples[sid]
            b = min(a + chunk_rows, sf.n_spots)
            return sf.flat_rows(fs.scales, a, b, standardize=fs.standardize), fs.targets(sid, genes, transform)[a:b]
        return load

    def chunks(part: str):
        ids = train_ids if part == "train" else valid_ids
        for sid in ids:
            for a in range(0, fs.samples[sid].n_spots, chunk_rows):
                yield loader(sid, a) if part == "train" else loader(sid, a)()
    return chunks


def fit_mlp_featureset(head: Any, fs: Any, ids: list[str], genes: list[str], transform: str,
                       group_of: dict[str, str], *, chunk_rows: int = 16384) -> Any:
    """MLPHead on samples ``ids`` of a (lazy) FeatureSet; whole groups (patients, else sections) validate,
    chosen as ``inner_split`` chooses them (``validation_fraction`` of the groups, seeded)."""
    from stfeat.errors import InputError
    from stfeat.heads._torch import torch_seed
    from stfeat.suffstats import sample_stats

    labels = {s: str(group_of.get(s, s)) for s in ids}
    if len(set(labels.values())) < 2:
        labels = {s: s for s in ids}
    uniq = np.array(sorted(set(labels.values())))
    if len(uniq) < 2:
        raise InputError(None, "training an mlp from chunks needs 2 or more samples (whole samples validate).",
                         "give more samples, or load them in memory (lazy=False) for a split over spots.")
    rng = np.random.RandomState(torch_seed(head.random_state))
    n_val = max(1, int(round(float(head.validation_fraction) * len(uniq))))
    val = set(uniq[rng.permutation(len(uniq))[:n_val]])
    valid = [s for s in ids if labels[s] in val]
    train = [s for s in ids if labels[s] not in val]
    chunks = fs_chunks(fs, train, valid, genes, transform, chunk_rows)
    stats = sample_stats(load() for load in chunks("train"))
    return fit_mlp_chunks(head, chunks, stats)
