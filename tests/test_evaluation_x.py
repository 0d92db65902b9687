"""Evaluation for users with little data (issue 10): blocked splits within a section, per-gene
predictability, split-conformal intervals, spatial-domain agreement, region labels of the legacy-ST reader."""

from __future__ import annotations

import json

import numpy as np
import pytest

import stfeat as st
from stfeat.blocks import BUFFER_PITCHES, block_masks, spot_pitch_um
from stfeat.errors import InputError
from stfeat.evaluate import make_splits, parse_split
from test_fit_support import toy_dataset


@pytest.fixture(scope="module")
def toy3(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalx")
    samples = toy_dataset(tmp / "cache", layout=(("A", 1), ("B", 1), ("C", 1)), n_side=10)
    fs = st.FeatureSet.load(samples, encoder="toy", cache_dir=tmp / "cache")
    return tmp, samples, fs


@pytest.fixture(scope="module")
def cv_lopo(toy3):
    _, _, fs = toy3
    return st.cross_validate(fs, head="ridge", genes="hvg:20", split="lopo", n_boot=100)


@pytest.fixture(scope="module")
def cv_block(toy3):
    _, _, fs = toy3
    return st.cross_validate(fs.subset(["A1"]), head="ridge", genes="hvg:20", split="auto", n_boot=100)


# --------------------------------------------------------------------------------------------- 1. blocks


def _grid(n_side=12, pitch=100.0, jitter=0.0, seed=0):
    g = np.stack(np.meshgrid(np.arange(n_side), np.arange(n_side)), -1).reshape(-1, 2) * pitch
    return g + np.random.default_rng(seed).normal(scale=jitter, size=g.shape)


@pytest.mark.parametrize("k", [2, 5])
@pytest.mark.parametrize("jitter", [0.0, 7.0])
def test_block_split_keeps_a_buffer_and_tests_every_spot_once(k, jitter):
    xy = _grid(jitter=jitter)
    plan = make_splits(["S"], ["P"], f"block:{k}", coords_um={"S": xy})
    assert plan.mode == f"block:{k}" and len(plan.folds) == k
    tested = np.zeros(len(xy), int)
    pitch = spot_pitch_um(xy)
    for f in plan.folds:
        tr, te = f.train_masks["S"], f.test_masks["S"]
        tested += te
        assert tr.any() and te.any() and not (tr & te).any()
        # no training spot within one pitch (the buffer is 1.5 pitches) of any test spot
        d = np.linalg.norm(xy[tr][:, None] - xy[te][None], axis=-1).min()
        assert d > BUFFER_PITCHES * pitch >= pitch
        # the test block's direct lattice neighbours outside it are all dropped from training
        dropped = ~tr & ~te
        assert dropped.any()
    np.testing.assert_array_equal(tested, 1)


def test_block_split_is_deterministic_and_contiguous():
    xy = _grid()
    a, _ = block_masks(xy, 4, seed=0)
    b, _ = block_masks(xy, 4, seed=0)
    for (tra, tea), (trb, teb) in zip(a, b):
        np.testing.assert_array_equal(tea, teb)
        np.testing.assert_array_equal(tra, trb)
    # a k-means block is contiguous: every test spot has a test neighbour at one pitch
    for _, te in a:
        pts = xy[te]
        d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        assert (d.min(axis=1) <= 100.0 + 1e-6).all()


def test_parse_split_block_and_bad_forms():
    assert parse_split("block") == ("block", 5)
    assert parse_split("block:3") == ("block", 3)
    for bad in ("block:1", "block:x"):
        with pytest.raises(InputError):
            parse_split(bad)


def test_single_sample_other_splits_still_refuse_with_a_fix():
    with pytest.raises(InputError) as e:
        make_splits(["S"], ["P"], "lopo", coords_um={"S": _grid()})
    assert "block" in e.value.fix


def test_auto_with_one_sample_is_block_and_says_so(cv_block):
    plan = cv_block.plan
    assert plan.mode == "block:5"
    assert any("does NOT measure generalisation to new patients" in n for n in plan.notes)
    assert "spots within sections" in cv_block.provenance["split"]
    # every spot tested exactly once: the merged predictions have no all-NaN row, one fold per spot
    a = cv_block.predictions["A1"]
    assert a.n_obs == 100 and set(a.obs["fold"]) == {f"block{i}" for i in range(5)}
    assert not np.isnan(np.asarray(a.X)).all(axis=1).any()
    assert sum(r["n_test_spots"] for r in cv_block.rows) == 100
    # the training side never includes a test spot or a spot within the buffer
    for r in cv_block.rows:
        assert r["n_train_spots"] + r["n_test_spots"] < 100
    assert cv_block.mean_r > 0.3  # real signal in the toy data
    # the per-sample r of a blocked split is the mean over the folds (blocks), like the fold mean
    assert cv_block.r_per_sample["A1"] == pytest.approx(cv_block.mean_r)


def test_blocked_gene_choice_uses_training_spots_only(toy3, monkeypatch):
    """Genes are chosen per fold on the expression of the fold's TRAINING spots, not the whole section."""
    import stfeat.targets as T

    _, _, fs = toy3
    seen = []
    real = T.select_genes

    def spy(train, rule):
        seen.append(sum(e.counts.shape[0] for e in train))
        return real(train, rule)

    monkeypatch.setattr(T, "select_genes", spy)
    cv = st.cross_validate(fs.subset(["A1"]), head="ridge", genes="hvg:10", split="block:4", conformal=None,
                           n_boot=10)
    assert seen == [r["n_train_spots"] for r in cv.rows]


# --------------------------------------------------------------------------------------------- 2. predictability


def test_predictability_table(cv_lopo):
    p = cv_lopo.predictability
    assert list(p.columns[:5]) == ["gene", "r_mean", "ci_low", "ci_high", "predictable"]
    assert {"r_A", "r_B", "r_C", "r_pooled"} <= set(p.columns)
    assert (p["ci_low"] <= p["r_mean"] + 1e-9).all() and (p["r_mean"] <= p["ci_high"] + 1e-9).all()
    assert (p["predictable"] == (p["ci_low"] > 0)).all()
    # the fold columns agree with the per-gene table of record
    pg = cv_lopo.per_gene.set_index(["fold", "gene"])["pearson_r"]
    checked = 0
    for _, row in p.iterrows():
        for fold in ("A", "B", "C"):
            if (fold, row["gene"]) in pg.index:
                assert row[f"r_{fold}"] == pytest.approx(pg[(fold, row["gene"])])
                checked += 1
            else:  # not a target gene of that fold
                assert np.isnan(row[f"r_{fold}"])
    assert checked >= 3 * 20
    assert cv_lopo.n_predictable >= 10  # the toy genes are driven by the features


def test_predictability_flags_noise_genes_as_not_predictable():
    from stfeat.predictability import predictability

    rng = np.random.default_rng(0)
    pieces = []
    for f in range(3):
        Y = rng.normal(size=(200, 2))
        P = np.c_[Y[:, 0] + 0.5 * rng.normal(size=200), rng.normal(size=200)]  # gene 0 predicted, gene 1 noise
        pieces.append((f"f{f}", ["good", "noise"], Y, P))
    t = predictability(pieces, n_boot=200, seed=0).set_index("gene")
    assert t.loc["good", "predictable"] and t.loc["good", "ci_low"] > 0.7
    assert not t.loc["noise", "predictable"] and t.loc["noise", "ci_low"] < 0 < t.loc["noise", "ci_high"]
    # seeded: the same interval twice
    t2 = predictability(pieces, n_boot=200, seed=0).set_index("gene")
    assert t2.loc["noise", "ci_low"] == t.loc["noise", "ci_low"]


def test_gene_list_reads_back_as_a_gene_rule(tmp_path):
    from stfeat.predictability import write_gene_list
    from stfeat.targets import GeneRule, read_gene_list

    path = tmp_path / "g.txt"
    write_gene_list(path, ["G001", "G007"], header="a comment\nsecond line")
    assert read_gene_list(GeneRule.parse(f"file:{path}").path) == ["G001", "G007"]


# --------------------------------------------------------------------------------------------- 3. conformal


def test_conformal_quantile_is_finite_sample_corrected():
    from stfeat.uncertainty import conformal_quantile

    r = np.arange(1, 10, dtype=float)[:, None]  # n = 9: ceil(10 * 0.9) / 9 = 1 -> the largest residual
    assert conformal_quantile(r, 0.9)[0] == 9
    assert np.isinf(conformal_quantile(r[:5], 0.9)[0])  # too few residuals for 90%: an infinite interval


@pytest.mark.parametrize("split", ["lopo", "block"])
def test_conformal_intervals_reach_nominal_coverage(toy3, cv_lopo, cv_block, split):
    cv = cv_lopo if split == "lopo" else cv_block
    cov = np.array([r["conformal_coverage"] for r in cv.rows])
    n = np.array([r["n_test_spots"] for r in cv.rows])
    # pooled coverage over all test spots x genes: nominal 0.9 within sampling tolerance
    pooled = float((cov * n).sum() / n.sum())
    assert pooled == pytest.approx(0.9, abs=0.05)
    assert (cv.per_gene["coverage"].between(0.6, 1.0)).all()
    assert (cv.per_gene["interval_width"] > 0).all()
    sid = next(iter(cv.predictions))
    a = cv.predictions[sid]
    lo, hi, x = (np.asarray(a.layers[k]) for k in ("lower", "upper", "predicted"))
    ok = np.isfinite(x)
    assert (lo[ok] <= x[ok]).all() and (x[ok] <= hi[ok]).all()
    m = np.asarray(a.layers["measured"])
    inside = ((m >= lo) & (m <= hi))[ok].mean()
    assert inside == pytest.approx(0.9, abs=0.08)


def test_conformal_never_sees_the_test_spots(toy3, monkeypatch):
    """The calibration residuals come from inner fits on training rows only."""
    import stfeat.uncertainty as U

    _, _, fs = toy3
    sizes = []
    real = U.calibrate

    def spy(make_est, fit, predict, inputs, Y, *a, **k):
        sizes.append(len(Y))
        return real(make_est, fit, predict, inputs, Y, *a, **k)

    monkeypatch.setattr(U, "calibrate", spy)
    cv = st.cross_validate(fs, head="ridge", genes="hvg:10", split="lopo", n_boot=10)
    assert sizes == [r["n_train_spots"] for r in cv.rows] == [200, 200, 200]


def test_conformal_off_and_bad_values(toy3):
    _, _, fs = toy3
    cv = st.cross_validate(fs, head="ridge", genes="hvg:10", split="lopo", conformal=None, n_boot=10)
    assert "coverage" not in cv.per_gene and "lower" not in cv.predictions["A1"].layers
    assert np.isnan(cv.coverage)
    with pytest.raises(InputError):
        st.cross_validate(fs, head="ridge", genes="hvg:10", split="lopo", conformal=1.5)


# --------------------------------------------------------------------------------------------- 4. domains


def test_domain_agreement_on_known_clusters():
    import anndata as ad

    from stfeat.domains import domain_agreement

    rng = np.random.default_rng(0)
    lab = np.repeat(["tumour", "stroma", "fat"], 60)
    centers = {"tumour": 0.0, "stroma": 3.0, "fat": 6.0}
    M = np.array([[centers[x]] * 4 for x in lab]) + 0.3 * rng.normal(size=(180, 4))
    good = ad.AnnData(X=M + 0.3 * rng.normal(size=M.shape))
    good.layers["measured"] = M
    bad = ad.AnnData(X=rng.normal(size=M.shape))
    bad.layers["measured"] = M
    labels = lab.astype(object)
    labels[:5] = None  # unlabelled spots are left out of the label comparison
    d = domain_agreement({"good": good, "bad": bad}, {"good": labels, "bad": labels}).set_index("sample")
    assert d.loc["good", "k"] == 3 and d.loc["good", "k_source"] == "label classes"
    assert d.loc["good", "n_labelled"] == 175
    assert d.loc["good", "ari_pred_vs_labels"] > 0.9 and d.loc["good", "nmi_pred_vs_measured"] > 0.9
    assert d.loc["bad", "ari_pred_vs_labels"] < 0.1
    nolab = domain_agreement({"good": good})
    assert nolab.loc[0, "k"] == 5 and "ari_pred_vs_labels" not in nolab


def test_cv_domains_use_labels_from_the_feature_set(toy3):
    _, _, fs = toy3
    sub = fs.subset(["A1", "B1"])
    a = sub.samples["A1"].sample.adata
    old = a.obs.copy()
    try:
        a.obs["region"] = np.where(np.asarray(a.obsm["spatial"])[:, 0] > 1200, "left", "right")
        assert list(sub.labels("A1")[:2]) == list(a.obs["region"][:2])
        assert sub.labels("B1") is None
        cv = st.cross_validate(sub, head="ridge", genes="hvg:10", split="lopo", conformal=None, n_boot=10)
        d = cv.domains.set_index("sample")
        assert d.loc["A1", "k"] == 2 and np.isfinite(d.loc["A1", "ari_pred_vs_labels"])
        assert d.loc["B1", "k_source"] == "default" and np.isnan(d.loc["B1"].get("ari_pred_vs_labels", np.nan))
        assert "region" in cv.predictions["A1"].obs
    finally:
        a.obs = old


# --------------------------------------------------------------------------------------------- 5. fit output


def test_fit_report_writes_and_prints_the_new_evaluation(toy3, tmp_path):
    from stfeat.config import fit_summary
    from stfeat.targets import read_gene_list

    from stfeat.fitting import fit_report

    tmp, samples, fs = toy3
    res = fit_report(samples, encoder="toy", cache_dir=tmp / "cache", head="ridge", genes="hvg:15",
                                out_dir=tmp_path / "out", plots=False)
    out = tmp_path / "out"
    for name in ("predictability.csv", "predictable_genes.txt", "domains.csv"):
        assert (out / name).is_file(), name
    genes = read_gene_list(out / "predictable_genes.txt")
    m = json.loads((out / "metrics.json").read_text())
    ev = m["evaluation"]["per_model"]["toy__ridge"]
    assert genes == ev["predictable_genes"] and ev["n_predictable"] == len(genes) > 0
    assert ev["conformal"]["nominal"] == 0.9 and 0.8 < ev["conformal"]["coverage_mean"] <= 1
    assert len(ev["domains"]) == 3
    import anndata as ad

    pa = ad.read_h5ad(out / "predictions" / "toy__ridge.h5ad")
    assert {"lower", "upper", "measured"} <= set(pa.layers)
    text = "\n".join(fit_summary(res))
    assert "genes predictable" in text and "coverage" in text and "ARI/NMI pred vs measured" in text
    # the list reads back as a gene rule of a new fit
    cv = st.cross_validate(fs, head="ridge", genes=f"file:{out / 'predictable_genes.txt'}", split="lopo",
                           conformal=None, n_boot=10)
    assert set(cv.selections["A"].genes) == set(genes)


def test_fit_options_and_cli_have_conformal():
    from stfeat.options import FitOptions, OptionError, build

    assert FitOptions.__dataclass_fields__["conformal"].default == 0.9
    with pytest.raises(OptionError):
        build(FitOptions, {"samples": ".", "encoder": ["x"], "conformal": 1.2})


# --------------------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_her2st_a1_region_labels_are_attached(shared_data):
    import pandas as pd

    root = shared_data / "her2st_A1"
    if not (root / "ST-pat" / "A1_labeled_coordinates.tsv").is_file():
        pytest.skip(f"{root}/ST-pat/A1_labeled_coordinates.tsv is absent")
    s = st.read(root)
    s = s[0] if isinstance(s, list) else s
    region = s.adata.obs["region"]
    counts = region.value_counts()
    file_counts = pd.read_csv(root / "ST-pat" / "A1_labeled_coordinates.tsv", sep="\t")["label"].value_counts()
    assert file_counts["invasive cancer"] == 284
    # 346 spots have counts (2 listed spots have none): both of those are invasive cancer
    assert s.adata.n_obs == 346 and region.notna().all()
    assert counts["invasive cancer"] == 282
    assert counts["cancer in situ"] == 21 and counts["connective tissue"] == 24
    assert counts["adipose tissue"] == 12 and counts["immune infiltrate"] == 2 and counts["undetermined"] == 5
    assert any("region labels" in p for p in s.meta["provenance"])
