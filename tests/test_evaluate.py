"""Splits never leak a patient; metrics agree with scipy/numpy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import pearsonr

from stfeat.evaluate import (Fold, LeakageError, assert_disjoint, gene_metrics, inner_groups, make_splits,
                             pearson_per_gene, summarize)

# patients spanning several sections, in interleaved order
SAMPLES = ["a1", "b1", "a2", "c1", "b2", "d1", "a3", "e1", "d2", "f1"]
PATIENTS = ["A", "B", "A", "C", "B", "D", "A", "E", "D", "F"]


@pytest.mark.parametrize("split", ["auto", "lopo", "group-kfold:2", "group-kfold:3", "group-kfold:6"])
def test_no_patient_in_train_and_test(split):
    plan = make_splits(SAMPLES, PATIENTS, split)
    pat = dict(zip(SAMPLES, PATIENTS))
    tested = []
    for f in plan.folds:
        assert {pat[s] for s in f.train}.isdisjoint({pat[s] for s in f.test}), (split, f)
        assert sorted(f.train + f.test) == sorted(SAMPLES)
        tested += f.test
    assert sorted(tested) == sorted(SAMPLES)  # every sample held out exactly once
    assert plan.group_kind == "patient"


def test_loso_refused_when_it_would_leak_patients():
    with pytest.raises(ValueError, match="would put sections of one patient"):
        make_splits(SAMPLES, PATIENTS, "loso")


def test_single_patient_falls_back_to_loso_loudly(caplog):
    ids = ["C2", "C3", "C4", "C5", "C6"]
    plan = make_splits(ids, ["C"] * 5, "auto")
    assert plan.mode == "loso"
    assert [f.test for f in plan.folds] == [[s] for s in ids]
    msg = ("all 5 sections come from one patient: C; leave-one-section-out, which does NOT test "
           "generalisation across patients")
    assert msg in plan.notes
    assert msg in caplog.text
    with pytest.raises(ValueError, match="at least two patients"):
        make_splits(ids, ["C"] * 5, "lopo")


def test_no_patient_ids_groups_by_section():
    plan = make_splits(["x", "y", "z"], [None, None, None], "auto")
    assert plan.group_kind == "section" and plan.mode == "loso"
    assert any("no patient ids" in n for n in plan.notes)
    assert plan.to_dict()["group_kind"] == "section"


def test_partial_patient_ids_never_merge_unknowns():
    plan = make_splits(["a1", "a2", "u1", "u2"], ["A", "A", None, None], "lopo")
    assert len(plan.folds) == 3  # A, u1 alone, u2 alone
    assert any("no patient id" in n for n in plan.notes)


def test_leak_assertion_fires():
    groups = {"a1": "A", "a2": "A", "b1": "B"}
    with pytest.raises(LeakageError):
        assert_disjoint([Fold("bad", ["a1", "b1"], ["a2"])], groups)
    assert_disjoint([Fold("ok", ["a1", "a2"], ["b1"])], groups)


def test_bad_split_specs():
    for bad in ("kfold", "group-kfold:x", "group-kfold:1", "lopo:3"):
        with pytest.raises(ValueError):
            make_splits(SAMPLES, PATIENTS, bad)
    with pytest.raises(ValueError, match="needs at least 7 patients"):
        make_splits(SAMPLES, PATIENTS, "group-kfold:7")


def test_inner_groups_prefer_patients():
    s = np.array(["a1", "a1", "b1", "a2"], dtype=object)
    assert list(inner_groups(s, {"a1": "A", "a2": "A", "b1": "B"})) == ["A", "A", "B", "A"]
    # one patient in training: fall back to sections
    assert list(inner_groups(s, {"a1": "A", "a2": "A", "b1": "A"})) == list(s)


def test_pearson_matches_scipy_and_constant_is_nan():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(60, 5))
    p = y + rng.normal(size=(60, 5))
    p[:, 3] = 2.5  # constant prediction
    y[:, 4] = 1.0  # constant measurement
    r = pearson_per_gene(y, p)
    for j in range(3):
        assert r[j] == pytest.approx(pearsonr(y[:, j], p[:, j])[0], abs=1e-12)
    assert np.isnan(r[3]) and np.isnan(r[4])
    table = gene_metrics(y, p, list("ABCDE"))
    s = summarize(table, top_hvg=["A", "B"], top_hex=["D"])
    assert s["n_nan_genes"] == 2
    assert s["mean_r"] == pytest.approx(np.mean(r[:3]))
    assert s["median_r"] == pytest.approx(np.median(r[:3]))
    assert s["mse"] == pytest.approx(np.mean((p - y) ** 2))
    assert s["mae"] == pytest.approx(np.mean(np.abs(p - y)))
    assert s["mean_r_top2_hvg"] == pytest.approx(np.mean(r[:2]))
    assert np.isnan(s["mean_r_top1_hex"])
