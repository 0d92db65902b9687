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
        Held-out sample id -> AnnData (``X`` = predicted, ``layers["measured"]``, ``layers["lower"]`` /
        ``["upper"]`` with conformal intervals, ``obsm["spatial"]``).
    predictability
        Per gene: held-out r per fold, mean, bootstrap interval, ``predictable`` (ci_low > 0).
    domains
        Per held-out sample: ARI/NMI of k-means clusters of predicted vs measured expression, and vs
        region labels when the sample has them.
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
    #: per-gene predictability (:mod:`stfeat.predictability`) and spatial-domain agreement (:mod:`stfeat.domains`)
    predictability: Any = None
    domains: Any = None
    #: held-out sample id -> (lower, upper) conformal intervals, aligned with ``items`` (empty when off)
    intervals: dict = field(default_factory=dict, repr=False)

    @property
    def tag(self) -> str:
        return f"{self.encoder}__{self.head}".replace("/", "-").replace(":", "-")

    @property
    def mean_r(self) -> float:
        """Mean over folds of the metric of record (NaN-excluding)."""
        r = np.array([row["mean_r"] for row in self.rows], float)
        return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")

    @property
    def n_predictable(self) -> int:
        """Genes whose bootstrap interval of held-out r lies above 0."""
        return 0 if self.predictability is None else int(self.predictability["predictable"].sum())

    @property
    def coverage(self) -> float:
        """Empirical coverage of the conformal intervals on the outer test spots (mean over folds)."""
        c = [row["conformal_coverage"] for row in self.rows if "conformal_coverage" in row]
        return float(np.mean(c)) if c else float("nan")

    @property
    def r_per_sample(self) -> dict[str, float]:
        """Mean r over genes for each held-out sample (averaged over the folds that test some of its spots,
        for blocked splits)."""
        vals: dict[str, list] = {}
        for row in self.rows:
            for t in row["test_samples"].split(";"):
                vals.setdefault(t, []).append(row[f"r_{t}"])
        return {t: (float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")) for t, v in vals.items()}

    def summary(self):
        """One row per fold (mean r, median r, MSE, MAE, top-k summaries, test/train samples) + a mean row."""
        import pandas as pd

        cols = ["fold", "test_samples", "train_samples", "n_test_spots", "n_train_spots", "mean_r", "median_r",
                "n_genes", "n_nan_genes", "mse", "mae", "conformal_nominal", "conformal_coverage", "conformal_width"]
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
                   metric_top_k: int = 10, standardize: str | None = None, conformal: float | None = 0.9,
                   n_boot: int = 200, suffstats: bool | None = None) -> CVResult:
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
        ``auto``, ``lopo``, ``group-kfold:K``, ``loso`` or ``block[:K]`` (within-section spatial blocks; see
        :func:`stfeat.evaluate.make_splits`). ``auto`` with a single sample is ``block``.
    head_params
        Parameters set on the head (for a name: its keyword arguments).
    k_neighbors, neighbor_mean, neighbor_scale
        Neighbour tokens per spot (token heads), the neighbours' mean appended to flat heads' X, and the
        scale of neighbour tokens (default the smallest).
    seed
        ``random_state`` of named heads that take one; seed of blocks, bootstrap and clusters.
    metric_top_k
        k of the extra summaries over the top-k most variable / most expressed target genes.
    standardize
        Per-slide feature standardisation, ``"none"`` or ``"slide"`` (each sample centred and scaled with its
        own statistics, see :mod:`stfeat.features`); ``None`` = the FeatureSet's own ``standardize``.
    conformal
        Nominal coverage of split-conformal per-spot intervals (:mod:`stfeat.uncertainty`; refits the head
        on 3 inner folds per outer fold); ``None`` or 0 = off.
    n_boot
        Bootstrap resamples of the per-gene predictability intervals (:mod:`stfeat.predictability`).
    suffstats
        Fit the ``ridge`` head from per-sample sufficient statistics (:mod:`stfeat.suffstats`; one
        streaming pass per sample, cached beside the feature caches) and predict in row chunks: True,
        False, or None = when the features are read lazily (large samples). Same results either way.
        On lazy features the ``mlp`` and ``knn`` heads train from row chunks (:mod:`stfeat.heads._mlp_chunks`,
        :mod:`stfeat.heads._knn_chunks`), and so does ``attention`` (:mod:`stfeat.heads._attn_chunks`, token chunks).
    """
    from stfeat import __version__
    from stfeat.domains import domain_agreement
    from stfeat.estimators import fit_estimator, head_name, layout_for, make_estimator, model_inputs, predict_estimator
    from stfeat.evaluate import gene_metrics, inner_groups, make_splits, summarize
    from stfeat.predictability import predictability
    from stfeat.targets import GeneRule, check_transform, select_genes
    from stfeat.uncertainty import CONFORMAL_NOTE, N_INNER, calibrate, check_coverage, coverage_of, take_rows

    fs = features if standardize is None else features.with_standardize(standardize)
    rule = GeneRule.parse(genes)
    check_transform(transform)
    coverage = check_coverage(conformal)
    ids = fs.sample_ids
    plan = make_splits(ids, [fs.samples[s].patient for s in ids], split,
                       coords_um={s: fs.samples[s].coords_um for s in ids}, seed=seed)
    if fs.group_kind != plan.group_kind:  # both derive from the same patient ids
        raise AssertionError("FeatureSet and split disagree on the grouping")

    def masked(fold, side, sids):
        return {t: fold.spots(side, t, fs.samples[t].n_spots) for t in sids}

    def expr(fold, t):  # training spots only: a blocked fold must not choose genes on its test block
        m = fold.spots("train", t, fs.samples[t].n_spots)
        return fs.expression(t) if m.all() else subset_expression(fs.expression(t), m)

    selections = {f.name: select_genes([expr(f, t) for t in f.train], rule) for f in plan.folds}
    hname = head_name(head)
    enc = fs.provenance["encoder"]
    probe = make_estimator(head, head_params, seed)
    layout = layout_for(probe, fs, k_neighbors=k_neighbors, neighbor_mean=neighbor_mean, neighbor_scale=neighbor_scale)
    params_json = json.dumps(probe.get_params(), sort_keys=True, default=str)
    over = "sections" if plan.mode == "loso" else ("spots within sections" if plan.mode.startswith("block")
                                                    else plan.group_kind + "s")
    split_str = f"{plan.mode} over {over}"
    prov = {**fs.provenance, "head": hname, "head_params": params_json, "gene_rule": str(rule),
            "transform": transform, "split": split_str, "stfeat_version": __version__}
    from stfeat import suffstats_cache as ssc
    from stfeat.errors import InputError
    from stfeat.heads._attn_chunks import use_attention_chunks
    from stfeat.heads._knn_chunks import use_knn_chunks

    spot_folds = any(getattr(f, "train_masks", None) or getattr(f, "test_masks", None) for f in plan.folds)
    by_stats = ssc.use_suffstats(probe, fs, layout, suffstats)
    if by_stats and spot_folds:
        if suffstats:
            raise InputError(None, f"suffstats=True works on whole-sample folds, not with split {plan.mode!r}.",
                             "use suffstats=None, or a sample-level split (lopo, loso, kfold).")
        by_stats = False
    chunked_mlp = not spot_folds
    if by_stats:  # one pass per sample for the union of the folds' genes; a fold takes its columns
        union = list(dict.fromkeys(g for f in plan.folds for g in selections[f.name].genes))
        col_of = {g: i for i, g in enumerate(union)}
        stats = ssc.featureset_stats(fs, ids, union, transform, layout)
    rows, gene_rows, pieces, estimators, boot_pieces = [], [], {}, {}, []
    for fold in plan.folds:
        sel = selections[fold.name]
        tr_m, te_m = masked(fold, "train", fold.train), masked(fold, "test", fold.test)
        tr_rows, te_rows = np.concatenate(list(tr_m.values())), np.concatenate(list(te_m.values()))
        est = make_estimator(head, head_params, seed)
        Xtr = Ytr = groups = sample_tr = None  # in memory only on the plain path (conformal needs them)
        if by_stats:
            log.info("%s | %s | fold %s: training on %s from sufficient statistics (%d genes)", enc, hname,
                     fold.name, fold.train, len(sel.genes))
            ssc.fit_ridge(est, {t: stats[t] for t in fold.train}, plan.groups, [col_of[g] for g in sel.genes])
            P = ssc.predict_chunks(est, fs, fold.test, layout)
        elif chunked_mlp and ssc.use_mlp_chunks(est, fs, layout):
            from stfeat.heads._mlp_chunks import fit_mlp_featureset

            fit_mlp_featureset(est, fs, list(fold.train), list(sel.genes), transform, plan.groups)
            P = ssc.predict_chunks(est, fs, fold.test, layout)
        elif chunked_mlp and use_knn_chunks(est, fs, layout):
            from stfeat.heads._knn_chunks import fit_knn_featureset

            fit_knn_featureset(est, fs, list(fold.train), list(sel.genes), transform)
            P = ssc.predict_chunks(est, fs, fold.test, layout)
        elif chunked_mlp and use_attention_chunks(est, fs, layout):
            from stfeat.heads._attn_chunks import fit_attention_featureset

            fit_attention_featureset(est, fs, list(fold.train), list(sel.genes), transform, plan.groups,
                                     k=int(layout["k_neighbors"]), neighbor_scale=layout.get("neighbor_scale"))
            P = ssc.predict_chunks(est, fs, fold.test, layout)
        else:
            Ytr = np.concatenate([fs.targets(t, sel.genes, transform)[tr_m[t]] for t in fold.train])
            sample_tr = fs.spot_samples(fold.train)[tr_rows]
            groups = inner_groups(sample_tr, plan.groups)
            log.info("%s | %s | fold %s: training on %s (%d spots, %d genes)", enc, hname, fold.name, fold.train,
                     len(Ytr), len(sel.genes))
            Xtr = take_rows(model_inputs(fs, fold.train, layout), tr_rows)
            fit_estimator(est, Xtr, Ytr, groups)
            P = predict_estimator(est, take_rows(model_inputs(fs, fold.test, layout), te_rows))
        estimators[fold.name] = est
        Yte = np.concatenate([fs.targets(t, sel.genes, transform)[te_m[t]] for t in fold.test])
        if P.shape != Yte.shape:
            raise RuntimeError(f"head {hname} predicted shape {P.shape}, expected {Yte.shape}")
        table = gene_metrics(Yte, P, sel.genes)
        conf = {}
        q = None
        if coverage is not None and Xtr is None:  # a chunked fit: the inner refits would read everything
            conf = {"conformal_nominal": coverage, "conformal_inner": "skipped (chunked fit of large samples)"}
        elif coverage is not None:
            coords_tr = np.concatenate([fs.samples[t].coords_um[tr_m[t]] for t in fold.train])
            q, how = calibrate(lambda: make_estimator(head, head_params, seed), fit_estimator, predict_estimator,
                               Xtr, Ytr, groups, sample_tr, coords_tr, coverage, n_inner=N_INNER, seed=seed)
            cov_g = coverage_of(Yte, P, q)
            table["coverage"] = cov_g
            table["interval_width"] = 2 * q
            conf = {"conformal_nominal": coverage, "conformal_coverage": float(np.mean(cov_g)),
                    "conformal_width": float(np.mean(2 * q)), "conformal_inner": how}
        boot_pieces.append((fold.name, list(sel.genes), Yte, P))
        k_hvg, k_hex = sel.top_k(metric_top_k, "hvg"), sel.top_k(metric_top_k, "hex")
        summ = summarize(table, top_hvg=k_hvg, top_hex=k_hex)
        start, per_sample = 0, {}
        for t in fold.test:
            n = int(te_m[t].sum())
            per_sample[t] = summarize(gene_metrics(Yte[start:start + n], P[start:start + n], sel.genes))["mean_r"]
            pieces.setdefault(t, []).append((fold.name, np.flatnonzero(te_m[t]), P[start:start + n], list(sel.genes),
                                             None if q is None else q))
            start += n
        rows.append({"encoder": enc, "head": hname, "fold": fold.name, "test_samples": ";".join(fold.test),
                     "train_samples": ";".join(fold.train), "n_test_spots": len(Yte), "n_train_spots": int(tr_rows.sum()),
                     **summ, **conf, **{f"r_{t}": v for t, v in per_sample.items()}, **head_diagnostics(est), **prov,
                     "genes": ";".join(sel.genes)})
        tdf = table.reset_index()
        for col, val in (("fold", fold.name), ("head", hname), ("encoder", enc)):
            tdf.insert(0, col, val)
        tdf["in_top_hvg"] = tdf["gene"].isin(k_hvg)
        tdf["in_top_hex"] = tdf["gene"].isin(k_hex)
        for key in ("gene_rule", "transform", "split", "stfeat_version", "scales_um", "head_params"):
            tdf[key] = prov[key]
        gene_rows.append(tdf)
    import pandas as pd

    if coverage is not None:
        plan.notes.append(CONFORMAL_NOTE.format(n=N_INNER, c=coverage))
    items, intervals, fold_of = assemble(fs, pieces)
    cv = CVResult(head=hname, encoder=enc, params=json.loads(params_json), plan=plan, selections=selections,
                  rows=rows, per_gene=pd.concat(gene_rows, ignore_index=True), estimators=estimators,
                  provenance=prov, items=items, layout=layout,
                  samples={s: fs.samples[s].sample for s in ids if fs.samples[s].sample is not None})
    cv.intervals = intervals
    cv.predictions = {sid: prediction_adata(fs, sid, P, g, transform, fold=fold_of[sid], prov=prov,
                                            interval=intervals.get(sid)) for fname, sid, P, g in items}
    cv.predictability = predictability(boot_pieces, n_boot=n_boot, seed=seed)
    labels = {sid: fs.labels(sid) for sid in cv.predictions}
    cv.domains = domain_agreement(cv.predictions, labels, seed=seed)
    cv.domains.insert(0, "head", hname)
    cv.domains.insert(0, "encoder", enc)
    log.info("%s", cv)
    return cv


def skip_path(est: Any) -> dict:
    """``residual_share`` / ``reduced_to_skip`` of a fitted head with a ridge skip path (attention,
    slide-transformer): the share of its prediction's variance from the learned residual, and whether early
    stopping kept the untrained residual (the head then predicts what its ridge skip path predicts). Empty
    for other heads."""
    if not hasattr(est, "reduced_to_skip_"):
        return {}
    return {"residual_share": float(getattr(est, "residual_share_", float("nan"))),
            "reduced_to_skip": bool(est.reduced_to_skip_)}


def head_diagnostics(est: Any) -> dict:
    """Per-fold facts a head reports about itself, for metrics.json/csv: :func:`skip_path`, and for the
    ensemble its mean weight and out-of-fold mean r per base head (JSON text)."""
    out = skip_path(est)
    if hasattr(est, "weights_") and hasattr(est, "heads_") and hasattr(est, "base_scores_"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a base head with no OOF score (all NaN)
            out["ensemble_weights"] = json.dumps({h: round(float(w), 4) for h, w in
                                                  zip(est.heads_, np.asarray(est.weights_).mean(1))})
            out["ensemble_base_r"] = json.dumps({h: round(float(r), 4) if np.isfinite(r) else None for h, r in
                                                 zip(est.heads_, np.nanmean(est.base_scores_, 1))})
    return out


def skip_path_note(cv: "CVResult") -> str | None:
    """"HEAD reduced to its ridge skip path in N of M folds" when it was in any fold, else None."""
    flags = [row["reduced_to_skip"] for row in cv.rows if "reduced_to_skip" in row]
    n = sum(bool(f) for f in flags)
    if not n:
        return None
    return (f"{cv.head} reduced to its ridge skip path in {n} of {len(cv.rows)} folds ({cv.encoder}): "
            "there it predicts what the ridge alone predicts")


def subset_expression(e: Any, mask: np.ndarray) -> Any:
    """The counts of some spots of one sample (library sizes kept: they are per spot)."""
    import dataclasses

    return dataclasses.replace(e, counts=e.counts[np.flatnonzero(mask)], library_size=e.library_size[mask])


def assemble(fs: Any, pieces: dict) -> tuple[list, dict, dict]:
    """Per held-out sample, its predictions from every fold that tested some of its spots, over the union of
    those folds' genes (NaN where a fold did not target a gene): items, conformal intervals, fold per spot."""
    items, intervals, fold_of = [], {}, {}
    for sid, parts in pieces.items():
        n = fs.samples[sid].n_spots
        if len(parts) == 1 and len(parts[0][1]) == n:
            fname, _, P, g, q = parts[0]
            items.append((fname, sid, P, g))
            fold_of[sid] = fname
            if q is not None:
                intervals[sid] = (P - q[None, :], P + q[None, :])
            continue
        genes = list(dict.fromkeys(x for p in parts for x in p[3]))
        col = {x: i for i, x in enumerate(genes)}
        full = np.full((n, len(genes)), np.nan, np.float32)
        lo, hi = full.copy(), full.copy()
        folds = np.full(n, "", dtype=object)
        for fname, rows, P, g, q in parts:
            cols = [col[x] for x in g]
            full[np.ix_(rows, cols)] = P
            folds[rows] = fname
            if q is not None:
                lo[np.ix_(rows, cols)] = P - q[None, :]
                hi[np.ix_(rows, cols)] = P + q[None, :]
        items.append(("blocks", sid, full, genes))
        fold_of[sid] = folds
        if parts[0][4] is not None:
            intervals[sid] = (lo, hi)
    return items, intervals, fold_of


def prediction_adata(fs: Any, sid: str, P: np.ndarray, genes: list[str], transform: str, *, fold: Any = "",
                     prov: dict | None = None, interval: tuple | None = None):
    """AnnData of one sample's predictions: X = predicted, layers measured/predicted (and lower/upper, the
    conformal interval), obsm["spatial"] (px), obs fold (per spot for blocked splits), region labels and, when
    the sample has an image, uns["spatial"][sid] (H&E images + scale factors, :func:`stfeat.spatial_uns.spatial_uns`)."""
    import anndata as ad
    import pandas as pd

    sf = fs.samples[sid]
    obs = pd.DataFrame({"sample": sid, "patient": sf.patient or "", "fold": fold},
                       index=pd.Index(np.asarray(sf.barcodes).astype(str), name="barcode"))
    a = ad.AnnData(X=np.asarray(P, np.float32), obs=obs, var=pd.DataFrame(index=pd.Index(list(genes), name="gene")))
    a.layers["predicted"] = a.X
    a.layers["measured"] = fs.targets(sid, genes, transform)
    if interval is not None:
        a.layers["lower"], a.layers["upper"] = (np.asarray(x, np.float32) for x in interval)
    labels = fs.labels(sid) if hasattr(fs, "labels") else None
    if labels is not None:
        a.obs["region"] = pd.Categorical(np.asarray(labels, dtype=object))
    a.obsm["spatial"] = np.asarray(sf.coords_px, np.float64)
    a.uns["stfeat"] = {k: str(v) for k, v in (prov or {}).items()}
    s = getattr(sf, "sample", None)
    if s is not None and getattr(s, "slide", None) is not None:  # as predict's: sc.pl.spatial over the H&E
        from stfeat.spatial_uns import spatial_uns

        try:
            a.uns["spatial"] = spatial_uns(s, library_id=sid, coords_px=a.obsm["spatial"])
        except (OSError, ValueError) as exc:  # an unreadable image costs the maps' background, not the fit
            log.warning("no uns['spatial'] images for %s (%s)", sid, exc)
    return a
