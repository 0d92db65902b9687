"""stfeat.fitting end to end on in-code caches (sklearn Ridge and a token stand-in head)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import Ridge

from stfeat.errors import InputError
from stfeat.fitting import fit_report as fit
from test_fit_support import toy_dataset, toy_sample


class TokenRidge(RegressorMixin, BaseEstimator):
    """A stand-in token head: ridge on (masked) mean of tokens + rel_pos stats; records what it got."""

    seen: list = []

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def _flat(self, X, rel_pos, mask):
        keep = (~mask)[..., None]
        return np.concatenate([X[:, 0], (X * keep).sum(1) / keep.sum(1), np.abs(rel_pos).mean(1)], axis=1)

    def fit(self, X, Y, rel_pos=None, token_type=None, mask=None, groups=None):
        assert X.ndim == 3 and rel_pos.shape == X.shape[:2] + (2,) and token_type.shape == (X.shape[1],)
        TokenRidge.seen.append({"groups": None if groups is None else sorted(set(groups)), "T": X.shape[1]})
        self.model_ = Ridge(alpha=self.alpha).fit(self._flat(X, rel_pos, mask), Y)
        return self

    def predict(self, X, rel_pos=None, token_type=None, mask=None):
        return self.model_.predict(self._flat(X, rel_pos, mask))


def test_fit_writes_metrics_predictions_models(tmp_path):
    samples = toy_dataset(tmp_path / "cache")
    res = fit(samples, encoder="toy", cache_dir=tmp_path / "cache", head=[Ridge(alpha=1.0)],
              genes="hvg:10", out_dir=tmp_path / "out", metric_top_k=5, save_fold_models=True)
    out = tmp_path / "out"
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"]["mode"] == "lopo" and m["split"]["group_kind"] == "patient"
    pats = {s["sample_id"]: s["patient"] for s in m["samples"]}
    for f in m["split"]["folds"]:  # the recorded folds never share a patient
        assert {pats[s] for s in f["train"]}.isdisjoint({pats[s] for s in f["test"]})
    assert "ALL genes" in m["transform_note"]
    # signal is learnable: features are a linear map of the latent driving expression
    comp = pd.read_csv(out / "comparison.csv")
    assert list(comp.columns) == ["encoder", "head", "A1", "A2", "B1", "B2", "C1", "mean"]
    assert comp.loc[0, "mean"] > 0.5
    rows = pd.read_csv(out / "metrics.csv")
    assert set(rows["fold"]) == {"A", "B", "C", "mean"}
    for col in ("genes", "gene_rule", "transform", "split", "encoder", "scales_um", "head_params",
                "stfeat_version", "mean_r", "median_r", "mse", "mae", "n_nan_genes", "mean_r_top5_hvg",
                "mean_r_top5_hex"):
        assert col in rows.columns, col
    fold_rows = rows[rows["fold"] != "mean"]
    assert np.isclose(rows.loc[rows["fold"] == "mean", "mean_r"].iloc[0], fold_rows["mean_r"].mean())
    assert all(len(g.split(";")) == 10 for g in fold_rows["genes"])
    # per-gene table: r recomputed from the saved predictions matches
    import anndata as ad
    from scipy.stats import pearsonr

    a = ad.read_h5ad(out / "predictions" / "toy__ridge.h5ad")
    assert set(a.layers) == {"measured", "predicted", "lower", "upper"}  # + conformal intervals
    assert {"sample", "fold", "x_px", "y_px"} <= set(a.obs.columns) and a.obsm["spatial"].shape == (a.n_obs, 2)
    pg = pd.read_csv(out / "per_gene.csv")
    row = pg[(pg["fold"] == "C")].iloc[0]
    sel = (a.obs["fold"] == "C").to_numpy()
    j = list(a.var_names).index(row["gene"])
    r = pearsonr(a.layers["measured"][sel, j], a.layers["predicted"][sel, j])[0]
    assert r == pytest.approx(row["pearson_r"], abs=1e-5)
    # models: final + per fold; manifest carries genes chosen on all samples
    man = json.loads((out / "models" / "toy__ridge" / "model.json").read_text())
    assert man["genes"] == m["genes"]["final"]["genes"] and man["transform"] == "log1p_cp10k"
    assert man["train_samples"] == ["A1", "A2", "B1", "B2", "C1"]
    assert (out / "models" / "toy__ridge" / "folds" / "A" / "model.json").exists()
    assert (out / "plots" / "toy__ridge" / "r_distribution.png").stat().st_size > 1000
    assert (out / "plots" / "toy__ridge" / "maps_A1.png").exists()
    assert res.model_dirs["toy__ridge"] == out / "models" / "toy__ridge"


def test_fit_token_head_gets_tokens_and_patient_groups(tmp_path):
    samples = toy_dataset(tmp_path / "cache", layout=(("A", 2), ("B", 1), ("C", 1)), n_side=6)
    TokenRidge.seen = []
    res = fit(samples, encoder="toy", cache_dir=tmp_path / "cache", head=[TokenRidge(), Ridge()],
              genes="hex:5", split="group-kfold:3", k_neighbors=4, out_dir=tmp_path / "out", plots=False)
    assert len(res.comparison) == 2
    assert TokenRidge.seen[0]["T"] == 2 + 4
    # inner groups are patients (fold trains on two patients), not sections
    assert all(set(s["groups"]) <= {"A", "B", "C"} for s in TokenRidge.seen)
    man = json.loads((tmp_path / "out" / "models" / "toy__tokenridge" / "model.json").read_text())
    assert man["layout"]["kind"] == "tokens" and man["layout"]["k_neighbors"] == 4


def test_single_patient_note_in_outputs(tmp_path):
    samples = toy_dataset(tmp_path / "cache", layout=(("C", 3),), n_side=5)
    res = fit(samples, encoder="toy", cache_dir=tmp_path / "cache", head=[Ridge()], genes="common",
              out_dir=tmp_path / "out", plots=False)
    note = ("all 3 sections come from one patient: C; leave-one-section-out, which does NOT test "
            "generalisation across patients")
    assert note in res.notes
    assert note in json.loads((tmp_path / "out" / "metrics.json").read_text())["notes"]


def test_missing_cache_names_extract_command(tmp_path):
    samples = toy_dataset(tmp_path / "cache", layout=(("A", 1), ("B", 1)), n_side=4)
    extra, _ = toy_sample("Z1", "Z", n_side=4)
    with pytest.raises(InputError) as exc:
        fit(samples + [extra], encoder="toy", cache_dir=tmp_path / "cache", head=[Ridge()],
            out_dir=tmp_path / "out")
    msg = str(exc.value)
    assert "['Z1']" in msg and "stfeat extract" in msg and "--encoder toy" in msg
    with pytest.raises(InputError, match="no feature cache for encoder 'other'"):
        fit(samples, encoder="other", cache_dir=tmp_path / "cache", head=[Ridge()], out_dir=tmp_path / "o2")


def test_fold_genes_come_from_training_samples_only(tmp_path):
    from test_fit_support import gene_names, write_toy_cache

    genes = gene_names() + ["SPIKE"]
    samples = []
    for i, (sid, p) in enumerate((("A1", "A"), ("B1", "B"), ("C1", "C"))):
        n = 25
        spike = np.where(np.arange(n) % 2, 5000, 0) if sid == "C1" else np.ones(n)  # variable only in C1
        s, z = toy_sample(sid, p, n_side=5, genes=genes, extra_counts={"SPIKE": spike})
        write_toy_cache(tmp_path / "cache", s, z, seed=i)
        samples.append(s)
    res = fit(samples, encoder="toy", cache_dir=tmp_path / "cache", head=[Ridge()], genes="hvg:3",
              out_dir=tmp_path / "out", plots=False)
    per_fold = res.metrics["genes"]["per_fold"]
    assert "SPIKE" not in per_fold["C"]["genes"]  # C1 held out: its spike is invisible
    assert "SPIKE" in per_fold["A"]["genes"] and "SPIKE" in per_fold["B"]["genes"]
    assert per_fold["C"]["train_samples"] == ["A1", "B1"]
