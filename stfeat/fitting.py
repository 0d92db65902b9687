"""Stage two: refit a head on all samples (:func:`fit` -> :class:`stfeat.Model`) and the ``stfeat fit`` run
(:func:`fit_report`: load -> cross-validate every encoder x head -> refit -> report).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What :func:`fit_report` returns (everything is also on disk under ``out_dir``)."""

    out_dir: Path
    metrics: dict
    comparison: Any  # pandas DataFrame
    per_gene: Any  # pandas DataFrame
    cv: dict = field(default_factory=dict)  # tag -> CVResult
    models: dict = field(default_factory=dict)  # tag -> Model
    model_dirs: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _as_list(x: Any) -> list:
    if isinstance(x, str):
        return [p.strip() for p in x.split(",") if p.strip()]
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]  # one estimator object


def fit(features: Any, *, head: Any = "ridge", genes: str = "hvg:50", transform: str = "log1p_cp10k",
        head_params: dict | None = None, k_neighbors: int = 8, neighbor_mean: bool = False,
        neighbor_scale: float | str | None = None, seed: int = 0, intercept: bool = True,
        standardize: str | None = None, suffstats: bool | None = None):
    """Fit one head on ALL samples of ``features`` (genes chosen on all of them): the model for prediction.

    There is no outer split (that is :func:`stfeat.crossval.cross_validate`'s): patients (else sections) are the
    inner validation groups for early stopping and the penalty.

    Parameters
    ----------
    features
        A :class:`stfeat.features.FeatureSet` with counts.
    head
        An estimator object or a registry name.
    genes, transform, head_params, k_neighbors, neighbor_mean, neighbor_scale, seed, standardize
        As in :func:`stfeat.crossval.cross_validate`. The model records ``standardize`` and applies it at predict
        with the new sample's own statistics.
    intercept
        Give ``hest-ridge`` an intercept, so predictions are in the target's units (HEST's intercept-free
        protocol is kept for its cross-validated benchmark numbers, where Pearson r does not depend on it;
        an explicit ``fit_intercept`` in ``head_params`` wins).
    suffstats
        As in :func:`stfeat.crossval.cross_validate`: ridge from per-sample sufficient statistics.

    Returns
    -------
    stfeat.Model
    """
    from stfeat.estimators import fit_estimator, head_name, layout_for, make_estimator, model_inputs
    from stfeat.evaluate import inner_groups
    from stfeat.model import Model
    from stfeat.targets import GeneRule, check_transform, select_genes

    import numpy as np

    fs = features if standardize is None else features.with_standardize(standardize)
    rule = GeneRule.parse(genes)
    check_transform(transform)
    ids = fs.sample_ids
    hname = head_name(head)
    params = dict(head_params or {})
    est = make_estimator(head, params, seed)
    if intercept and "fit_intercept" in est.get_params() and "fit_intercept" not in params and hname == "hest-ridge":
        est.set_params(fit_intercept=True)
    sel = select_genes([fs.expression(s) for s in ids], rule)
    # the grouping make_splits uses (patients; a sample without one is its own group; sections without any)
    pats = {s: fs.samples[s].patient for s in ids}
    known = any(p not in (None, "") for p in pats.values())
    groups_of = {s: (str(p) if p not in (None, "") else (f"?{s}" if known else s)) for s, p in pats.items()}
    split_mode = "refit on all samples"
    notes = [] if len(ids) >= 2 else ["refit on a single sample"]
    layout = layout_for(est, fs, k_neighbors=k_neighbors, neighbor_mean=neighbor_mean, neighbor_scale=neighbor_scale)
    from stfeat import suffstats_cache as ssc
    from stfeat.heads._attn_chunks import use_attention_chunks
    from stfeat.heads._knn_chunks import use_knn_chunks

    # statistics and chunks are of the rows FeatureSet.iter_flat yields: standardised per slide under fs.standardize
    if ssc.use_suffstats(est, fs, layout, suffstats):
        ssc.fit_ridge(est, ssc.featureset_stats(fs, ids, sel.genes, transform, layout), groups_of)
    elif ssc.use_mlp_chunks(est, fs, layout):
        from stfeat.heads._mlp_chunks import fit_mlp_featureset

        fit_mlp_featureset(est, fs, list(ids), list(sel.genes), transform, groups_of)
    elif use_knn_chunks(est, fs, layout):
        from stfeat.heads._knn_chunks import fit_knn_featureset

        fit_knn_featureset(est, fs, list(ids), list(sel.genes), transform)
    elif use_attention_chunks(est, fs, layout):
        from stfeat.heads._attn_chunks import fit_attention_featureset

        fit_attention_featureset(est, fs, list(ids), list(sel.genes), transform, groups_of,
                                 k=int(layout["k_neighbors"]), neighbor_scale=layout.get("neighbor_scale"))
    else:
        Y = np.concatenate([fs.targets(s, sel.genes, transform) for s in ids])
        fit_estimator(est, model_inputs(fs, ids, layout), Y, inner_groups(fs.spot_samples(ids), groups_of))
    attrs = fs.samples[ids[0]].attrs
    return Model(estimator=est, head=hname, genes=list(sel.genes), transform=transform, layout=layout,
                 encoder=fs.provenance["encoder"],
                 encoder_attrs={k: attrs.get(k) for k in ("encoder", "encoder_tag", "weights_id", "config_hash",
                                                           "patch_px", "embed_dim", "dtype", "views", "extraction_mode")},
                 gene_rule=sel.rule, gene_rule_description=sel.description,
                 cache_dir=None if fs.cache_dir is None else str(Path(fs.cache_dir).resolve()),
                 train_samples=list(ids), split=split_mode, seed=seed, notes=notes)


def fit_report(samples: Any, *, encoder: str | Sequence[str], cache_dir: str | Path, image: str | Path | None = None,
               head: Any = ("ridge",),
               head_params: dict[str, dict] | None = None, scales_um: Sequence[float | str] | None = None,
               genes: str = "hvg:50", transform: str = "log1p_cp10k", split: str = "auto", k_neighbors: int = 8,
               neighbor_mean: bool = False, neighbor_scale: float | str | None = None,
               out_dir: str | Path = "stfeat_fit", seed: int = 0, metric_top_k: int = 10,
               save_fold_models: bool = False, plots: bool = True, standardize: str = "slide",
               conformal: float | None = 0.9) -> FitResult:
    """``stfeat fit``: cross-validate every encoder x head, refit each on all samples, write the report.

    ``samples`` is anything :func:`stfeat.io.as_samples` takes; ``head`` one or several names or estimator
    objects; ``head_params`` maps a head name to its parameters; ``standardize`` is the per-slide feature
    standardisation (``none`` or ``slide``, see :mod:`stfeat.features`); ``conformal`` the nominal coverage
    of the per-spot conformal intervals (None or 0 = off). Writes into ``out_dir`` (see
    :mod:`stfeat.report`) and returns the in-memory results too.
    """
    from stfeat.crossval import cross_validate
    from stfeat.estimators import head_name
    from stfeat.features import FeatureSet, check_standardize
    from stfeat.io import as_samples
    from stfeat.report import write_report

    encoders, heads = _as_list(encoder), _as_list(head)
    if not encoders or not heads:
        raise ValueError("give at least one encoder and one head")
    head_params = dict(head_params or {})
    check_standardize(standardize)
    loaded = as_samples(samples, image=image)  # image: the one sample's H&E, as at extract (--image)
    # Load every cache before fitting anything: a missing one fails fast with the command to run.
    fsets = {}
    for enc in encoders:
        fsets[enc] = FeatureSet.load(loaded, encoder=enc, cache_dir=cache_dir, scales_um=scales_um,
                                     standardize=standardize)
        fsets[enc].source = str(samples) if isinstance(samples, (str, Path)) else None
    cvs, models = {}, {}
    opts = dict(genes=genes, transform=transform, split=split, k_neighbors=k_neighbors, neighbor_mean=neighbor_mean,
                neighbor_scale=neighbor_scale, seed=seed, standardize=standardize)
    for enc, fs in fsets.items():
        for h in heads:
            params = head_params.get(head_name(h))
            cv = cross_validate(fs, head=h, head_params=params, metric_top_k=metric_top_k, conformal=conformal,
                                **opts)
            cvs[cv.tag] = cv
            models[cv.tag] = fit(fs, head=h, head_params=params, **{k: v for k, v in opts.items() if k != "split"})
    return write_report(out_dir, cvs, models, fsets, save_fold_models=save_fold_models, plots=plots,
                        metric_top_k=metric_top_k, heads={head_name(h): head_params.get(head_name(h), {})
                                                          for h in heads}, k_neighbors=k_neighbors,
                        neighbor_mean=neighbor_mean, seed=seed, standardize=standardize)
