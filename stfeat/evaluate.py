"""Leakage-proof splits and the metrics of record.

Splits are made over whole samples (sections), grouped by patient so that no patient is ever in both
train and test:

* ``lopo``: leave one patient out.
* ``group-kfold:K``: K folds over patients (sklearn ``GroupKFold``).
* ``loso``: leave one section out. Allowed only when sections cannot leak a patient: when there are
  no patient ids, or when all sections come from one single patient (then it is the only possible
  split and every output says loudly that it does NOT test generalisation across patients).
* ``block`` / ``block:K``: spatially blocked folds WITHIN sections (:mod:`stfeat.blocks`): K contiguous
  blocks of spots (default 5), training spots within a buffer of the test block dropped. It does NOT
  measure generalisation to new patients, and every output says so.
* ``auto``: ``lopo`` with two or more patients; ``loso`` otherwise (with the warnings above); ``block``
  with a single sample.

Without patient ids the groups are the sections (sample ids), and that is logged and recorded.

Metric of record (HEST-Benchmark's): Pearson r per gene over all test spots of a fold (pooled across
the fold's samples), averaged over genes. Genes whose measured or predicted values are constant over
the test spots have no correlation; their r is NaN, they are counted (``n_nan_genes``) and left out
of the mean and median (``nanmean``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from stfeat.errors import InputError

log = logging.getLogger(__name__)

SPLIT_MODES = ("auto", "lopo", "group-kfold", "loso", "block")


class LeakageError(AssertionError):
    """A split put one group (patient, or section without patient ids) in both train and test."""


@dataclass
class Fold:
    """One outer fold: sample ids to train on and to test on.

    ``train_masks`` / ``test_masks`` (spot-level folds, split ``block``): sample id -> boolean mask over
    the sample's spots; a sample without a mask uses all its spots.
    """

    name: str
    train: list[str]
    test: list[str]
    train_masks: dict | None = None
    test_masks: dict | None = None

    def spots(self, side: str, sample_id: str, n: int) -> np.ndarray:
        """Boolean mask of the spots of ``sample_id`` on ``side`` ("train" or "test")."""
        masks = self.train_masks if side == "train" else self.test_masks
        if masks is None or sample_id not in masks:
            return np.ones(n, bool)
        return np.asarray(masks[sample_id], bool)


@dataclass
class SplitPlan:
    """Folds plus what they mean, recorded next to every metric."""

    mode: str  # the resolved mode: lopo, group-kfold:K, loso
    requested: str
    group_kind: str  # "patient" or "section"
    folds: list[Fold]
    groups: dict[str, str]  # sample id -> group used by the split
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "requested": self.requested,
            "group_kind": self.group_kind,
            "groups": dict(self.groups),
            "folds": [{"name": f.name, "train": f.train, "test": f.test,
                       **({"n_train_spots": {k: int(v.sum()) for k, v in f.train_masks.items()},
                           "n_test_spots": {k: int(v.sum()) for k, v in f.test_masks.items()}}
                          if f.test_masks is not None else {})} for f in self.folds],
            "notes": list(self.notes),
        }


def assert_disjoint(folds: Sequence[Fold], groups: dict[str, str]) -> None:
    """Raise :class:`LeakageError` if any fold has a group on both sides, or a sample twice."""
    for f in folds:
        if set(f.train) & set(f.test):
            raise LeakageError(f"fold {f.name}: samples {sorted(set(f.train) & set(f.test))} in train and test")
        g_train = {groups[s] for s in f.train}
        g_test = {groups[s] for s in f.test}
        both = g_train & g_test
        if both:
            raise LeakageError(f"fold {f.name}: groups {sorted(both)} are in both train and test")
        if not f.train or not f.test:
            raise LeakageError(f"fold {f.name} has an empty train or test side")


def parse_split(split: str) -> tuple[str, int | None]:
    """(mode, k) of a split spec; InputError naming the valid forms."""
    mode, _, arg = str(split).strip().lower().partition(":")
    if mode not in SPLIT_MODES:
        raise InputError(None, f"unknown split {split!r}.", "choose auto, lopo, group-kfold:K, loso or block:K.")
    if mode in ("group-kfold", "block"):
        try:
            k = int(arg or 5)
        except ValueError:
            raise InputError(None, f"split {split!r}: the fold count must be an integer.", f"write e.g. {mode}:5.") from None
        if k < 2:
            raise InputError(None, f"split {split!r}: {mode} needs at least 2 folds.", f"write e.g. {mode}:5.")
        return mode, k
    if arg:
        raise InputError(None, f"split {split!r}: {mode} takes no argument.", f"write {mode}.")
    return mode, None


def make_splits(sample_ids: Sequence[str], patients: Sequence[str | None], split: str = "auto", *,
                coords_um: dict | None = None, seed: int = 0) -> SplitPlan:
    """Outer folds over samples that never put one patient in both train and test.

    Parameters
    ----------
    sample_ids
        Sample (section) ids, unique.
    patients
        Patient id per sample, ``None`` where unknown.
    split
        ``auto``, ``lopo``, ``group-kfold:K``, ``loso`` or ``block[:K]``.
    coords_um
        Sample id -> spot coordinates (um); needed by ``block`` (and by ``auto`` with one sample).
    seed
        Seed of the k-means blocks.

    Returns
    -------
    SplitPlan
        Folds, the grouping used and human-readable notes (also logged as warnings).
    """
    sample_ids = [str(s) for s in sample_ids]
    if len(set(sample_ids)) != len(sample_ids):
        raise InputError(None, f"duplicated sample ids: {sorted({s for s in sample_ids if sample_ids.count(s) > 1})}.",
                         "give every sample (section) its own id.")
    mode, k = parse_split(split)
    if mode == "block" or (mode == "auto" and len(sample_ids) == 1):
        return block_plan(sample_ids, patients, k or 5, str(split), coords_um, seed)
    if len(sample_ids) < 2:
        raise InputError(None, "evaluation across sections needs at least two samples (one to train on, one to "
                         "test on).", "give two or more samples, or use split block:K (within-section, "
                         "spatially blocked; it does not measure generalisation to new patients).")
    known = [p for p in patients if p not in (None, "")]
    notes: list[str] = []
    if known and len(known) < len(sample_ids):
        unknown = [s for s, p in zip(sample_ids, patients) if p in (None, "")]
        # A sample without a patient id becomes its own patient group; say so, it could hide a leak.
        notes.append(f"samples {unknown} have no patient id; each is treated as its own patient")
    if known:
        group_kind = "patient"
        groups = {s: (str(p) if p not in (None, "") else f"?{s}") for s, p in zip(sample_ids, patients)}
    else:
        group_kind = "section"
        groups = {s: s for s in sample_ids}
        notes.append("no patient ids: the split groups are sections (sample ids); sections of one patient "
                     "may end up in train and test, so give patient ids (manifest column 'patient') if known")
    n_groups = len(set(groups.values()))
    single_patient = group_kind == "patient" and n_groups == 1

    if mode == "auto":
        mode = "loso" if (single_patient or group_kind == "section") else "lopo"
    if mode == "loso":
        if group_kind == "patient" and not single_patient:
            raise InputError(
                None, f"split 'loso' would put sections of one patient in both train and test ({n_groups} patients "
                f"over {len(sample_ids)} sections).", "use split lopo or group-kfold:K.")
        if single_patient:
            pid = next(iter(groups.values()))
            notes.append(f"all {len(sample_ids)} sections come from one patient: {pid}; leave-one-section-out, "
                         "which does NOT test generalisation across patients")
        folds = [Fold(s, [t for t in sample_ids if t != s], [s]) for s in sample_ids]
        # a single-patient LOSO split is grouped by section: that is the only grouping left
        split_groups = {s: s for s in sample_ids}
        resolved = "loso"
    elif mode == "lopo":
        if n_groups < 2:
            raise InputError(None, f"leave-one-patient-out needs at least two patients; all samples are patient "
                             f"{next(iter(groups.values()))}.", "use split loso (leave one section out).")
        folds = []
        for g in sorted(set(groups.values()), key=lambda x: [groups[s] for s in sample_ids].index(x)):
            test = [s for s in sample_ids if groups[s] == g]
            folds.append(Fold(g if group_kind == "patient" else test[0], [s for s in sample_ids if groups[s] != g], test))
        split_groups = groups
        resolved = "lopo"
    else:  # group-kfold
        from sklearn.model_selection import GroupKFold

        if n_groups < k:
            raise InputError(None, f"group-kfold:{k} needs at least {k} {group_kind}s, there are {n_groups}.",
                             "use fewer folds or split lopo.")
        gk = GroupKFold(n_splits=k)
        idx = np.arange(len(sample_ids))
        folds = []
        for i, (tr, te) in enumerate(gk.split(idx, groups=[groups[s] for s in sample_ids])):
            folds.append(Fold(f"fold{i}", [sample_ids[j] for j in tr], [sample_ids[j] for j in te]))
        split_groups = groups
        resolved = f"group-kfold:{k}"
    # The guarantee, checked on every plan: no patient (or section) on both sides of any fold.
    assert_disjoint(folds, split_groups)
    if not single_patient:
        assert_disjoint(folds, groups)
    for n in notes:
        log.warning(n)
    log.info("split %s over %d %ss: %d folds", resolved, n_groups, group_kind, len(folds))
    return SplitPlan(mode=resolved, requested=str(split), group_kind=group_kind, folds=folds, groups=groups,
                     notes=notes)


def block_plan(sample_ids: list[str], patients: Sequence[str | None], k: int, requested: str,
               coords_um: dict | None, seed: int = 0) -> SplitPlan:
    """Spatially blocked folds within every section (see :mod:`stfeat.blocks`); fold i tests block i of
    every section and trains on the other spots outside the buffer."""
    from stfeat.blocks import WITHIN_SECTION_NOTE, block_masks, check_buffer

    if coords_um is None or any(s not in coords_um for s in sample_ids):
        raise InputError(None, "split block needs the spot coordinates of every sample.",
                         "call make_splits(..., coords_um={sample id: coordinates in um}).")
    per, buffers = {}, {}
    for s in sample_ids:
        per[s], buffers[s] = block_masks(coords_um[s], k, seed)
    folds = []
    for b in range(k):
        tr = {s: per[s][b][0] for s in sample_ids}
        te = {s: per[s][b][1] for s in sample_ids}
        for s in sample_ids:
            check_buffer(coords_um[s], tr[s], te[s], buffers[s])
        if not any(m.any() for m in tr.values()):
            raise InputError(None, f"block {b}: the buffer leaves no training spot.", "use more blocks (block:K).")
        folds.append(Fold(f"block{b}", [s for s in sample_ids if tr[s].any()], [s for s in sample_ids if te[s].any()],
                          train_masks=tr, test_masks=te))
    buf = ", ".join(f"{s}: {v:.0f} um" for s, v in buffers.items())
    notes = [WITHIN_SECTION_NOTE,
             f"block:{k}: {k} contiguous k-means blocks of spots per section; training spots within the buffer "
             f"(1.5 x spot pitch; {buf}) of a test spot are left out of that fold's training"]
    if requested.strip().lower() == "auto":
        notes.insert(0, "split auto with a single sample: spatially blocked folds within the section")
    for n in notes:
        log.warning(n)
    groups = {s: (str(p) if p not in (None, "") else s) for s, p in zip(sample_ids, patients)}
    known = any(p not in (None, "") for p in patients)
    return SplitPlan(mode=f"block:{k}", requested=requested, group_kind="patient" if known else "section",
                     folds=folds, groups=groups, notes=notes)


def inner_groups(sample_of_spot: np.ndarray, groups: dict[str, str]) -> np.ndarray:
    """Per-spot groups for inner (early-stopping) validation: patients when there are two or more in
    training, else sections."""
    per_spot = np.array([groups[s] for s in sample_of_spot], dtype=object)
    if len(set(per_spot)) >= 2:
        return per_spot
    return np.asarray(sample_of_spot, dtype=object)


# ----------------------------------------------------------------------------------------- metrics


def pearson_per_gene(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson r of each column between measured and predicted values; NaN where either is constant."""
    a = np.asarray(y_true, dtype=np.float64)
    b = np.asarray(y_pred, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"y_true {a.shape} and y_pred {b.shape} must be equal-shaped 2-D arrays")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    sa = np.sqrt((a * a).sum(axis=0))
    sb = np.sqrt((b * b).sum(axis=0))
    num = (a * b).sum(axis=0)
    den = sa * sb
    # "constant" relative to the data's magnitude, so float32 round-off of a constant is still constant
    tol_a = 1e-10 * np.maximum(1.0, np.abs(np.asarray(y_true, dtype=np.float64)).max(axis=0, initial=0)) * np.sqrt(len(a))
    tol_b = 1e-10 * np.maximum(1.0, np.abs(np.asarray(y_pred, dtype=np.float64)).max(axis=0, initial=0)) * np.sqrt(len(b))
    ok = (sa > tol_a) & (sb > tol_b)
    r = np.full(a.shape[1], np.nan)
    r[ok] = np.clip(num[ok] / den[ok], -1.0, 1.0)
    return r


def gene_metrics(y_true: np.ndarray, y_pred: np.ndarray, genes: Sequence[str]):
    """Per-gene table: pearson_r, mse, mae, measured mean/variance (pandas DataFrame indexed by gene)."""
    import pandas as pd

    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    err = y_pred - y_true
    return pd.DataFrame(
        {
            "pearson_r": pearson_per_gene(y_true, y_pred),
            "mse": (err**2).mean(axis=0),
            "mae": np.abs(err).mean(axis=0),
            "measured_mean": y_true.mean(axis=0),
            "measured_var": y_true.var(axis=0),
            "predicted_var": y_pred.var(axis=0),
        },
        index=pd.Index(list(genes), name="gene"),
    )


def summarize(table, *, top_hvg: Sequence[str] = (), top_hex: Sequence[str] = ()) -> dict:
    """Summary numbers of a per-gene table.

    Returns mean_r (metric of record, NaN-excluding mean over genes), median_r, n_genes, n_nan_genes,
    mse, mae (averaged over genes and spots), and mean_r over the given top-HVG and top-HEX gene lists.
    """
    r = table["pearson_r"].to_numpy()
    n_nan = int(np.isnan(r).sum())
    finite = r[~np.isnan(r)]
    out = {
        "mean_r": float(finite.mean()) if finite.size else float("nan"),
        "median_r": float(np.median(finite)) if finite.size else float("nan"),
        "n_genes": int(len(r)),
        "n_nan_genes": n_nan,
        "mse": float(table["mse"].mean()),
        "mae": float(table["mae"].mean()),
    }
    for key, genes in (("hvg", top_hvg), ("hex", top_hex)):
        genes = [g for g in genes if g in table.index]
        if genes:
            rr = table.loc[genes, "pearson_r"].to_numpy()
            out[f"mean_r_top{len(genes)}_{key}"] = float(np.nanmean(rr)) if (~np.isnan(rr)).any() else float("nan")
    if n_nan:
        log.warning("%d of %d genes have constant measured or predicted values: r undefined (NaN), "
                    "left out of mean and median", n_nan, len(r))
    return out
