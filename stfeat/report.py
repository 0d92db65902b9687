"""Files of a ``stfeat fit`` run, from in-memory results (:func:`write_report`).

Into ``out_dir``::

    metrics.json          everything: inputs, split and its notes, genes per fold, summaries, provenance,
                          best_model (the head with the best mean held-out r, used by predict by default)
    metrics.csv           one row per encoder x head x fold (+ "mean" rows), with the gene list, rule,
                          transform, split, scales, head params and stfeat version on every row
    per_gene.csv          per-gene r / MSE / MAE per encoder x head x fold, same provenance columns
    comparison.csv        rows encoder x head, columns: mean r per held-out sample, then the mean over folds
    predictability.csv    per encoder x head x gene: held-out r per fold, mean, bootstrap 95% interval,
                          predictable (= ci_low > 0) (stfeat.predictability)
    predictable_genes.txt the best model's predictable genes, one per line (reads back as --genes file:PATH)
    domains.csv           per encoder x head x held-out sample: ARI / NMI of k-means clusters of predicted vs
                          measured expression, and vs region labels when the sample has them (stfeat.domains)
    predictions/{encoder}__{head}.h5ad   X = layers["predicted"], layers["measured"], layers["lower"/"upper"]
                          (conformal intervals), obs sample/fold/coords/region
    models/{encoder}__{head}/            final model (stfeat.Model); folds/ with save_fold_models
    plots/{encoder}__{head}/             r distribution, measured vs predicted maps (best/worst genes)

The folder is written under a fresh temporary name of ours (:func:`stfeat._safe_write.atomic_path`) and
swapped in whole, so an interrupted (even ``kill -9``) run never leaves new models beside old metrics (or the
reverse); a full disk or a file-size limit is a :class:`~stfeat.errors.ResourceError` naming the file, and the
temporary folder is removed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from stfeat.errors import InputError
from stfeat.model import _json_default

log = logging.getLogger(__name__)

_OURS = {"metrics.json", "metrics.csv", "per_gene.csv", "comparison.csv", "predictions", "models", "plots",
         "resolved_config.yaml", "predictability.csv", "predictable_genes.txt", "domains.csv"}


def _tagged(cvs: dict, attr: str):
    """One table over encoder x head of a per-CVResult table (``predictability`` or ``domains``)."""
    import pandas as pd

    parts = []
    for cv in cvs.values():
        df = getattr(cv, attr, None)
        if df is None or not len(df):
            continue
        df = df.copy()
        for col, val in (("head", cv.head), ("encoder", cv.encoder)):
            if col not in df.columns:
                df.insert(0, col, val)
        parts.append(df)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _finite(x: Any) -> Any:
    """JSON-safe: non-finite floats (an infinite interval from too few calibration spots, NaN) become None."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def evaluation_extras(cvs: dict, best: Any) -> dict:
    """The metrics.json block of the per-gene predictability, conformal intervals and domain agreement."""
    out = {}
    for tag, cv in cvs.items():
        pred = cv.predictability
        conf = [r for r in cv.rows if "conformal_coverage" in r]
        dom = cv.domains if cv.domains is not None else None
        out[tag] = {
            "n_genes": 0 if pred is None else int(len(pred)),
            "n_predictable": cv.n_predictable,
            "predictable_genes": [] if pred is None else pred.loc[pred["predictable"], "gene"].tolist(),
            "conformal": None if not conf else {
                "nominal": conf[0]["conformal_nominal"], "coverage_mean": cv.coverage,
                "width_mean": float(np.mean([r["conformal_width"] for r in conf])),
                "inner": conf[0]["conformal_inner"],
                "per_fold": {r["fold"]: {"coverage": r["conformal_coverage"], "width": r["conformal_width"],
                                         "inner": r["conformal_inner"]} for r in conf}},
            "domains": [] if dom is None else json.loads(dom.to_json(orient="records")),
        }
    return {"per_model": _finite(out), "best_model": best.tag,
            "predictability_note": ("per gene: held-out r per fold, r_mean = their mean, 95% percentile bootstrap "
                                    "interval over test spots (resampled within folds); predictable = ci_low > 0"),
            "domains_note": ("k-means (seeded) of standardised predicted vs measured expression per held-out sample; "
                             "k = number of region label classes when the sample has labels, else 5")}


def comparison_table(cvs: dict, sample_ids: list[str]):
    """Rows encoder x head; columns: mean r per held-out sample, then the mean over folds."""
    import pandas as pd

    return pd.DataFrame([{"encoder": cv.encoder, "head": cv.head,
                          **{c: cv.r_per_sample.get(c, np.nan) for c in sample_ids}, "mean": cv.mean_r}
                         for cv in cvs.values()])


def metrics_table(cvs: dict):
    """metrics.csv: one row per encoder x head x fold, plus a "mean" row per encoder x head."""
    import pandas as pd

    df = pd.DataFrame([row for cv in cvs.values() for row in cv.rows])
    mean_rows = []
    for _, g in df.groupby(["encoder", "head"], sort=False):
        num = g.select_dtypes("number").mean(numeric_only=True).to_dict()
        first = g.iloc[0]
        row = {**{k: first[k] for k in g.columns if k not in num}, **num, "fold": "mean",
               "test_samples": "all", "train_samples": "", "genes": "per fold (see rows above)"}
        if "reduced_to_skip" in g.columns and g["reduced_to_skip"].notna().any():
            flags = g["reduced_to_skip"].dropna().astype(bool)
            row["reduced_to_skip"] = f"{int(flags.sum())} of {len(flags)} folds"
        mean_rows.append(row)
    return pd.concat([df, pd.DataFrame(mean_rows)], ignore_index=True)


def evaluation_lines(ev: dict) -> list[str]:
    """Per model: predictable genes, conformal coverage and width, domain agreement (ARI/NMI)."""
    out = []
    for tag, m in (ev.get("per_model") or {}).items():
        parts = [f"{m['n_predictable']}/{m['n_genes']} genes predictable (95% bootstrap CI of held-out r > 0)"]
        c = m.get("conformal")
        if c and c.get("coverage_mean") is not None:
            width = "unbounded (too few calibration spots)" if c.get("width_mean") is None else f"{c['width_mean']:.3f}"
            parts.append(f"conformal {c['nominal']:.0%} intervals: coverage {c['coverage_mean']:.3f}, "
                         f"mean width {width}")
            if c["coverage_mean"] < c["nominal"] - 0.05:
                parts.append("coverage BELOW nominal: the held-out spots differ from the calibration spots "
                             "(e.g. a new patient); widen or recalibrate before trusting the intervals")
        out.append(f"{tag}: " + "; ".join(parts))
        for d in m.get("domains") or []:
            words = [f"{d['sample']} k={d['k']}"]
            if d.get("ari_pred_vs_measured") is not None:
                words.append(f"ARI/NMI pred vs measured {d['ari_pred_vs_measured']:.2f}/{d['nmi_pred_vs_measured']:.2f}")
            if d.get("ari_pred_vs_labels") is not None:
                words.append(f"vs region labels {d['ari_pred_vs_labels']:.2f}/{d['nmi_pred_vs_labels']:.2f} "
                             f"(measured vs labels {d['ari_measured_vs_labels']:.2f}/{d['nmi_measured_vs_labels']:.2f})")
            out.append("  domains " + ", ".join(words))
    return out


def _prepare(out_dir: Path) -> None:
    """Refuse to replace ``out_dir`` when it is a link, a file or a folder that is not a fit output."""
    if out_dir.is_symlink():
        raise InputError(out_dir, "is a symbolic link; stfeat does not write outputs through links.",
                         "give a real folder as --out-dir.")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise InputError(out_dir, "exists and is not a folder.", "give a folder as --out-dir.")
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in _OURS)
        if foreign:
            raise InputError(out_dir, f"holds files that are not a `stfeat fit` output ({foreign[:5]}), which "
                             "writing the results would replace.", "give an empty or new --out-dir.")


def _write_text(tmp: Path, name: str, text: str) -> None:
    """One text output inside the temporary output folder; a write failure names the file (as out_dir/name)."""
    from stfeat._faults import named_write_errors

    with named_write_errors(tmp / name, what=f"the fit output {name}"):
        (tmp / name).write_text(text)


def write_report(out_dir: str | Path, cvs: dict, models: dict, fsets: dict, *, save_fold_models: bool = False,
                 plots: bool = True, metric_top_k: int = 10, heads: dict | None = None, k_neighbors: int = 8,
                 neighbor_mean: bool = False, seed: int = 0, standardize: str = "none"):
    """Write the outputs of cross-validated heads (tag -> CVResult) and their refit models (tag -> Model)."""
    from stfeat import __version__
    from stfeat.crossval import METRIC_NOTE, TRANSFORM_NOTE, skip_path_note
    from stfeat.fitting import FitResult
    from stfeat.model import Model, UnsafeEstimatorError

    import pandas as pd

    out_dir = Path(out_dir)
    first_cv = next(iter(cvs.values()))
    fs0 = next(iter(fsets.values()))
    plan, transform = first_cv.plan, first_cv.provenance["transform"]
    samples = fs0.sample_ids
    comp_df = comparison_table(cvs, samples)
    metrics_df = metrics_table(cvs)
    per_gene = pd.concat([cv.per_gene for cv in cvs.values()], ignore_index=True)
    best = max(cvs.values(), key=lambda c: (np.nan_to_num(c.mean_r, nan=-np.inf)))
    final = next(iter(models.values()))
    metrics = {
        "stfeat_version": __version__,
        "samples": [{"sample_id": s, "patient": fs0.samples[s].patient,
                     "path": (fs0.samples[s].sample.meta.get("source_path") if fs0.samples[s].sample is not None
                              else None), "n_spots": fs0.samples[s].n_spots} for s in samples],
        "notes": list(plan.notes) + [n for n in map(skip_path_note, cvs.values()) if n],
        "split": plan.to_dict(),
        "encoders": {e: {"weights_id": fs.provenance["weights_id"], "config_hash": fs.provenance["encoder_config_hash"],
                         "cache_dir": str(Path(fs.cache_dir).resolve()) if fs.cache_dir is not None else None}
                     for e, fs in fsets.items()},
        "scales_um": fs0.scales,
        "genes": {"rule": first_cv.provenance["gene_rule"],
                  "description": next(iter(first_cv.selections.values())).description,
                  "per_fold": {k: v.to_dict() for k, v in first_cv.selections.items()},
                  "final": {"rule": final.gene_rule, "description": final.gene_rule_description,
                            "genes": list(final.genes), "train_samples": list(final.train_samples)}},
        "transform": transform, "transform_note": TRANSFORM_NOTE if transform == "log1p_cp10k" else transform,
        "metric_note": METRIC_NOTE,
        "top_k_note": (f"mean_r_top{metric_top_k}_hvg / _hex: mean r over the {metric_top_k} target genes with the "
                       "highest variance / mean of log1p(cp10k) on the fold's training spots"),
        "heads": dict(heads or {}),
        "k_neighbors": k_neighbors, "neighbor_mean": neighbor_mean, "seed": seed, "standardize": standardize,
        "best_model": best.tag,
        "best_model_note": ("the encoder x head with the highest mean held-out r; `stfeat predict` uses it unless "
                            "--head is given. Refit models carry an intercept (hest-ridge's CV numbers follow "
                            "HEST's intercept-free protocol) and predictions are clipped at 0"),
        "results": json.loads(metrics_df.to_json(orient="records")),
        "comparison": json.loads(comp_df.to_json(orient="records")),
        "evaluation": evaluation_extras(cvs, best),
    }
    from stfeat._faults import named_write_errors
    from stfeat._safe_write import atomic_path

    _prepare(out_dir)
    # A fresh temporary folder of ours beside out_dir, swapped in whole when everything is written and removed
    # on any error (a full disk is a ResourceError naming the file): out_dir is never a mix of two runs.
    with named_write_errors(out_dir, what="the fit output folder"), atomic_path(out_dir, folder=True) as tmp:
        _write_text(tmp, "metrics.csv", metrics_df.to_csv(index=False))
        _write_text(tmp, "per_gene.csv", per_gene.to_csv(index=False))
        _write_text(tmp, "comparison.csv", comp_df.to_csv(index=False))
        pred_df, dom_df = _tagged(cvs, "predictability"), _tagged(cvs, "domains")
        if len(pred_df):
            from stfeat.predictability import write_gene_list

            _write_text(tmp, "predictability.csv", pred_df.to_csv(index=False))
            bp = best.predictability
            with named_write_errors(tmp / "predictable_genes.txt", what="the fit output predictable_genes.txt"):
                write_gene_list(tmp / "predictable_genes.txt", bp.loc[bp["predictable"], "gene"].tolist(),
                                header=f"genes with a held-out r whose 95% bootstrap interval lies above 0\n"
                                       f"model {best.tag}, split {plan.mode}; use with --genes file:PATH")
        if len(dom_df):
            _write_text(tmp, "domains.csv", dom_df.to_csv(index=False))
        model_dirs = {}
        for tag, model in models.items():
            model_dirs[tag] = out_dir / "models" / tag
            try:
                model.save(tmp / "models" / tag)
            except UnsafeEstimatorError as exc:
                model.save(tmp / "models" / tag, head=False)
                note = f"model {tag} saved without its head (not usable for predict): {exc}"
                log.warning("%s", note)
                metrics["notes"].append(note)
            if save_fold_models:
                cv = cvs[tag]
                for fold in (plan.folds if (tmp / "models" / tag / "head.skops").exists()
                             or (tmp / "models" / tag / "head").exists() else []):
                    sel = cv.selections[fold.name]
                    Model(estimator=cv.estimators[fold.name], head=model.head, genes=list(sel.genes),
                          transform=model.transform, layout=cv.layout, encoder=model.encoder,
                          encoder_attrs=model.encoder_attrs, gene_rule=sel.rule, gene_rule_description=sel.description,
                          cache_dir=model.cache_dir, train_samples=list(fold.train), split=plan.mode, seed=seed,
                          notes=list(plan.notes)).save(tmp / "models" / tag / "folds" / fold.name)
        # after the models: a model saved without its head adds a note
        _write_text(tmp, "metrics.json", json.dumps(metrics, indent=2, default=_json_default))
        write_predictions(tmp / "predictions", cvs, fsets)
        if plots:
            with named_write_errors(tmp / "plots", what="the plots"):
                write_plots(tmp / "plots", cvs)
    log.info("comparison (mean Pearson r per held-out sample; mean over folds):\n%s",
             comp_df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return FitResult(out_dir=out_dir, metrics=metrics, comparison=comp_df, per_gene=per_gene, cv=dict(cvs),
                     models=dict(models), model_dirs=model_dirs, notes=list(plan.notes))


def write_predictions(pred_dir: Path, cvs: dict, fsets: dict) -> None:
    """One h5ad per encoder x head: predicted (X, layers) and measured values of every held-out spot."""
    import anndata as ad
    import pandas as pd

    pred_dir.mkdir(parents=True, exist_ok=True)
    for tag, cv in cvs.items():
        fs = fsets[cv.encoder] if cv.encoder in fsets else next(iter(fsets.values()))
        transform = cv.provenance["transform"]
        genes: list[str] = list(dict.fromkeys(g for _, _, _, gl in cv.items for g in gl))
        col = {g: i for i, g in enumerate(genes)}
        P_all, M_all, obs = [], [], []
        bounds: dict[str, list] = {"lower": [], "upper": []}
        intervals = getattr(cv, "intervals", {}) or {}
        for fold, sid, P, g in cv.items:
            sf = fs.samples[sid]
            full = np.full((len(P), len(genes)), np.nan, np.float32)
            full[:, [col[x] for x in g]] = P
            P_all.append(full)
            for b, arr in zip(("lower", "upper"), intervals.get(sid, (None, None))):
                if arr is not None:
                    m = np.full((len(P), len(genes)), np.nan, np.float32)
                    m[:, [col[x] for x in g]] = arr
                    bounds[b].append(m)
            M_all.append(fs.targets(sid, genes, transform))
            pa = cv.predictions.get(sid) if cv.predictions else None
            spot_fold = pa.obs["fold"].astype(str).to_numpy() if pa is not None else fold
            region = (pa.obs["region"].astype(object).to_numpy() if pa is not None and "region" in pa.obs
                      else None)
            obs.append(pd.DataFrame({"sample": sid, "patient": sf.patient or "", "fold": spot_fold,
                                     "barcode": sf.barcodes, "x_px": sf.coords_px[:, 0], "y_px": sf.coords_px[:, 1],
                                     **({"region": region} if region is not None else {})}))
        obs_df = pd.concat(obs, ignore_index=True)
        obs_df.index = (obs_df["sample"] + ":" + obs_df["barcode"]).to_numpy()
        for c in ("sample", "patient", "fold", "barcode", "region"):
            if c in obs_df:
                obs_df[c] = obs_df[c].astype("category")
        Pm = np.concatenate(P_all)
        a = ad.AnnData(X=Pm, obs=obs_df, var=pd.DataFrame(index=pd.Index(genes, name="gene")))
        a.layers["predicted"] = Pm
        a.layers["measured"] = np.concatenate(M_all)
        for b, parts in bounds.items():
            if parts and len(parts) == len(P_all):
                a.layers[b] = np.concatenate(parts)
        a.obsm["spatial"] = obs_df[["x_px", "y_px"]].to_numpy(np.float64)
        prov = {k: cv.provenance[k] for k in ("gene_rule", "transform", "split", "stfeat_version")}
        a.uns["stfeat"] = {"encoder": cv.encoder, "head": cv.head, "notes": list(cv.plan.notes),
                           **{k: str(v) for k, v in prov.items()}}
        # scverse's spatial convention, one library per sample (sc.pl.spatial(a[a.obs["sample"] == s],
        # library_id=s)): the H&E and scale factors each sample's in-memory prediction carries
        spatial = {sid: p.uns["spatial"][sid] for sid, p in (cv.predictions or {}).items()
                   if "spatial" in p.uns and sid in p.uns["spatial"]}
        if spatial:
            a.uns["spatial"] = spatial
        from stfeat._faults import named_write_errors

        # inside the fit's temporary output folder (ours, swapped in whole): a failure leaves no output behind
        with named_write_errors(pred_dir / f"{tag}.h5ad", what="the held-out predictions", hdf5=True):
            a.write_h5ad(pred_dir / f"{tag}.h5ad")


def write_plots(plot_dir: Path, cvs: dict, n_genes: int = 3) -> None:
    """r distribution and best/worst gene maps on the H&E thumbnail, per encoder x head."""
    from stfeat import pl

    for tag, cv in cvs.items():
        d = plot_dir / tag
        d.mkdir(parents=True, exist_ok=True)
        pl.r_distribution(cv.per_gene["pearson_r"].to_numpy(), save=d / "r_distribution.png",
                          title=f"{cv.encoder} / {cv.head}: per-gene Pearson r (all folds)")
        for sid in cv.predictions:
            pl.maps(cv, sid, n=n_genes, save=d / f"maps_{sid}.png")
