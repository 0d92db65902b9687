"""Visium HD and Xenium outs/ built in code, following 10x's documented layouts (no tests here).

- Visium HD (Space Ranger 3/4): ``outs/binned_outputs/square_{002,008,016}um/`` each with
  ``filtered_feature_bc_matrix.h5`` and ``spatial/{tissue_positions.parquet, scalefactors_json.json}``;
  bin barcodes ``s_008um_{row:05d}_{col:05d}-1``; ``outs/spatial/tissue_hires_image.png``.
- Visium HD cells (Space Ranger 4 segmentation): ``outs/segmented_outputs/`` with
  ``filtered_feature_cell_matrix.h5`` (barcodes ``cellid_{id:09d}-1``), ``cell_segmentations.geojson`` (a
  FeatureCollection, one Feature per cell: a Polygon in full-resolution px and ``properties.cell_id`` the
  integer id) and ``spatial/scalefactors_json.json``.
- Xenium: ``outs/{experiment.xenium, cells.parquet, cell_feature_matrix.h5}``, a post-Xenium H&E
  ``*_he_image.ome.tif`` and ``*_he_imagealignment.csv`` (3 x 3, H&E px -> morphology px).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from test_io_builders import save_pyramid_tiff, tissue_image


def write_10x_h5(path: Path, X: np.ndarray, barcodes, genes, ftypes=None) -> None:
    import h5py
    import scipy.sparse as sp

    m = sp.csc_matrix(np.asarray(X).T)
    ftypes = ["Gene Expression"] * len(genes) if ftypes is None else list(ftypes)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["data"], g["indices"], g["indptr"] = m.data.astype(np.int32), m.indices, m.indptr
        g["shape"] = np.array(m.shape, dtype=np.int32)
        g["barcodes"] = np.array([str(b).encode() for b in barcodes])
        ff = g.create_group("features")
        ff["id"] = np.array([f"ENSG{j:05d}".encode() for j in range(len(genes))])
        ff["name"] = np.array([str(s).encode() for s in genes])
        ff["feature_type"] = np.array([t.encode() for t in ftypes])
        ff["genome"] = np.array([b"GRCh38"] * len(genes))


def make_visium_hd(root: Path, *, um_per_px: float = 0.5, bins=(2, 8, 16), extent_um: float = 160.0,
                   n_genes: int = 6, write_image: bool = True, microns_per_pixel: bool = True) -> dict:
    """Visium HD outs/ with square bins over an ``extent_um`` square (off-tissue bins in the first row).

    Returns per bin size the in-tissue barcodes and centres (full-res px), and the full-res image.
    """
    import pandas as pd
    from PIL import Image

    outs = root / "outs"
    (outs / "spatial").mkdir(parents=True)
    origin = 40.0  # px, keeps every bin inside the image
    size = int(origin * 2 + extent_um / um_per_px)
    full = tissue_image(size, size, seed=4)
    truth: dict = {"outs": outs, "full": full, "um_per_px": um_per_px, "bins": {}}
    rng = np.random.default_rng(0)
    for b in bins:
        d = outs / "binned_outputs" / f"square_{b:03d}um"
        (d / "spatial").mkdir(parents=True)
        n_side = int(extent_um // b)
        rr, cc = np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij")
        rr, cc = rr.ravel(), cc.ravel()
        bc = np.array([f"s_{b:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rr, cc)])
        x = origin + (cc + 0.5) * b / um_per_px
        y = origin + (rr + 0.5) * b / um_per_px
        in_tissue = (rr > 0).astype(int)  # the first row of bins is off tissue
        pos = pd.DataFrame({"barcode": bc, "in_tissue": in_tissue, "array_row": rr, "array_col": cc,
                            "pxl_row_in_fullres": y, "pxl_col_in_fullres": x})
        pos.to_parquet(d / "spatial" / "tissue_positions.parquet", index=False)
        keep = in_tissue == 1
        X = rng.poisson(1.0, size=(int(keep.sum()), n_genes))
        genes = [f"GENE{j}" for j in range(n_genes)]
        write_10x_h5(d / "filtered_feature_bc_matrix.h5", X, bc[keep], genes)
        sf = {"spot_diameter_fullres": b / um_per_px, "bin_size_um": float(b), "tissue_hires_scalef": 0.5,
              "tissue_lowres_scalef": 0.1, "fiducial_diameter_fullres": 100.0, "regist_target_img_scalef": 0.5}
        if microns_per_pixel:
            sf["microns_per_pixel"] = um_per_px
        (d / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf))
        truth["bins"][b] = {"barcodes": bc[keep], "coords": np.column_stack([x, y])[keep], "X": X, "genes": genes}
    if write_image:
        hi = Image.fromarray(full).resize((size // 2, size // 2))
        hi.save(outs / "spatial" / "tissue_hires_image.png")
    truth["size"] = (size, size)
    return truth


def _l_cell(rng, centre, theta: float, hole: bool, clockwise: bool) -> tuple[list, float]:
    """An L-shaped cell (two rectangles, px) as GeoJSON Polygon rings, moved so that its area centroid is
    ``centre`` and rotated about it; an extra vertex on one edge makes its vertex mean differ from that centroid."""
    a, b = rng.uniform(12, 20), rng.uniform(4, 8)
    b2, h = rng.uniform(4, a - 4), rng.uniform(6, 12)
    ext = np.array([[0, 0], [a / 4, 0], [a / 2, 0], [a, 0], [a, b], [b2, b], [b2, b + h], [0, b + h]], float)
    parts = [(a * b, (a / 2, b / 2)), (b2 * h, (b2 / 2, b + h / 2))]
    rings = [ext]
    if hole:  # a rectangular hole inside the first rectangle
        x0, x1, y0, y1 = a * 0.5, a * 0.8, b * 0.25, b * 0.75
        rings.append(np.array([[x0, y0], [x0, y1], [x1, y1], [x1, y0]], float))  # clockwise, as RFC 7946 holes
        parts.append((-(x1 - x0) * (y1 - y0), ((x0 + x1) / 2, (y0 + y1) / 2)))
    area = sum(w for w, _ in parts)
    cen = sum(w * np.array(c) for w, c in parts) / area
    R = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    out = []
    for r in rings:
        r = (r - cen) @ R.T + np.asarray(centre)
        r = r[::-1] if clockwise else r
        out.append(np.vstack([r, r[:1]]).tolist())  # closed, as GeoJSON requires
    return out, float(area)


def add_segmented_outputs(t: dict, *, n_cells: int = 30, n_genes: int = 6, only_in_matrix: int = 0,
                          only_in_geojson: int = 0, hole: bool = False, scalefactors: bool = True,
                          microns_per_pixel: bool = True, seed: int = 7) -> dict:
    """Space Ranger 4 cell segmentation added to a :func:`make_visium_hd` tree (``t``), in ``outs/segmented_outputs/``.

    ``n_cells`` cells have counts and a polygon; ``only_in_matrix`` more have counts only, ``only_in_geojson``
    more a polygon only. The matrix lists cells in another order than the GeoJSON. ``hole`` gives the first
    cell a hole. Returns ``t`` with ``t["cells"]``: the barcodes (matrix order) of the cells with both,
    their true centroids (full-res px, x/y), areas (px^2), counts and genes.
    """
    outs = t["outs"]
    seg = outs / "segmented_outputs"
    (seg / "spatial").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    um, (w, h) = t["um_per_px"], t["size"]
    n_poly = n_cells + only_in_geojson
    centres = rng.uniform(60, min(w, h) - 60, size=(n_poly, 2))
    ids = np.arange(1, n_poly + only_in_matrix + 1)  # cellid 0 is "no cell" in barcode_mappings.parquet
    feats, areas = [], []
    for i in range(n_poly):
        rings, area = _l_cell(rng, centres[i], float(rng.uniform(0, 2 * np.pi)), hole and i == 0, bool(i % 2))
        areas.append(area)
        feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": rings},
                      "properties": {"cell_id": int(ids[i])}})
    (seg / "cell_segmentations.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    # the matrix: the cells with a polygon (but not the only_in_geojson ones) and the only_in_matrix ones, shuffled
    in_matrix = np.r_[np.arange(n_cells), np.arange(n_poly, n_poly + only_in_matrix)]
    in_matrix = in_matrix[rng.permutation(len(in_matrix))]
    bc = np.array([f"cellid_{ids[i]:09d}-1" for i in in_matrix])
    genes = [f"GENE{j}" for j in range(n_genes)]
    X = rng.poisson(2.0, size=(len(bc), n_genes))
    write_10x_h5(seg / "filtered_feature_cell_matrix.h5", X, bc, genes)
    if scalefactors:
        sf = {"tissue_hires_scalef": 0.5, "tissue_lowres_scalef": 0.1, "regist_target_img_scalef": 0.5}
        if microns_per_pixel:
            sf["microns_per_pixel"] = um
        (seg / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf))
    both = in_matrix < n_cells
    t["cells"] = {"barcodes": bc[both], "coords": centres[in_matrix[both]], "area_px": np.array(areas)[in_matrix[both]],
                  "X": X[both], "genes": genes, "geojson": seg / "cell_segmentations.geojson", "seg": seg}
    return t


def make_xenium(root: Path, *, n_cells: int = 60, n_genes: int = 5, pixel_size: float | None = 0.2125,
                he_um_per_px: float = 0.5, theta: float = 0.1, shift=(30.0, -20.0), write_alignment: bool = True,
                he_size: int = 400) -> dict:
    """Xenium outs/ with cells inside a post-Xenium H&E, registered by a rotation + scale + shift.

    The alignment maps H&E px -> morphology px: ``m = A @ [h, 1]`` with scale he_um_per_px / pixel_size.
    """
    import pandas as pd

    ps = 0.2125 if pixel_size is None else pixel_size
    outs = root / "outs"
    outs.mkdir(parents=True)
    specs = {"run_name": "test", "region_name": "r1", "analysis_sw_version": "xenium-2.0.0.10",
             "pixel_size": pixel_size}
    if pixel_size is None:
        specs.pop("pixel_size")
    (outs / "experiment.xenium").write_text(json.dumps(specs))
    rng = np.random.default_rng(2)
    he = rng.uniform(40, he_size - 40, size=(n_cells, 2))  # true cell centres in H&E px
    s = he_um_per_px / ps
    c, sn = np.cos(theta), np.sin(theta)
    A = np.array([[s * c, -s * sn, shift[0]], [s * sn, s * c, shift[1]], [0.0, 0.0, 1.0]])
    morph = he @ A[:2, :2].T + A[:2, 2]
    um = morph * ps
    ids = np.array([f"{'abcdefgh'[i % 8]}aaa{i:04d}-1" for i in range(n_cells)])
    cells = pd.DataFrame({"cell_id": ids, "x_centroid": um[:, 0], "y_centroid": um[:, 1],
                          "transcript_counts": np.arange(n_cells), "cell_area": np.full(n_cells, 80.0),
                          "nucleus_area": np.full(n_cells, 30.0)})
    cells.to_parquet(outs / "cells.parquet", index=False)
    genes = [f"G{j}" for j in range(n_genes)] + ["NegControlProbe_00001", "BLANK_0001"]
    X = rng.poisson(2.0, size=(n_cells, len(genes)))
    write_10x_h5(outs / "cell_feature_matrix.h5", X, ids, genes,
                 ["Gene Expression"] * n_genes + ["Negative Control Probe", "Unassigned Codeword"])
    save_pyramid_tiff(outs / "test_he_image.ome.tif", tissue_image(he_size, he_size, seed=5), None, levels=2)
    if write_alignment:
        np.savetxt(outs / "test_he_imagealignment.csv", A, delimiter=",")
    return {"outs": outs, "he": he, "A": A, "ids": ids, "X": X[:, :n_genes], "genes": genes[:n_genes],
            "he_um_per_px": he_um_per_px, "pixel_size": ps}


def add_spatialdata_io_extras_hd(outs: Path) -> None:
    """feature_slice.h5 with the metadata attrs spatialdata-io's visium_hd reader parses (identity transforms)."""
    import h5py

    eye = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
    meta = {"transform_matrices": {k: eye for k in ("cytassist_colrow_to_spot_colrow", "spot_colrow_to_cytassist_colrow",
                                                    "microscope_colrow_to_spot_colrow", "spot_colrow_to_microscope_colrow")},
            "hd_layout_json": json.dumps({"transform": eye, "file_format": "1.0"})}
    with h5py.File(outs / "feature_slice.h5", "w") as f:
        f.attrs["metadata_json"] = json.dumps(meta)


def add_spatialdata_io_extras_xenium(outs: Path) -> None:
    """An empty cells.zarr.zip (a pre-1.3 Xenium layout: cell ids come from cells.parquet)."""
    import zarr

    specs = json.loads((outs / "experiment.xenium").read_text())
    specs["analysis_sw_version"] = "xenium-1.2.0.0"
    (outs / "experiment.xenium").write_text(json.dumps(specs))
    store = zarr.storage.ZipStore(outs / "cells.zarr.zip", mode="w")
    zarr.group(store=store)
    store.close()
