"""Stage two: fit heads on cached features with patient-grouped evaluation (``stfeat fit``).

:func:`fit` loads the samples' counts and their stage-one caches, makes leakage-proof outer folds
(:mod:`stfeat.evaluate`), and for every fold chooses the target genes on the training samples only
(:mod:`stfeat.targets`), fits each head on each encoder's features and scores it on the held-out
samples. It then refits every head on all samples (the model that ``stfeat predict`` uses) and
writes, into ``out_dir``::

    metrics.json          everything: inputs, split and its notes, genes per fold, summaries, provenance
    metrics.csv           one row per encoder x head x fold (+ "mean" rows), with the gene list, rule,
                          transform, split, scales, head params and stfeat version on every row
    per_gene.csv          per-gene r / MSE / MAE per encoder x head x fold, same provenance columns
    comparison.csv        rows encoder x head, columns: mean r per held-out sample, then the mean over folds
    predictions/{encoder}__{head}.h5ad   X = layers["predicted"], layers["measured"], obs sample/fold/coords
    models/{encoder}__{head}/            final model (model.json + head files); folds/ with --save-fold-models
    plots/{encoder}__{head}/             r distribution, measured vs predicted maps (best/worst genes)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stfeat.errors import InputError

log = logging.getLogger(__name__)

MODEL_FORMAT = "stfeat-model"
MODEL_FORMAT_VERSION = 1
TRANSFORM_NOTE = ("log1p_cp10k = log1p(1e4 * counts / library size); the library size is the total "
                  "count over ALL genes of the spot, taken before the target genes are subset")
METRIC_NOTE = ("metric of record: Pearson r per gene over all test spots of a fold (pooled across the "
               "fold's held-out samples), averaged over genes; genes with constant measured or predicted "
               "values have r = NaN, are counted in n_nan_genes and left out of mean/median (nanmean)")


@dataclass
class LoadedSample:
    """What stage two needs of one sample."""

    sample_id: str
    patient: str | None
    path: Path | None
    expression: Any  # stfeat.targets.Expression
    barcodes: np.ndarray
    coords_px: np.ndarray
    sample: Any = None  # the stfeat.io.Sample (for the slide thumbnail in plots)


@dataclass
class FitResult:
    """What :func:`fit` returns (everything is also on disk under ``out_dir``)."""

    out_dir: Path
    metrics: dict
    comparison: Any  # pandas DataFrame
    per_gene: Any  # pandas DataFrame
    model_dirs: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ inputs
def load_samples(samples_or_manifest: Any) -> tuple[list[LoadedSample], str | None]:
    """Load counts and geometry. Accepts a path (sample, folder or manifest), SampleRefs or Samples.

    Returns the samples and the path string to quote in ``stfeat extract`` hints (or None).
    """
    from stfeat.targets import Expression

    source: str | None = None
    items: list[Any]
    if isinstance(samples_or_manifest, (str, os.PathLike)):
        from stfeat.io import resolve_samples

        source = str(samples_or_manifest)
        items = list(resolve_samples(samples_or_manifest))
    else:
        items = list(samples_or_manifest)
    out = []
    for it in items:
        if hasattr(it, "load") and not hasattr(it, "adata"):  # a SampleRef
            s = it.load()
            patient = it.patient if it.patient not in (None, "") else s.patient
            path = Path(it.path)
        else:
            s = it
            patient = s.patient
            p = s.meta.get("source_path")
            path = Path(p) if p else None
        out.append(LoadedSample(sample_id=s.sample_id, patient=patient, path=path,
                                expression=Expression.from_sample(s), barcodes=s.barcodes,
                                coords_px=s.coords, sample=s))
    if not out:
        raise InputError(source, "no samples found.", "give a sample folder, a folder of samples or a manifest.")
    return out, source


def load_features(samples: Sequence[LoadedSample], *, encoder: str, cache_dir: str | Path,
                  scales: Sequence[float | str] | None, source: str | None):
    """FeatureSet of one encoder; a missing cache names the ``stfeat extract`` command to run."""
    from stfeat.features import FeatureSet, cache_file

    rows, missing = [], []
    for s in samples:
        p = cache_file(cache_dir, encoder, s.sample_id)
        if not p.exists():
            missing.append((s, p))
        rows.append((s.sample_id, s.patient, p, s.barcodes, s.path))
    if missing:
        target = source or " ".join(str(s.path) for s, _ in missing if s.path) or "SAMPLES"
        sc = "" if not scales else " --scales " + ",".join(f"{float(x):g}" for x in scales)
        raise InputError(missing[0][1], f"no feature cache for encoder {encoder!r} and sample(s) "
                         f"{[s.sample_id for s, _ in missing]} in {cache_dir}.",
                         f"run `stfeat extract {target} --encoder {encoder} --cache-dir {cache_dir}{sc}` first.")
    return FeatureSet.from_caches(rows, scales=scales)


# ------------------------------------------------------------------------------------------ heads
def _signature_params(est: Any) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(est.fit).parameters)
    except (TypeError, ValueError):
        return set()


def wants_tokens(est: Any) -> bool:
    """True for heads that take token tensors (their ``fit`` accepts ``rel_pos``)."""
    return "rel_pos" in _signature_params(est)


def make_estimator(head: Any, params: dict | None, seed: int):
    """A fresh estimator: a registry name (``stfeat.heads.make_head``) or a clone of an estimator."""
    from sklearn.base import clone

    if isinstance(head, str):
        from stfeat.heads import HEADS, make_head

        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; available: {', '.join(sorted(HEADS))}")
        params = dict(params or {})
        if "random_state" in HEADS[head]().get_params() and "random_state" not in params:
            params["random_state"] = seed
        return make_head(head, **params)
    est = clone(head)
    if params:
        est.set_params(**params)
    return est


def head_name(head: Any) -> str:
    return head if isinstance(head, str) else getattr(head, "name", type(head).__name__.lower())


def model_inputs(fs, ids: Sequence[str], layout: dict) -> dict[str, Any]:
    """Keyword inputs of fit/predict for one head: ``X`` plus, for token heads, ``rel_pos`` etc."""
    # spot centres (um) and each row's sample, for heads whose fit/predict accept them by name
    where = {"coords_um": np.concatenate([fs.samples[s].coords_um for s in ids]),
             "sample_ids": np.asarray(fs.spot_samples(ids), dtype=str)}
    if layout["kind"] == "tokens":
        t = fs.tokens(ids, k=layout["k_neighbors"], neighbor_scale=layout.get("neighbor_scale"))
        return {"X": t["X"], "rel_pos": t["rel_pos"], "token_type": t["token_type"], "mask": t["mask"],
                **where}
    return {"X": fs.flat(ids, neighbor_mean=layout["neighbor_mean"], k=layout["k_neighbors"]), **where}


def _optional_kwargs(method, inputs: dict) -> dict:
    """The optional inputs (rel_pos, token_type, padding mask) that ``method`` accepts, by name.

    The padding mask is True at padding here; heads taking ``token_mask`` get its inverse (True = valid
    token, the attention head's convention), heads taking ``mask``/``padding_mask`` get it as is.
    """
    import inspect

    try:
        accepted = set(inspect.signature(method).parameters)
    except (TypeError, ValueError):
        accepted = set()
    kwargs = {k: v for k, v in inputs.items() if k not in ("X", "mask") and k in accepted}
    if "mask" in inputs:
        if "token_mask" in accepted:
            kwargs["token_mask"] = ~inputs["mask"]
        elif "mask" in accepted:
            kwargs["mask"] = inputs["mask"]
        elif "padding_mask" in accepted:
            kwargs["padding_mask"] = inputs["mask"]
    return kwargs


def fit_estimator(est, inputs: dict, Y: np.ndarray, groups: np.ndarray | None):
    """``est.fit(X, Y, **optional inputs it accepts)``; ``groups`` (for grouped inner validation) too."""
    kwargs = _optional_kwargs(est.fit, inputs)
    if groups is not None and "groups" in _signature_params(est):
        kwargs["groups"] = groups
    return est.fit(inputs["X"], Y, **kwargs)


def predict_estimator(est, inputs: dict) -> np.ndarray:
    """``est.predict(X, **optional inputs it accepts)`` as float32 (n, g)."""
    P = np.asarray(est.predict(inputs["X"], **_optional_kwargs(est.predict, inputs)), dtype=np.float32)
    return P.reshape(len(P), -1)


def save_model(model_dir: Path, est: Any, manifest: dict) -> Path:
    """Write a fitted head and its manifest (genes, transform, encoder, layout, ...) atomically."""
    model_dir = Path(model_dir)
    tmp = model_dir.with_name(model_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    manifest = dict(manifest)
    try:
        from stfeat.heads import save_head
        from stfeat.heads._base import BaseHead
    except ImportError:
        save_head, BaseHead = None, ()
    if save_head is not None and isinstance(est, BaseHead):
        save_head(est, tmp / "head")
        manifest["head_format"] = "stfeat-head"
    else:
        import joblib

        # A foreign scikit-learn estimator: pickled; load such a model only from a directory you trust.
        joblib.dump(est, tmp / "head.joblib")
        manifest["head_format"] = "joblib"
    (tmp / "model.json").write_text(json.dumps(manifest, indent=2, default=_json_default))
    if model_dir.exists():
        if (model_dir / "folds").is_dir():  # per-fold models saved earlier stay with the final model
            os.replace(model_dir / "folds", tmp / "folds")
        shutil.rmtree(model_dir)
    os.replace(tmp, model_dir)
    return model_dir


def _json_default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _as_list(x: Any) -> list:
    if isinstance(x, str):
        return [p.strip() for p in x.split(",") if p.strip()]
    return list(x)


# ------------------------------------------------------------------------------------------ fit
def fit(
    samples_or_manifest: Any,
    *,
    encoder: str | Sequence[str],
    cache_dir: str | Path,
    heads: Sequence[Any] = ("hest-ridge",),
    head_params: dict[str, dict] | None = None,
    scales: Sequence[float | str] | None = None,
    genes: str = "hvg:50",
    transform: str = "log1p_cp10k",
    split: str = "auto",
    k_neighbors: int = 8,
    neighbor_mean: bool = False,
    neighbor_scale: float | str | None = None,
    out_dir: str | Path = "stfeat_fit",
    seed: int = 0,
    metric_top_k: int = 10,
    save_fold_models: bool = False,
    plots: bool = True,
) -> FitResult:
    """Evaluate heads with grouped outer folds, refit them on all samples and write the results.

    Parameters
    ----------
    samples_or_manifest
        A sample path, a folder of samples, a manifest, or a list of SampleRefs / Samples.
    encoder
        Encoder name(s) whose caches to use (several: one comparison table).
    cache_dir
        Root of the stage-one caches (``{cache_dir}/{encoder_tag}/{sample_id}.h5``).
    heads
        Head names from :data:`stfeat.heads.HEADS` (or scikit-learn estimators).
    head_params
        Per head name, keyword arguments for the head.
    scales
        Fields of view (um) to use; default every scale in the caches.
    genes
        Gene rule (``hvg:K``, ``hex:K``, ``file:PATH``, ``common``), applied per fold to training data.
    transform
        Target transform (default ``log1p_cp10k``; see :mod:`stfeat.targets`).
    split
        ``auto``, ``lopo``, ``group-kfold:K`` or ``loso`` (see :mod:`stfeat.evaluate`).
    k_neighbors
        Neighbours per spot for token heads and for ``neighbor_mean``.
    neighbor_mean
        Append the mean of the k neighbours' features to flat heads' X.
    neighbor_scale
        Scale of the neighbour tokens (default: smallest scale).
    out_dir
        Output directory (created).
    seed
        ``random_state`` given to heads that take one (unless set in ``head_params``).
    metric_top_k
        k of the extra summaries: mean r over the k most variable / most expressed target genes,
        ranked on the fold's training spots by variance / mean of log1p(cp10k).
    save_fold_models
        Also save every fold's model under ``models/*/folds/``.
    plots
        Write PNG plots.
    """
    import pandas as pd

    from stfeat import __version__
    from stfeat.evaluate import gene_metrics, inner_groups, make_splits, summarize
    from stfeat.targets import GeneRule, check_transform, select_genes, target_matrix

    encoders = _as_list(encoder)
    heads = _as_list(heads) if isinstance(heads, str) else list(heads)
    if not encoders or not heads:
        raise ValueError("give at least one encoder and one head")
    rule = GeneRule.parse(genes)
    check_transform(transform)
    head_params = dict(head_params or {})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    samples, source = load_samples(samples_or_manifest)
    by_id = {s.sample_id: s for s in samples}
    plan = make_splits([s.sample_id for s in samples], [s.patient for s in samples], split)
    notes = list(plan.notes)
    # Load every cache before fitting anything: a missing one fails fast with the command to run.
    fsets = {enc: load_features(samples, encoder=enc, cache_dir=cache_dir, scales=scales, source=source)
             for enc in encoders}
    if fsets[encoders[0]].group_kind != plan.group_kind:  # both derive from the same patient ids
        raise AssertionError("FeatureSet and split disagree on the grouping")

    # Genes are chosen per fold from its training samples only; shared by all encoders and heads.
    selections = {f.name: select_genes([by_id[t].expression for t in f.train], rule) for f in plan.folds}
    final_sel = select_genes([s.expression for s in samples], rule)
    _targets: dict[tuple[str, tuple], np.ndarray] = {}

    def targets(sid: str, genes_: Sequence[str]) -> np.ndarray:
        key = (sid, tuple(genes_))
        if key not in _targets:
            _targets[key] = target_matrix(by_id[sid].expression, genes_, transform)
        return _targets[key]

    split_str = f"{plan.mode} over {'sections' if plan.mode == 'loso' else plan.group_kind + 's'}"
    base_prov = {"gene_rule": str(rule), "transform": transform, "split": split_str,
                 "stfeat_version": __version__}
    rows, gene_rows, model_dirs = [], [], {}
    preds: dict[str, list] = {}
    comparison: dict[tuple[str, str], dict[str, float]] = {}
    for enc, fs in fsets.items():
        attrs0 = fs.samples[fs.sample_ids[0]].attrs
        enc_prov = {"encoder": enc, "weights_id": str(attrs0.get("weights_id", "")),
                    "encoder_config_hash": str(attrs0.get("config_hash", "")), "scales_um": ",".join(fs.scales)}
        for h in heads:
            hname = head_name(h)
            tag = f"{enc}__{hname}".replace("/", "-").replace(":", "-")
            probe = make_estimator(h, head_params.get(hname), seed)
            layout = {"kind": "tokens" if wants_tokens(probe) else "flat", "scales": fs.scales,
                      "k_neighbors": int(k_neighbors), "neighbor_mean": bool(neighbor_mean and not wants_tokens(probe)),
                      "neighbor_scale": None if neighbor_scale is None else f"{float(neighbor_scale):g}",
                      "dim": fs.dim}
            params_json = json.dumps(probe.get_params(), sort_keys=True, default=str)
            fold_r: list[float] = []
            comp: dict[str, float] = {}
            preds[tag] = []
            for fold in plan.folds:
                sel = selections[fold.name]
                est = make_estimator(h, head_params.get(hname), seed)
                Ytr = np.concatenate([targets(t, sel.genes) for t in fold.train])
                groups = inner_groups(fs.spot_samples(fold.train), plan.groups)
                log.info("%s | %s | fold %s: training on %s (%d spots, %d genes)", enc, hname, fold.name,
                         fold.train, len(Ytr), len(sel.genes))
                fit_estimator(est, model_inputs(fs, fold.train, layout), Ytr, groups)
                P = predict_estimator(est, model_inputs(fs, fold.test, layout))
                Yte = np.concatenate([targets(t, sel.genes) for t in fold.test])
                if P.shape != Yte.shape:
                    raise RuntimeError(f"head {hname} predicted shape {P.shape}, expected {Yte.shape}")
                table = gene_metrics(Yte, P, sel.genes)
                k_hvg, k_hex = sel.top_k(metric_top_k, "hvg"), sel.top_k(metric_top_k, "hex")
                summ = summarize(table, top_hvg=k_hvg, top_hex=k_hex)
                fold_r.append(summ["mean_r"])
                start = 0
                per_sample = {}
                for t in fold.test:
                    n = by_id[t].expression.n_spots
                    per_sample[t] = summarize(gene_metrics(Yte[start:start + n], P[start:start + n], sel.genes))["mean_r"]
                    comp[t] = per_sample[t]
                    preds[tag].append((fold.name, t, P[start:start + n], sel.genes))
                    start += n
                prov = {**enc_prov, "head": hname, "head_params": params_json, **base_prov,
                        "genes": ";".join(sel.genes)}
                rows.append({"encoder": enc, "head": hname, "fold": fold.name, "test_samples": ";".join(fold.test),
                             "train_samples": ";".join(fold.train), "n_test_spots": len(Yte), **summ,
                             **{f"r_{t}": v for t, v in per_sample.items()}, **prov})
                tdf = table.reset_index()
                tdf.insert(0, "fold", fold.name)
                tdf.insert(0, "head", hname)
                tdf.insert(0, "encoder", enc)
                tdf["in_top_hvg"] = tdf["gene"].isin(k_hvg)
                tdf["in_top_hex"] = tdf["gene"].isin(k_hex)
                for key in ("gene_rule", "transform", "split", "stfeat_version"):
                    tdf[key] = base_prov[key]
                tdf["scales_um"] = enc_prov["scales_um"]
                tdf["head_params"] = params_json
                gene_rows.append(tdf)
                if save_fold_models:
                    save_model(out_dir / "models" / tag / "folds" / fold.name, est,
                               _manifest(enc, hname, est, layout, sel, transform, fold.train, plan, cache_dir,
                                         attrs0, seed, notes))
            comp["mean"] = float(np.nanmean(fold_r)) if np.isfinite(fold_r).any() else float("nan")
            comparison[(enc, hname)] = comp
            # Final model: genes re-chosen on all samples, head refit on all of them (used by predict).
            est = make_estimator(h, head_params.get(hname), seed)
            Yall = np.concatenate([targets(s.sample_id, final_sel.genes) for s in samples])
            fit_estimator(est, model_inputs(fs, fs.sample_ids, layout), Yall,
                          inner_groups(fs.spot_samples(fs.sample_ids), plan.groups))
            model_dirs[tag] = save_model(out_dir / "models" / tag, est,
                                         _manifest(enc, hname, est, layout, final_sel, transform,
                                                   fs.sample_ids, plan, cache_dir, attrs0, seed, notes))

    sample_cols = [s.sample_id for s in samples]
    comp_df = pd.DataFrame([{"encoder": e, "head": h, **{c: v.get(c, np.nan) for c in sample_cols},
                             "mean": v["mean"]} for (e, h), v in comparison.items()])
    metrics_df = pd.DataFrame(rows)
    mean_rows = []
    for (e, h), g in metrics_df.groupby(["encoder", "head"], sort=False):
        num = g.select_dtypes("number").mean(numeric_only=True).to_dict()
        first = g.iloc[0]
        mean_rows.append({**{k: first[k] for k in g.columns if k not in num}, **num, "fold": "mean",
                          "test_samples": "all", "train_samples": "", "genes": "per fold (see rows above)"})
    metrics_df = pd.concat([metrics_df, pd.DataFrame(mean_rows)], ignore_index=True)
    per_gene = pd.concat(gene_rows, ignore_index=True)

    metrics = {
        "stfeat_version": __version__,
        "samples": [{"sample_id": s.sample_id, "patient": s.patient, "path": str(s.path) if s.path else None,
                     "n_spots": s.expression.n_spots} for s in samples],
        "notes": notes,
        "split": plan.to_dict(),
        "encoders": {e: {"weights_id": str(fs.samples[fs.sample_ids[0]].attrs.get("weights_id", "")),
                         "config_hash": str(fs.samples[fs.sample_ids[0]].attrs.get("config_hash", "")),
                         "cache_dir": str(Path(cache_dir).resolve())} for e, fs in fsets.items()},
        "scales_um": fsets[encoders[0]].scales,
        "genes": {"rule": str(rule), "description": rule.describe(),
                  "per_fold": {k: v.to_dict() for k, v in selections.items()}, "final": final_sel.to_dict()},
        "transform": transform, "transform_note": TRANSFORM_NOTE if transform == "log1p_cp10k" else transform,
        "metric_note": METRIC_NOTE,
        "top_k_note": (f"mean_r_top{metric_top_k}_hvg / _hex: mean r over the {metric_top_k} target genes with the "
                       "highest variance / mean of log1p(cp10k) on the fold's training spots"),
        "heads": {head_name(h): head_params.get(head_name(h), {}) for h in heads},
        "k_neighbors": k_neighbors, "neighbor_mean": neighbor_mean, "seed": seed,
        "results": json.loads(metrics_df.to_json(orient="records")),
        "comparison": json.loads(comp_df.to_json(orient="records")),
    }
    _write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2, default=_json_default))
    _write_text(out_dir / "metrics.csv", metrics_df.to_csv(index=False))
    _write_text(out_dir / "per_gene.csv", per_gene.to_csv(index=False))
    _write_text(out_dir / "comparison.csv", comp_df.to_csv(index=False))
    _write_predictions(out_dir / "predictions", preds, by_id, targets, {**base_prov, "notes": notes})
    if plots:
        _write_plots(out_dir / "plots", preds, per_gene, by_id, targets)
    log.info("comparison (mean Pearson r per held-out sample; mean over folds):\n%s",
             comp_df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return FitResult(out_dir=out_dir, metrics=metrics, comparison=comp_df, per_gene=per_gene,
                     model_dirs=model_dirs, notes=notes)


def _manifest(enc, hname, est, layout, sel, transform, train, plan, cache_dir, attrs, seed, notes) -> dict:
    from stfeat import __version__

    return {
        "format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "stfeat_version": __version__,
        "encoder": enc, "encoder_attrs": {k: attrs.get(k) for k in ("encoder", "encoder_tag", "weights_id",
                                                                     "config_hash", "patch_px", "embed_dim",
                                                                     "dtype")},
        "cache_dir": str(Path(cache_dir).resolve()), "layout": layout, "head": hname,
        "head_class": f"{type(est).__module__}.{type(est).__name__}",
        "head_params": json.loads(json.dumps(est.get_params(), default=str)),
        "genes": list(sel.genes), "gene_rule": sel.rule, "gene_rule_description": sel.description,
        "transform": transform, "train_samples": list(train), "split": plan.mode, "seed": seed, "notes": notes,
    }


def _write_predictions(pred_dir: Path, preds: dict, by_id: dict, targets, prov: dict) -> None:
    """One h5ad per encoder x head: predicted (X, layers) and measured values of every held-out spot."""
    import anndata as ad
    import pandas as pd

    pred_dir.mkdir(parents=True, exist_ok=True)
    for tag, items in preds.items():
        genes: list[str] = []
        seen = set()
        for _, _, _, g in items:
            for x in g:
                if x not in seen:
                    seen.add(x)
                    genes.append(x)
        col = {g: i for i, g in enumerate(genes)}
        P_all, M_all, obs = [], [], []
        for fold, sid, P, g in items:
            s = by_id[sid]
            full = np.full((len(P), len(genes)), np.nan, np.float32)
            full[:, [col[x] for x in g]] = P
            P_all.append(full)
            M_all.append(targets(sid, genes))
            obs.append(pd.DataFrame({"sample": sid, "patient": s.patient or "", "fold": fold, "barcode": s.barcodes,
                                     "x_px": s.coords_px[:, 0], "y_px": s.coords_px[:, 1]}))
        obs_df = pd.concat(obs, ignore_index=True)
        obs_df.index = (obs_df["sample"] + ":" + obs_df["barcode"]).to_numpy()
        for c in ("sample", "patient", "fold", "barcode"):
            obs_df[c] = obs_df[c].astype("category")
        Pm = np.concatenate(P_all)
        a = ad.AnnData(X=Pm, obs=obs_df, var=pd.DataFrame(index=pd.Index(genes, name="gene")))
        a.layers["predicted"] = Pm
        a.layers["measured"] = np.concatenate(M_all)
        a.obsm["spatial"] = obs_df[["x_px", "y_px"]].to_numpy(np.float64)
        enc, _, head = tag.partition("__")
        a.uns["stfeat"] = {"encoder": enc, "head": head, "notes": list(prov["notes"]),
                           **{k: str(v) for k, v in prov.items() if k != "notes"}}
        out = pred_dir / f"{tag}.h5ad"
        tmp = out.with_name(out.stem + ".tmp.h5ad")
        a.write_h5ad(tmp)
        os.replace(tmp, out)


def _write_plots(plot_dir: Path, preds: dict, per_gene, by_id: dict, targets, n_genes: int = 3) -> None:
    """r distribution and best/worst gene maps on the H&E thumbnail, per encoder x head."""
    from stfeat import plots

    thumbs: dict[str, Any] = {}
    for tag, items in preds.items():
        enc, _, head = tag.partition("__")
        d = plot_dir / tag
        d.mkdir(parents=True, exist_ok=True)
        pg = per_gene[(per_gene["encoder"] == enc) & (per_gene["head"] == head)]
        r_gene = pg.groupby("gene", sort=False)["pearson_r"].mean().dropna().sort_values(ascending=False)
        plots.plot_r_distribution(pg["pearson_r"].to_numpy(), d / "r_distribution.png",
                                  title=f"{enc} / {head}: per-gene Pearson r (all folds)")
        chosen = list(r_gene.index[:n_genes]) + [g for g in r_gene.index[::-1][:n_genes] if g not in r_gene.index[:n_genes]]
        for fold, sid, P, g in items:
            s = by_id[sid]
            if sid not in thumbs:
                thumbs[sid] = plots.sample_thumbnail(s.sample)
            genes = [x for x in chosen if x in g]
            if not genes:
                continue
            gi = [list(g).index(x) for x in genes]
            M = targets(sid, genes)
            plots.plot_gene_maps(thumbs[sid], s.coords_px, M, P[:, gi], genes, d / f"maps_{sid}.png",
                                 r=[r_gene.get(x, np.nan) for x in genes],
                                 title=f"{sid} (held out, fold {fold}) - {enc} / {head}")
