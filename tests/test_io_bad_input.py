"""One test per kind of bad input: each error names the file, the problem and the fix."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from test_io_builders import make_hest, make_legacy, make_spaceranger, save_image, tissue_image

from stfeat.errors import InputError
from stfeat.io import read_sample


def _raises(match_path, problem, **kw):
    """Read and return the InputError, checking it names the file and carries a fix."""
    with pytest.raises(InputError) as e:
        read_sample(**kw)
    err = e.value
    assert match_path in str(err.path), (err.path, match_path)
    assert problem in err.problem, err.problem
    assert err.fix and f"{err.path}" in str(err) and "Fix:" in str(err)
    return err


@pytest.fixture
def legacy(tmp_path):
    t = make_legacy(tmp_path, "A1")
    return tmp_path, t


def _set_first(value):
    def fn(df):
        df = df.astype(float)
        df.iloc[0, 0] = value
        return df

    return fn


def _rewrite_counts(t, fn):
    df = pd.read_csv(t["counts_path"], sep="\t", index_col=0)
    df = fn(df)
    df.to_csv(t["counts_path"], sep="\t")


def test_missing_path(tmp_path):
    _raises("nothing_here", "does not exist", path=tmp_path / "nothing_here")


def test_missing_spot_file(legacy):
    root, t = legacy
    t["spots_path"].unlink()
    err = _raises("A1_selection.tsv", "spot file of section A1 is missing", path=root, fmt="legacy-st")
    assert "pixel_x" in err.fix


def test_missing_positions_file(tmp_path):
    make_spaceranger(tmp_path / "S")
    (tmp_path / "S" / "outs" / "spatial" / "tissue_positions_list.csv").unlink()
    _raises("tissue_positions", "no tissue positions file", path=tmp_path / "S")


def test_missing_hest_wsi(tmp_path):
    make_hest(tmp_path, ("X1",))
    (tmp_path / "wsis" / "X1.tif").unlink()
    _raises("X1.tif", "whole-slide image of HEST sample X1 is missing", path=tmp_path)


def test_unknown_layout(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "counts.xlsx").write_bytes(b"PK")
    err = _raises(str(tmp_path), "unknown layout", path=tmp_path)
    assert "manifest" in err.fix


def test_corrupt_image(legacy):
    root, _ = legacy
    img = next((root / "ST-imgs").rglob("*.jpg"))
    img.write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg at all" * 20)
    _raises(img.name, "cannot be decoded", path=root)


def test_truncated_image(legacy):
    root, _ = legacy
    img = next((root / "ST-imgs").rglob("*.jpg"))
    img.write_bytes(img.read_bytes()[:-200])
    _raises(img.name, "truncated", path=root)


def test_counts_and_positions_share_no_barcodes(legacy):
    root, t = legacy
    _rewrite_counts(t, lambda df: df.set_axis([f"{i}x{i + 50}" for i in range(len(df))], axis=0))
    err = _raises("A1.tsv.gz", "share no spot ids", path=root)
    assert "A1_selection.tsv" in err.problem


def test_counts_and_positions_share_some_barcodes_warns(tmp_path):
    t = make_spaceranger(tmp_path / "S", counts_fmt="mtx")
    f = tmp_path / "S" / "outs" / "filtered_feature_bc_matrix" / "barcodes.tsv.gz"
    bc = list(t["barcodes"])
    bc[0], bc[1] = "GHOST1-1", "GHOST2-1"
    with gzip.open(f, "wt") as fh:
        fh.write("\n".join(bc) + "\n")
    with pytest.warns(UserWarning, match="2 of 27 spots have counts but no position"):
        s = read_sample(tmp_path / "S")
    assert s.n_spots == 25 and "GHOST1-1" not in s.barcodes
    assert any("2 of 27 spots have counts but no position" in w for w in s.warnings)


def test_some_spots_outside_the_image_warns_and_drops(legacy):
    root, t = legacy
    # an image narrower than the array: the last column of spots (5 of 23) lies past its right edge
    w, h = t["size"]
    img = next((root / "ST-imgs").rglob("*.jpg"))
    save_image(img, tissue_image(int(4.5 * 200 + 60), h), quality=90)
    with pytest.warns(UserWarning, match="5 of 23 spot centres lie outside the image; dropped"):
        s = read_sample(root)
    assert s.n_spots == 18 and (s.coords[:, 0] < s.slide.dimensions[0]).all()


def test_all_spots_outside_the_image_is_an_error(tmp_path):
    make_legacy(tmp_path, "A1")
    small = save_image(tmp_path / "tiny.png", tissue_image(20, 20))
    err = _raises("tiny.png", "all 23 spot centres lie outside the image", path=tmp_path, image=small)
    assert "scale factor" in err.fix


def test_negative_counts(legacy):
    root, t = legacy
    _rewrite_counts(t, _set_first(-1))
    _raises("A1.tsv.gz", "negative values", path=root)


def test_non_integer_counts(legacy):
    root, t = legacy
    _rewrite_counts(t, _set_first(0.5))
    err = _raises("A1.tsv.gz", "non-integer values", path=root)
    assert "raw" in err.fix


def test_nan_counts(legacy):
    root, t = legacy
    _rewrite_counts(t, _set_first(np.nan))
    _raises("A1.tsv.gz", "NaN or infinite", path=root)


def test_duplicate_barcodes_in_counts(legacy):
    root, t = legacy
    _rewrite_counts(t, lambda df: pd.concat([df, df.iloc[[0]]]))
    _raises("A1.tsv.gz", "duplicate spot ids", path=root)


def test_duplicate_barcodes_in_positions(tmp_path):
    make_spaceranger(tmp_path / "S", positions="csv")
    f = tmp_path / "S" / "outs" / "spatial" / "tissue_positions.csv"
    df = pd.read_csv(f)
    pd.concat([df, df.iloc[[5]]]).to_csv(f, index=False)
    _raises("tissue_positions.csv", "1 duplicate barcodes", path=tmp_path / "S")


def test_unknown_um_per_px(tmp_path):
    import anndata as ad

    a = ad.AnnData(X=np.ones((4, 2), np.float32), obs=pd.DataFrame(index=list("abcd")))
    a.obsm["spatial"] = np.array([[10.0, 10], [50, 10], [10, 50], [50, 50]])
    a.write_h5ad(tmp_path / "x.h5ad")
    save_image(tmp_path / "x.png", tissue_image(80, 80))
    err = _raises("x.h5ad", "micrometres per pixel of this sample is unknown", path=tmp_path / "x.h5ad")
    assert "--um-per-px" in err.fix
