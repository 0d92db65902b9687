"""Heads with a ridge skip path (attention, slide-transformer) report per fold, through the public API,
the share of their prediction from the learned residual and whether they were reduced to the ridge;
the ensemble reports its weights."""

from __future__ import annotations

import json

import pandas as pd

from stfeat.config import fit_summary
from stfeat.fitting import fit_report
from test_fit_support import ENCODER, toy_dataset

TINY = dict(d_model=8, n_heads=2, max_epochs=3, patience=2, device="cpu", batch_size=32)


def test_residual_share_and_reduced_to_skip_reach_metrics_and_summary(tmp_path):
    samples = toy_dataset(tmp_path / "cache", layout=(("A", 1), ("B", 1), ("C", 1)), n_side=6)
    # lr=0: the residual never trains, so early stopping keeps epoch 0, the ridge skip path, in every fold
    params = {"attention": {**TINY, "lr": 0.0}, "slide-transformer": {**TINY, "lr": 0.0, "chunk_size": 16},
              "ensemble": {"heads": ["ridge", "knn"], "cv": 2}}
    res = fit_report(samples, encoder=ENCODER, cache_dir=tmp_path / "cache", genes="hvg:6", plots=False,
                     head=["attention", "slide-transformer", "ensemble"], head_params=params,
                     out_dir=tmp_path / "out")
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    folds = [r for r in m["results"] if r["fold"] != "mean"]
    for head in ("attention", "slide-transformer"):
        rows = [r for r in folds if r["head"] == head]
        assert len(rows) == 3 and all(r["reduced_to_skip"] is True for r in rows)
        assert all(0.0 <= r["residual_share"] < 1e-6 for r in rows)
        note = f"{head} reduced to its ridge skip path in 3 of 3 folds"
        assert any(note in n for n in m["notes"])
        assert any(note in line for line in fit_summary(res))
    ens = [r for r in folds if r["head"] == "ensemble"]
    assert all(set(json.loads(r["ensemble_weights"])) == {"ridge", "knn"} for r in ens)
    assert all(r.get("reduced_to_skip") is None for r in ens)  # not a skip-path head
    df = pd.read_csv(tmp_path / "out" / "metrics.csv")
    att = df[df["head"] == "attention"]
    assert {"residual_share", "reduced_to_skip"} <= set(df.columns)
    assert att[att["fold"] == "mean"]["reduced_to_skip"].item() == "3 of 3 folds"
