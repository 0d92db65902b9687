"""Manifests (CSV/YAML) and resolve_samples over folders of samples."""

from __future__ import annotations

import pytest
from test_io_builders import make_hest, make_legacy, make_spaceranger

from stfeat.errors import InputError
from stfeat.io import SampleRef, read_manifest, resolve_samples


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("study")
    make_spaceranger(tmp_path / "data" / "V1", counts_fmt="h5")
    make_spaceranger(tmp_path / "data" / "V2", counts_fmt="mtx", positions="parquet")
    make_legacy(tmp_path / "data" / "st", "B1", patient_dir="B")
    return tmp_path


def test_csv_manifest_resolves_paths_relative_to_itself(study):
    m = study / "samples.csv"
    m.write_text("sample_id,patient,path,um_per_px\nV1,P1,data/V1,0.3\nV2,P1,data/V2,\nB1,B,data/st,\n")
    refs = resolve_samples(m)
    assert [(r.sample_id, r.patient) for r in refs] == [("V1", "P1"), ("V2", "P1"), ("B1", "B")]
    assert refs[0].path == study / "data" / "V1" and refs[0].options == {"um_per_px": 0.3}
    with pytest.warns(UserWarning):
        s = refs[0].load()
    assert (s.sample_id, s.patient, s.um_per_px, s.um_per_px_source) == ("V1", "P1", 0.3, "user")
    b1 = refs[2].load()
    assert b1.sample_id == "B1" and b1.n_spots == 23


def test_yaml_manifest_with_samples_key_and_image_override(study):
    from test_io_builders import save_image, tissue_image

    save_image(study / "imgs" / "v2_full.png", tissue_image(1300, 900))
    m = study / "m.yaml"
    m.write_text(
        "samples:\n"
        "  - {sample_id: V2, patient: P9, path: data/V2, image: imgs/v2_full.png}\n"
        "  - {id: V1, patient_id: P8, path: data/V1/outs}\n"
    )
    refs = read_manifest(m)
    assert [(r.sample_id, r.patient) for r in refs] == [("V2", "P9"), ("V1", "P8")]
    s = refs[0].load()
    assert s.slide.path == study / "imgs" / "v2_full.png" and s.slide.scale == 1.0


def test_manifest_row_with_missing_path_names_the_row(study):
    m = study / "bad.csv"
    m.write_text("sample_id,patient,path\nV1,P1,data/V1\nV3,P2,data/nope\n")
    with pytest.raises(InputError) as e:
        read_manifest(m)
    assert e.value.path == m and "row 2" in e.value.problem and "data/nope" in e.value.problem


def test_manifest_duplicate_ids(study):
    m = study / "dup.csv"
    m.write_text("sample_id,path\nA,data/V1\nA,data/V2\n")
    with pytest.raises(InputError, match="duplicate sample ids"):
        read_manifest(m)


def test_folder_of_sample_folders(study):
    refs = resolve_samples(study / "data")
    assert sorted(r.sample_id for r in refs) == ["B1", "V1", "V2"]
    assert {r.sample_id: r.patient for r in refs}["B1"] == "B"


def test_single_sample_and_overrides(study):
    refs = resolve_samples(study / "data" / "V1", um_per_px=0.2)
    assert len(refs) == 1 and isinstance(refs[0], SampleRef)
    assert refs[0].sample_id == "V1" and refs[0].options["um_per_px"] == 0.2


def test_hest_root_with_patients(tmp_path):
    make_hest(tmp_path / "hest", ("S1", "S2", "S3"))
    refs = resolve_samples(tmp_path / "hest")
    assert [r.patient for r in refs] == ["P0", "P1", "P2"]
