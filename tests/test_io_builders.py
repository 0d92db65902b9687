"""Tiny samples of every supported layout, built in code (imported by the io, slide and info tests).

This module holds builders only; pytest collects no tests from it.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np


def tissue_image(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A smooth, deterministic RGB 'tissue' (gradients plus blobs) of (h, w, 3) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[..., 0] = 180 + 60 * np.sin(xx / 37.0)
    img[..., 1] = 120 + 80 * np.cos(yy / 53.0)
    img[..., 2] = 150 + 50 * np.sin((xx + yy) / 71.0)
    for _ in range(8):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, max(12, min(w, h) / 6))
        img[((xx - cx) ** 2 + (yy - cy) ** 2) < r * r] *= 0.6
    return np.clip(img, 0, 255).astype(np.uint8)


def save_image(path: Path, arr: np.ndarray, **kw) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def save_pyramid_tiff(path: Path, arr: np.ndarray, um_per_px: float | None, levels: int = 3) -> Path:
    """A tiled pyramidal TIFF (sub-IFDs, 2x per level) carrying resolution tags in centimetres."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {}
    if um_per_px is not None:
        kw = dict(resolution=(1e4 / um_per_px, 1e4 / um_per_px), resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tw:
        tw.write(arr, tile=(128, 128), subifds=levels - 1, photometric="rgb", **kw)
        for i in range(1, levels):
            f = 2**i
            lk = {}
            if um_per_px is not None:
                lk = dict(resolution=(1e4 / (um_per_px * f),) * 2, resolutionunit="CENTIMETER")
            tw.write(arr[::f, ::f], tile=(128, 128), subfiletype=1, photometric="rgb", **lk)
    return path


def counts(n: int, g: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(2.0, size=(n, g)).astype(np.int64)


def hex_grid(n_rows: int, n_cols: int, pitch_px: float, origin=(100.0, 100.0)) -> tuple[np.ndarray, np.ndarray]:
    """Visium-like hexagonal lattice: (array_row, array_col) and centres (x, y) px."""
    rows, cols, xy = [], [], []
    for r in range(n_rows):
        for c in range(n_cols):
            x = origin[0] + c * pitch_px + (pitch_px / 2 if r % 2 else 0)
            y = origin[1] + r * pitch_px * np.sqrt(3) / 2
            rows.append(r)
            cols.append(2 * c + (r % 2))
            xy.append((x, y))
    return np.array(rows), np.array(cols), np.array(xy, dtype=np.float64)


def make_spaceranger(
    root: Path, *, counts_fmt: str = "h5", positions: str = "list", um_per_px: float = 0.5,
    image: str = "hires", n_rows: int = 5, n_cols: int = 6, n_genes: int = 12, off_tissue: int = 3,
) -> dict:
    """A Space Ranger outs/ folder. Returns the truth (barcodes in tissue, coords, counts, um_per_px)."""
    import h5py
    import pandas as pd
    import scipy.io
    import scipy.sparse as sp

    outs = root / "outs"
    spatial = outs / "spatial"
    spatial.mkdir(parents=True)
    pitch = 100.0 / um_per_px
    arow, acol, xy = hex_grid(n_rows, n_cols, pitch)
    n = len(xy)
    bc = np.array([f"AAAC{i:06d}-1" for i in range(n)])
    in_tissue = np.ones(n, int)
    in_tissue[:off_tissue] = 0
    X = counts(n, n_genes)
    genes = np.array([f"GENE{j}" for j in range(n_genes)])
    ids = np.array([f"ENSG{j:05d}" for j in range(n_genes)])
    keep = in_tissue == 1
    # the filtered matrix holds the in-tissue barcodes only
    Xf, bcf = X[keep], bc[keep]
    if counts_fmt == "h5":
        m = sp.csc_matrix(Xf.T)
        with h5py.File(outs / "filtered_feature_bc_matrix.h5", "w") as f:
            g = f.create_group("matrix")
            g["data"], g["indices"], g["indptr"] = m.data.astype(np.int32), m.indices, m.indptr
            g["shape"] = np.array(m.shape, dtype=np.int32)
            g["barcodes"] = np.array([b.encode() for b in bcf])
            ff = g.create_group("features")
            ff["id"] = np.array([s.encode() for s in ids])
            ff["name"] = np.array([s.encode() for s in genes])
            ff["feature_type"] = np.array([b"Gene Expression"] * n_genes)
    else:
        d = outs / "filtered_feature_bc_matrix"
        d.mkdir()
        with gzip.open(d / "matrix.mtx.gz", "wb") as fh:
            scipy.io.mmwrite(fh, sp.coo_matrix(Xf.T))
        with gzip.open(d / "barcodes.tsv.gz", "wt") as fh:
            fh.write("\n".join(bcf) + "\n")
        with gzip.open(d / "features.tsv.gz", "wt") as fh:
            fh.write("\n".join(f"{i}\t{g}\tGene Expression" for i, g in zip(ids, genes)) + "\n")
    pos = pd.DataFrame({
        "barcode": bc, "in_tissue": in_tissue, "array_row": arow, "array_col": acol,
        "pxl_row_in_fullres": np.round(xy[:, 1]).astype(int), "pxl_col_in_fullres": np.round(xy[:, 0]).astype(int),
    })
    if positions == "list":
        pos.to_csv(spatial / "tissue_positions_list.csv", header=False, index=False)
    elif positions == "csv":
        pos.to_csv(spatial / "tissue_positions.csv", index=False)
    else:
        pos.to_parquet(spatial / "tissue_positions.parquet", index=False)
    full_w = int(xy[:, 0].max() + 100)
    full_h = int(xy[:, 1].max() + 100)
    hires_s = 0.25
    sf = {"spot_diameter_fullres": 65.0 / um_per_px, "tissue_hires_scalef": hires_s,
          "tissue_lowres_scalef": hires_s / 4, "fiducial_diameter_fullres": 90.0 / um_per_px}
    (spatial / "scalefactors_json.json").write_text(json.dumps(sf))
    full = tissue_image(full_w, full_h)
    if image == "hires":
        from PIL import Image

        hi = Image.fromarray(full).resize((round(full_w * hires_s), round(full_h * hires_s)), Image.Resampling.LANCZOS)
        hi.save(spatial / "tissue_hires_image.png")
    coords = np.column_stack([pos.pxl_col_in_fullres, pos.pxl_row_in_fullres]).astype(float)[keep]
    return {"outs": outs, "barcodes": bcf, "coords": coords, "X": Xf, "genes": genes, "um_per_px": um_per_px,
            "full": full, "fullres_size": (full_w, full_h)}


def make_hest(root: Path, ids=("TENX1", "TENX2"), *, um_per_px: float = 0.5, meta_um: bool = True,
              tiff_um: bool = True, n_rows: int = 4, n_cols: int = 5, n_genes: int = 10) -> dict:
    """A HEST-1k root: st/{id}.h5ad, wsis/{id}.tif (pyramid), metadata/{id}.json."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    truth = {}
    for k, sid in enumerate(ids):
        _, _, xy = hex_grid(n_rows, n_cols, 100.0 / um_per_px)
        n = len(xy)
        X = counts(n, n_genes, seed=k)
        a = ad.AnnData(X=sp.csr_matrix(X.astype(np.float32)),
                       obs=pd.DataFrame(index=[f"{sid}_{i}" for i in range(n)]),
                       var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)]))
        a.obsm["spatial"] = xy
        (root / "st").mkdir(parents=True, exist_ok=True)
        a.write_h5ad(root / "st" / f"{sid}.h5ad")
        w, h = int(xy[:, 0].max() + 150), int(xy[:, 1].max() + 150)
        save_pyramid_tiff(root / "wsis" / f"{sid}.tif", tissue_image(w, h, seed=k), um_per_px if tiff_um else None)
        meta = {"id": sid, "patient": f"P{k}", "st_technology": "Visium", "organ": "Bowel",
                "pixel_size_um_estimated": um_per_px * 1.01 if meta_um else None,
                "pixel_size_um_embedded": um_per_px if meta_um else None}
        (root / "metadata").mkdir(exist_ok=True)
        (root / "metadata" / f"{sid}.json").write_text(json.dumps(meta))
        truth[sid] = {"n": n, "coords": xy, "X": X, "meta": meta, "size": (w, h)}
    return truth


def make_legacy(root: Path, section: str = "A1", *, patient_dir: str = "A", um_per_px: float = 1.0,
                n: int = 5, n_genes: int = 8, extra_counts_rows: int = 2, unselected: int = 2) -> dict:
    """A HER2ST-style legacy ST checkout with one section: ST-cnts, ST-spotfiles, ST-imgs/{P}/{S}/."""
    import pandas as pd

    step = 200.0 / um_per_px
    xs, ys = np.meshgrid(np.arange(2, 2 + n), np.arange(3, 3 + n))
    ax, ay = xs.ravel(), ys.ravel()
    rng = np.random.default_rng(1)
    px = ax * step - step + 60 + rng.normal(0, 2, ax.size)
    py = ay * step - 2 * step + 60 + rng.normal(0, 2, ay.size)
    sel = np.ones(ax.size, int)
    sel[:unselected] = 0
    spots = pd.DataFrame({"x": ax, "y": ay, "new_x": ax + 0.01, "new_y": ay - 0.01, "pixel_x": px, "pixel_y": py,
                          "selected": sel})
    (root / "ST-spotfiles").mkdir(parents=True, exist_ok=True)
    spots.to_csv(root / "ST-spotfiles" / f"{section}_selection.tsv", sep="\t", index=False)
    keys = [f"{x}x{y}" for x, y in zip(ax, ay)] + [f"{90 + i}x{90 + i}" for i in range(extra_counts_rows)]
    X = counts(len(keys), n_genes, seed=3)
    df = pd.DataFrame(X, index=keys, columns=[f"G{j}" for j in range(n_genes)])
    (root / "ST-cnts").mkdir(exist_ok=True)
    df.to_csv(root / "ST-cnts" / f"{section}.tsv.gz", sep="\t")
    w, h = int(px.max() + step), int(py.max() + step)
    save_image(root / "ST-imgs" / patient_dir / section / f"HE_{section}.jpg", tissue_image(w, h), quality=90)
    selected = sel == 1
    return {"keys": np.array(keys[: ax.size])[selected], "coords": np.column_stack([px, py])[selected],
            "X": X[: ax.size][selected], "um_per_px": um_per_px, "counts_path": root / "ST-cnts" / f"{section}.tsv.gz",
            "spots_path": root / "ST-spotfiles" / f"{section}_selection.tsv", "size": (w, h)}
