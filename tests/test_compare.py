"""`st.compare` / `stfeat compare`: feature variant x head across patients, on a small synthetic dataset."""

from __future__ import annotations

import json

import pytest

import stfeat as st
from stfeat.errors import InputError
from stfeat.variants import parse_variant


def test_variant_words_map_to_cache_folders_and_options():
    v = parse_variant("densenet121", "plain")
    assert (v.cache_encoder, v.extract_options, v.standardize) == ("densenet121", {}, "none")
    v = parse_variant("densenet121", "d8+macenko+slide-std")
    assert v.cache_encoder == "densenet121+macenko+d8" and v.standardize == "slide"
    assert v.extract_options == {"stain_norm": "macenko", "tta": "d8", "tta_hed_jitter": 0.0, "background": "keep"}
    v = parse_variant("uni", "slide-std")
    assert (v.cache_encoder, v.extract_options, v.standardize) == ("uni", {}, "slide")
    assert parse_variant("uni", "bgfill+hed0.05").cache_encoder == "uni+hed0.05+bgfill"
    with pytest.raises(InputError, match="unknown or repeated"):
        parse_variant("uni", "macenko+sepia")
    with pytest.raises(InputError, match="plain"):
        parse_variant("uni", "plain+d8")


@pytest.fixture(scope="module")
def two_patients(tmp_path_factory):
    from stfeat.datasets import make_synthetic_dataset

    tmp = tmp_path_factory.mktemp("cmp")
    ds = make_synthetic_dataset(tmp / "data", n_patients=2, sections_per_patient=2, n_genes=60, size_um=(500.0, 500.0))
    return tmp, ds


def test_compare_table_rows_columns_and_files(two_patients):
    tmp, ds = two_patients
    res = st.compare(ds.manifest, encoder="classical", cache_dir=tmp / "cache", variant=["plain", "slide-std"],
                     head=["ridge", "hest-ridge"], scales_um=[112], genes="hvg:10", num_workers=0, device="cpu",
                     out_dir=tmp / "out")
    t = res.table
    assert list(t[["variant", "head"]].itertuples(index=False, name=None)) == [
        ("plain", "ridge"), ("plain", "hest-ridge"), ("slide-std", "ridge"), ("slide-std", "hest-ridge")]
    p1, p2 = sorted(set(ds.patients))
    cross = [f"train {p2} -> test {p1}", f"train {p1} -> test {p2}"]
    assert set(cross) <= set(t.columns)
    assert {f"within {p1} (loso)", f"within {p2} (loso)"} <= set(t.columns)
    for col in cross + ["mean across patients"]:
        assert t[col].between(-1, 1).all()
    assert (t["mean across patients"] - t[cross].mean(axis=1)).abs().max() < 1e-12
    # both variants read one plain cache: slide-std changes stage two only, and it does change the numbers
    assert sorted(p.name for p in (tmp / "cache").iterdir()) == ["classical"]
    assert (t["extract_s"] > 0).all() and (t["fit_s"] > 0).all()
    assert not t.loc[t.variant == "plain", cross].to_numpy().round(6).tolist() == \
        t.loc[t.variant == "slide-std", cross].to_numpy().round(6).tolist()
    # the held-out patient's numbers are the CVResult's own
    cv = res.cvs[("plain", "ridge", cross[0])]
    assert cv.plan.mode == "lopo"
    assert t.loc[0, cross[0]] == pytest.approx(next(r["mean_r"] for r in cv.rows
                                                  if r["test_samples"].startswith(p1)))
    doc = json.loads((tmp / "out" / "compare.json").read_text())
    assert doc["provenance"]["genes"] == "hvg:10" and doc["provenance"]["transform"] == "log1p_cp10k"
    assert doc["provenance"]["variants"]["slide-std"]["standardize"] == "slide"
    assert (tmp / "out" / "compare.md").read_text().startswith("| variant | head |")
    assert res.best()["variant"] in ("plain", "slide-std")


def test_compare_extracts_a_tta_variant_into_its_own_folder(two_patients):
    tmp, ds = two_patients
    res = st.compare(ds.manifest, encoder="classical", cache_dir=tmp / "cache2", variant=["plain", "d8"],
                     head=["ridge"], scales_um=[112], genes="hvg:10", within=False, num_workers=0, device="cpu")
    assert sorted(p.name for p in (tmp / "cache2").iterdir()) == ["classical", "classical+d8"]
    assert not any(c.startswith("within") for c in res.table.columns)
    ext = res.table.set_index("variant")["extract_s"]
    assert ext["d8"] > ext["plain"]  # eight views per crop


def test_compare_needs_two_patients_and_existing_caches(two_patients, tmp_path):
    tmp, ds = two_patients
    one = ds.root / "one_patient.csv"  # beside the manifest: its paths are relative to it
    lines = ds.manifest.read_text().splitlines()
    p1 = sorted(set(ds.patients))[0]
    one.write_text("\n".join([lines[0]] + [ln for ln in lines[1:] if ln.split(",")[1] == p1]) + "\n")
    with pytest.raises(InputError, match="two patients"):
        st.compare(one, encoder="classical", cache_dir=tmp / "cache", head=["ridge"])
    with pytest.raises(InputError, match="stfeat extract"):
        st.compare(ds.manifest, encoder="classical", cache_dir=tmp_path / "empty", variant=["macenko"],
                   head=["ridge"], extract=False)


def test_cli_compare_prints_the_table(two_patients):
    from typer.testing import CliRunner

    from stfeat.cli import app

    tmp, ds = two_patients
    r = CliRunner().invoke(app, ["compare", str(ds.manifest), "-e", "classical", "--cache-dir", str(tmp / "cache"),
                                 "--variant", "plain,slide-std", "--head", "ridge", "--scales-um", "112",
                                 "--genes", "hvg:10", "--no-within", "--num-workers", "0", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "| variant | head |" in r.output and "best across patients:" in r.output
    assert "does NOT measure generalisation" in r.output
