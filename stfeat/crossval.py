"""Cross-validation of one head on a FeatureSet, in memory: :func:`cross_validate` -> :class:`CVResult`.

The outer folds come from :func:`stfeat.evaluate.make_splits` (no patient on both sides). For every fold
the target genes are chosen on the training samples only (:func:`stfeat.targets.select_genes`), a fresh
estimator is fitted on the training spots and scored on the held-out spots with the metric of record
(:func:`stfeat.evaluate.gene_metrics`). Nothing is written to disk: :mod:`stfeat.report` does that.

>>> cv = st.cross_validate(feats, head="ridge", genes="hvg:50", split="lopo")   # doctest: +SKIP
>>> cv.summary(); cv.per_gene; cv.predictions["C3"]; cv.estimators["C"]          # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TRANSFORM_NOTE = ("log1p_cp10k = log1p(1e4 * counts / library size); the library size is the total "
                  "count over ALL genes of the spot, taken before the target genes are subset")
METRIC_NOTE = ("metric of record: Pearson r per gene over all test spots of a fold (pooled across the "
               "fold's held-out samples), averaged over genes; genes with constant measured or predicted "
               "values have r = NaN, are counted in n_nan_genes and left out of mean/median (nanmean)")


@dataclass
class CVResult:
    """Everything one head's cross-validation produced, in memory.

    Attributes
    ----------
    head, encoder
        Names of the head and of the features' encoder.
    plan
        The :class:`stfeat.evaluate.SplitPlan` (folds, grouping, notes).
    selections
        Fold name -> :class:`stfeat.targets.GeneSelection` (chosen on that fold's training samples).
    rows
        One dict per fold: the fold's summary metrics, r per held-out sample and the provenance.
    per_gene
        Per-gene r / MSE / MAE per fold (pandas DataFrame).
    estimators
        Fold name -> the estimator fitted on that fold's training samples.
    predictions
        Held-out sample id -> AnnData (``X`` = predicted, ``layers["measured"]``, ``obsm["spatial"]``).
    """

    head: str
    encoder: str
    params: dict
    plan: Any
    selections: dict
    rows: list[dict]
    per_gene: Any
    estimators: dict = field(default_factory=dict)
    predictions: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    items: list = field(default_factory=list, repr=False)  # (fold, sample id, P, genes) in fold order
    layout: dict = field(default_factory=dict)
    samples: dict = field(default_factory=dict, repr=False)  # sample id -> stfeat.io.Sample (thumbnails)

    @property
    def tag(self) -> str:
        return f"{self.encoder}__{self.head}".replace("/", "-").replace(":", "-")

    @property
    def mean_r(self) -> float:
        """Mean over folds of the metric of record (NaN-excluding)."""
        r = np.array([row["mean_r"] for row in self.rows], float)
        return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")

    @property
    def r_per_sample(self) -> dict[str, float]:
        """Mean r over genes for each held-out sample."""
        return {t: row[f"r_{t}"] for row in self.rows for t in row["test_samples"].split(";")}

    def summary(self):
        """One row per fold (mean r, median r, MSE, MAE, top-k summaries, test/train samples) + a mean row."""
        import pandas as pd

        cols = ["fold", "test_samples", "train_samples", "n_test_spots", "mean_r", "median_r", "n_genes",
                "n_nan_genes", "mse", "mae"]
        df = pd.DataFrame(self.rows)
        extra = [c for c in df.columns if c.startswith("mean_r_top")]
        df = df[[c for c in cols + extra if c in df.columns]]
        mean = {"fold": "mean", "test_samples": "all", "train_samples": "",
                **df.select_dtypes("number").mean(numeric_only=True).to_dict()}
        mean["mean_r"] = self.mean_r
        out = pd.concat([df, pd.DataFrame([mean])], ignore_index=True)
        out.insert(0, "head", self.head)
        out.insert(0, "encoder", self.encoder)
        return out

    def __repr__(self) -> str:
        folds = ", ".join(f"{row['fold']}: {row['mean_r']:.3f}" for row in self.rows)
        return (f"CVResult(head={self.head!r}, encoder={self.encoder!r}, split={self.plan.mode}, "
                f"mean_r={self.mean_r:.4f} [{folds}])")


def cross_validate(features: Any, *, head: Any = "ridge", genes: str = "hvg:50", transform: str = "log1p_cp10k",
                   split: str = "auto", head_params: dict | None = None, k_neighbors: int = 8,
                   neighbor_mean: bool = False, neighbor_scale: float | str | None = None, seed: int = 0,
                   metric_top_k: int = 10, suffstats: bool | None = None) -> CVResult:
    """Evaluate one head on ``features`` with leakage-proof outer folds.

    Parameters
    ----------
    features
        A :class:`stfeat.features.FeatureSet` with counts (from :func:`stfeat.extraction.extract` or
        :meth:`FeatureSet.load`).
    head
        An estimator object (e.g. ``st.heads.RidgeCV()``) or a registry name (``"ridge"``, ``"hest-ridge"``, ...).
    genes
        Gene rule (``hvg:K``, ``hex:K``, ``file:PATH``, ``common``), applied per fold to training data only.
    transform
        Target transform (see :mod:`stfeat.targets`).
    split
        ``auto``, ``lopo``, ``group-kfold:K`` or ``loso`` (see :func:`stfeat.evaluate.make_splits`).
    head_params
        Parameters set on the head (for a name: its keyword arguments).
    k_neighbors, neighbor_mean, neighbor_scale
        Neighbour tokens per spot (token heads), the neighbours' mean appended to flat heads' X, and the
        scale of neighbour tokens (default the smallest).
    seed
        ``random_state`` of named heads that take one.
    metric_top_k
        k of the extra summaries over the top-k most variable / most expressed target genes.
    suffstats
        Fit the ``ridge`` head from per-sample sufficient statistics (:mod:`stfeat.suffstats`; one
        streaming pass per sample, cached beside the feature caches) and predict in row chunks: True,
        False, or None = when the features are read lazily (large samples). Same results either way.
        On lazy features the ``mlp`` head trains from row chunks (:mod:`stfeat.heads._mlp_chunks`).
    """
    from stfeat import __version__
    from stfeat.estimators import fit_estimator, head_name, layout_for, make_estimator, model_inputs, predict_estimator
    from stfeat.evaluate import gene_metrics, inner_groups, make_splits, summarize
    from stfeat.targets import GeneRule, check_transform, select_genes

    fs = features
    rule = GeneRule.parse(genes)
    check_transform(transform)
    ids = fs.sample_ids
    plan = make_splits(ids, [fs.samples[s].patient for s in ids], split)
    if fs.group_kind != plan.group_kind:  # both derive from the same patient ids
        raise AssertionError("FeatureSet and split disagree on the grouping")
    selections = {f.name: select_genes([fs.expression(t) for t in f.train], rule) for f in plan.folds}
    hname = head_name(head)
    enc = fs.provenance["encoder"]
    probe = make_estimator(head, head_params, seed)
    layout = layout_for(probe, fs, k_neighbors=k_neighbors, neighbor_mean=neighbor_mean, neighbor_scale=neighbor_scale)
    params_json = json.dumps(probe.get_params(), sort_keys=True, default=str)
    split_str = f"{plan.mode} over {'sections' if plan.mode == 'loso' else plan.group_kind + 's'}"
    prov = {**fs.provenance, "head": hname, "head_params": params_json, "gene_rule": str(rule),
            "transform": transform, "split": split_str, "stfeat_version": __version__}
    from stfeat import suffstats_cache as ssc

    by_stats = ssc.use_suffstats(probe, fs, layout, suffstats)
    if by_stats:  # one pass per sample for the union of the folds' genes; a fold takes its columns
        union = list(dict.fromkeys(g for f in plan.folds for g in selections[f.name].genes))
        col_of = {g: i for i, g in enumerate(union)}
        stats = ssc.featureset_stats(fs, ids, union, transform, layout)
    rows, gene_rows, items, estimators = [], [], [], {}
    for fold in plan.folds:
        sel = selections[fold.name]
        est = make_estimator(head, head_params, seed)
        if by_stats:
            log.info("%s | %s | fold %s: training on %s from sufficient statistics (%d genes)", enc, hname,
                     fold.name, fold.train, len(sel.genes))
            ssc.fit_ridge(est, {t: stats[t] for t in fold.train}, plan.groups, [col_of[g] for g in sel.genes])
            P = ssc.predict_chunks(est, fs, fold.test, layout)
        elif ssc.use_mlp_chunks(est, fs, layout):
            from stfeat.heads._mlp_chunks import fit_mlp_featureset

            fit_mlp_featureset(est, fs, list(fold.train), list(sel.genes), transform, plan.groups)
            P = ssc.predict_chunks(est, fs, fold.test, layout)
        else:
            Ytr = np.concatenate([fs.targets(t, sel.genes, transform) for t in fold.train])
            groups = inner_groups(fs.spot_samples(fold.train), plan.groups)
            log.info("%s | %s | fold %s: training on %s (%d spots, %d genes)", enc, hname, fold.name, fold.train,
                     len(Ytr), len(sel.genes))
            fit_estimator(est, model_inputs(fs, fold.train, layout), Ytr, groups)
            P = predict_estimator(est, model_inputs(fs, fold.test, layout))
        estimators[fold.name] = est
        Yte = np.concatenate([fs.targets(t, sel.genes, transform) for t in fold.test])
        if P.shape != Yte.shape:
            raise RuntimeError(f"head {hname} predicted shape {P.shape}, expected {Yte.shape}")
        table = gene_metrics(Yte, P, sel.genes)
        k_hvg, k_hex = sel.top_k(metric_top_k, "hvg"), sel.top_k(metric_top_k, "hex")
        summ = summarize(table, top_hvg=k_hvg, top_hex=k_hex)
        start, per_sample = 0, {}
        for t in fold.test:
            n = fs.samples[t].n_spots
            per_sample[t] = summarize(gene_metrics(Yte[start:start + n], P[start:start + n], sel.genes))["mean_r"]
            items.append((fold.name, t, P[start:start + n], list(sel.genes)))
            start += n
        rows.append({"encoder": enc, "head": hname, "fold": fold.name, "test_samples": ";".join(fold.test),
                     "train_samples": ";".join(fold.train), "n_test_spots": len(Yte), **summ,
                     **{f"r_{t}": v for t, v in per_sample.items()}, **prov, "genes": ";".join(sel.genes)})
        tdf = table.reset_index()
        for col, val in (("fold", fold.name), ("head", hname), ("encoder", enc)):
            tdf.insert(0, col, val)
        tdf["in_top_hvg"] = tdf["gene"].isin(k_hvg)
        tdf["in_top_hex"] = tdf["gene"].isin(k_hex)
        for key in ("gene_rule", "transform", "split", "stfeat_version", "scales_um", "head_params"):
            tdf[key] = prov[key]
        gene_rows.append(tdf)
    import pandas as pd

    cv = CVResult(head=hname, encoder=enc, params=json.loads(params_json), plan=plan, selections=selections,
                  rows=rows, per_gene=pd.concat(gene_rows, ignore_index=True), estimators=estimators,
                  provenance=prov, items=items, layout=layout,
                  samples={s: fs.samples[s].sample for s in ids if fs.samples[s].sample is not None})
    cv.predictions = {sid: prediction_adata(fs, sid, P, g, transform, fold=fname, prov=prov)
                      for fname, sid, P, g in items}
    log.info("%s", cv)
    return cv


def prediction_adata(fs: Any, sid: str, P: np.ndarray, genes: list[str], transform: str, *, fold: str = "",
                     prov: dict | None = None):
    """AnnData of one sample's predictions: X = predicted, layers measured/predicted, obsm["spatial"] (px)."""
    import anndata as ad
    import pandas as pd

    sf = fs.samples[sid]
    obs = pd.DataFrame({"sample": sid, "patient": sf.patient or "", "fold": fold},
                       index=pd.Index(np.asarray(sf.barcodes).astype(str), name="barcode"))
    a = ad.AnnData(X=np.asarray(P, np.float32), obs=obs, var=pd.DataFrame(index=pd.Index(list(genes), name="gene")))
    a.layers["predicted"] = a.X
    a.layers["measured"] = fs.targets(sid, genes, transform)
    a.obsm["spatial"] = np.asarray(sf.coords_px, np.float64)
    a.uns["stfeat"] = {k: str(v) for k, v in (prov or {}).items()}
    return a
