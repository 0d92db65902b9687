"""`stfeat info` through typer's CliRunner: real HER2ST and every shared fixture, built data, errors."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner
from test_io_builders import make_hest, make_spaceranger

from stfeat.cli import app

runner = CliRunner()


def _info(*args: str):
    return runner.invoke(app, ["info", *map(str, args)])


def _blocks(out: str) -> dict[str, dict[str, str]]:
    """sample id -> {field: value} parsed from the printed blocks."""
    blocks = {}
    for chunk in out.strip().split("\n\n"):
        fields: dict[str, str] = {}
        for line in chunk.splitlines():
            k, _, v = line.partition(" ")
            fields.setdefault(k, v.strip()) if k != "warning" else fields.update(
                warning=fields.get("warning", "") + v.strip() + "\n")
        blocks[fields["sample"]] = fields
    return blocks


def _um(field: str) -> float:
    return float(re.match(r"([0-9.]+)", field).group(1))


def test_info_her2st_folder_prints_five_blocks(her2st):
    r = _info(her2st)
    assert r.exit_code == 0, r.output
    b = _blocks(r.output)
    expect = {"C2": 187, "C3": 180, "C4": 184, "C5": 181, "C6": 178}
    assert sorted(b) == sorted(expect)
    for sid, n in expect.items():
        assert int(b[sid]["spots"]) == n
        assert b[sid]["patient"] == "C" and b[sid]["format"] == "legacy-st"
        assert _um(b[sid]["um/px"]) == pytest.approx(0.69, abs=0.01) and "estimated" in b[sid]["um/px"]
        assert b[sid]["levels"].startswith("3 (")
    assert "2 of 182 spots under tissue have no counts" in b["C3"]["warning"]


def test_info_one_her2st_section(her2st):
    r = _info(her2st, "--sample-id", "C5")
    assert r.exit_code == 0 and list(_blocks(r.output)) == ["C5"]
    assert "9272 x 9901 px" in r.output


@pytest.mark.parametrize(
    "rel, args, n, um",
    [
        ("fixtures/visium_spaceranger_v1", [], 100, 0.7252),
        ("fixtures/squidpy_visium", [], 100, 0.7252),
        ("fixtures/squidpy_visium/test_data.h5ad", ["--image", "fixtures/squidpy_visium/test_img.jpg"], 49, 0.7267),
        ("fixtures/hest_xenium_NCBI858", ["--um-per-px", "2.125"], 200, 2.125),
        ("fixtures/legacy_st_mob1", [], 379, 4.379),
    ],
)
def test_info_every_shared_fixture(shared_data, rel, args, n, um):
    args = [str(shared_data / a) if a.startswith("fixtures/") else a for a in args]
    r = _info(shared_data / rel, *args)
    assert r.exit_code == 0, r.output
    (b,) = _blocks(r.output).values()
    assert int(b["spots"]) == n and _um(b["um/px"]) == pytest.approx(um, abs=0.002)


def test_info_visium_reports_hires_mapping(shared_data):
    r = _info(shared_data / "fixtures" / "visium_spaceranger_v1")
    assert "2000 x 2000 px at 0.150015 px per full-res px" in r.output and "reduced detail" in r.output


def test_info_error_without_um_per_px_is_one_clean_line(shared_data):
    r = _info(shared_data / "fixtures" / "hest_xenium_NCBI858")
    assert r.exit_code == 1
    assert "NCBI858.h5ad" in r.output and "--um-per-px" in r.output and "Traceback" not in r.output


def test_info_missing_path(tmp_path):
    r = _info(tmp_path / "absent")
    assert r.exit_code == 1 and "does not exist" in r.output


def test_info_built_manifest_and_hest(tmp_path):
    make_spaceranger(tmp_path / "V1")
    make_hest(tmp_path / "hest", ("H1", "H2"))
    m = tmp_path / "m.csv"
    m.write_text("sample_id,patient,path\nV1,PA,V1\nH2,PB,hest/st/H2.h5ad\n")
    r = _info(m)
    assert r.exit_code == 0, r.output
    b = _blocks(r.output)
    assert b["V1"]["patient"] == "PA" and b["H2"]["patient"] == "PB" and b["H2"]["format"] == "hest"
    assert b["H2"]["levels"].startswith("3 (")
    r = _info(tmp_path / "hest")
    assert sorted(_blocks(r.output)) == ["H1", "H2"]


def test_info_on_a_feature_cache_uses_describe_cache(tmp_path):
    cache = pytest.importorskip("stfeat.cache")
    if not hasattr(cache, "describe_cache") or not hasattr(cache, "write_cache"):
        pytest.skip("stfeat.cache has no describe_cache/write_cache yet")
    import numpy as np

    p = cache.write_cache(
        tmp_path / "s.h5", barcodes=np.array(["a", "b", "c"]), coords=np.zeros((3, 2)),
        features={"224": np.zeros((3, 4), np.float32)},
        attrs={"encoder": "test", "sample_id": "s", "um_per_px": 0.5, "scales_um": [224.0]},
    )
    r = _info(p)
    assert r.exit_code == 0, r.output
    assert r.output.strip() == cache.describe_cache(p).strip()


def test_info_folder_with_one_unreadable_sample_reports_it_and_goes_on(shared_data):
    r = _info(shared_data / "fixtures")
    assert r.exit_code == 1
    assert r.output.count("format      ") == 3  # MOB1, squidpy_visium, visium_spaceranger_v1
    assert "sample      NCBI858\nerror" in r.output and "1 of 4 samples could not be read" in r.output
