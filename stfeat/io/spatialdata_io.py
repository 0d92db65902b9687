"""SpatialData (zarr) in and out, through the optional extra ``stfeat[spatialdata]``.

Reading: a table (AnnData of raw counts) annotating one shapes or points element, plus an H&E image
element. Spot centres are the shapes' centroids carried into the image's pixel frame by SpatialData's
own transformations (``get_transformation_between_coordinate_systems``), so they are level-0 pixels
of that image, as every stfeat reader gives them. stfeat's Slide reads files, so the image's
full-resolution level is written once as a pyramidal TIFF into the slide cache
(``$STFEAT_CACHE_DIR/slides`` or the temp dir) and opened from there.

Writing: predictions as circles (``shapes["spots"]``, in level-0 px of the H&E) + ``tables["table"]``
annotating them + the H&E (``images["he"]``, a downsampled copy with a Scale into level-0 px), in the
``global`` coordinate system, so napari-spatialdata and spatialdata-plot open it as it is.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from stfeat.errors import InputError
from stfeat.io import _common as C
from stfeat.io.sample import Sample

log = logging.getLogger(__name__)

FORMAT = "spatialdata"
_EXTRA_FIX = 'install the extra: pip install "stfeat[spatialdata]" (spatialdata, spatialdata-io).'


def _require():
    try:
        import spatialdata  # noqa: F401
    except ImportError:
        raise InputError(None, "reading or writing SpatialData needs the spatialdata package.", _EXTRA_FIX) from None
    import spatialdata

    return spatialdata


def is_spatialdata(path: Path) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / "zarr.json").is_file() or (p / ".zgroup").is_file()) and (
        (p / "tables").is_dir() or (p / "table").is_dir())


def _pick(names: list[str], want: str | None, what: str, path: Path) -> str:
    if want is not None:
        if want not in names:
            raise InputError(path, f"there is no {what} {want!r} (found {names}).", f"pass one of {names}.")
        return want
    if len(names) == 1:
        return names[0]
    raise InputError(path, f"{len(names)} {what}s ({names}) and none chosen.", f"pass {what}=NAME (one of {names}).")


def _image_to_tiff(img: Any, key: str, zarr_path: Path) -> Path:
    """Level 0 of an image element as a tiled pyramidal TIFF in the slide cache (written once)."""
    import tifffile

    try:
        from stfeat.slide_cache import cache_dir as _slide_cache_dir
    except ImportError:  # before the slide cache module
        from stfeat.slide import _slide_cache_dir

    st = os.stat(zarr_path)
    h = hashlib.sha256(f"{zarr_path.resolve()}|{key}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = _slide_cache_dir() / f"sdata_{h}.tif"
    if out.is_file():
        return out
    arr = img["scale0"].image if hasattr(img, "children") and "scale0" in img.children else img
    arr = arr.transpose("y", "x", "c").values if "c" in arr.dims else arr.values
    arr = np.asarray(arr)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise InputError(zarr_path, f"image {key!r} has shape {arr.shape}, not an RGB H&E.", "pass image=NAME of the H&E.")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        hi = float(np.nanmax(arr)) or 1.0
        arr = np.clip(arr / (hi if hi > 255 else 255.0) * 255, 0, 255).astype(np.uint8)
    from stfeat._safe_write import atomic_path

    levels = [arr]
    while max(levels[-1].shape[:2]) > 2048:
        levels.append(levels[-1][::2, ::2])
    with atomic_path(out) as tmp, tifffile.TiffWriter(tmp, bigtiff=arr.nbytes > 2**31) as tw:
        tw.write(levels[0], tile=(256, 256), subifds=len(levels) - 1, photometric="rgb")
        for a in levels[1:]:
            tw.write(np.ascontiguousarray(a), tile=(256, 256), subfiletype=1, photometric="rgb")
    return out


def read_spatialdata(path: Path, *, table: str | None = None, image: str | None = None,
                     um_per_px: float | None = None, sample_id: str | None = None,
                     patient: str | None = None) -> Sample:
    """Read a SpatialData zarr store (table + annotated shapes/points + H&E image) into a Sample.

    ``um_per_px`` is per pixel of the chosen image's full-resolution level (required unless the store
    was written by :func:`write_spatialdata`, which records it).
    """
    import pandas as pd

    sd = _require()
    from spatialdata.transformations import get_transformation_between_coordinate_systems

    from stfeat.slide import open_slide

    path = Path(path)
    try:
        sdata = sd.read_zarr(path)
    except Exception as exc:  # noqa: BLE001 - zarr/ome-zarr raise many types for a bad store
        raise InputError(path, f"the SpatialData store cannot be read ({type(exc).__name__}: {exc}).",
                         "check that it is a SpatialData .zarr written by spatialdata >= 0.2.") from None
    tkey = _pick(list(sdata.tables.keys()), table, "table", path)
    adata = sdata.tables[tkey]
    attrs = adata.uns.get("spatialdata_attrs", {})
    region = attrs.get("region")
    region = region[0] if isinstance(region, (list, tuple)) and len(region) == 1 else region
    if not isinstance(region, str) or region not in sdata:
        raise InputError(path, f"table {tkey!r} annotates {region!r}, not one shapes or points element.",
                         "annotate the table to the spots' shapes (SpatialData.set_table_annotates_spatialelement).")
    el = sdata[region]
    inst = np.asarray(adata.obs[attrs["instance_key"]])
    if region in sdata.shapes:
        geo = el.geometry
        xy = np.column_stack([geo.centroid.x.to_numpy(), geo.centroid.y.to_numpy()])
        idx = pd.Index(el.index).get_indexer(inst)
    elif region in sdata.points:
        df = el.compute()
        xy = df[["x", "y"]].to_numpy(np.float64)
        idx = pd.Index(df.index).get_indexer(inst)
    else:
        raise InputError(path, f"table {tkey!r} annotates labels {region!r}; stfeat needs spot centres.",
                         "annotate the table to a shapes element (circles or polygons).")
    if (idx < 0).any():
        raise InputError(path, f"{int((idx < 0).sum())} table rows have no instance in {region!r}.",
                         "make the table's instance ids match the element's index.")
    xy = xy[idx]
    rgb = [k for k, v in sdata.images.items() if "c" in getattr(_scale0(v), "dims", ()) and _scale0(v).sizes["c"] in (3, 4)]
    ikey = _pick(rgb, image, "image", path) if image is not None or len(rgb) != 1 else rgb[0]
    T = get_transformation_between_coordinate_systems(sdata, el, sdata.images[ikey])
    M = T.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    coords = xy @ M[:2, :2].T + M[:2, 2]
    notes = C.Notes()
    slide = open_slide(_image_to_tiff(sdata.images[ikey], ikey, path))
    X = adata.layers["counts"] if "counts" in adata.layers else adata.X
    X = C.check_counts(X, path)
    inside = C.drop_outside_image(coords, slide, path, notes)
    meta = adata.uns.get("stfeat", {}) if isinstance(adata.uns.get("stfeat"), dict) else {}
    if um_per_px is not None:
        um, src = float(um_per_px), "user"
    elif meta.get("um_per_px"):
        # stfeat's writer states the um/px of the spots' frame; the image frame differs by M's scale
        um = float(meta["um_per_px"]) / float(np.sqrt(abs(np.linalg.det(M[:2, :2]))))
        src = f"spatialdata table uns['stfeat'] ({meta.get('um_per_px_source', '')}), in {ikey!r} pixels"
    else:
        raise C.no_um_error(path, "a SpatialData store does not state micrometres per image pixel")
    sid = sample_id or str(meta.get("sample_id") or path.name.removesuffix(".zarr"))
    return C.build_sample(
        X=X[np.flatnonzero(inside)], barcodes=np.asarray(adata.obs_names)[inside], genes=adata.var_names,
        coords=coords[inside], slide=slide, sample_id=sid, patient=patient, fmt=FORMAT, um_per_px=um,
        um_source=src, source_path=path, notes=notes,
        extra={"spatialdata_table": tkey, "spatialdata_image": ikey, "spatialdata_region": region},
    )


def _scale0(v: Any) -> Any:
    return v["scale0"].image if hasattr(v, "children") and "scale0" in v.children else v


def write_spatialdata(pred: Any, path: str | Path, *, sample: Sample | None = None, spot_diameter_um: float | None = None,
                      image_max_px: int = 4096) -> Path:
    """Write an AnnData of predictions (``obsm["spatial"]`` level-0 px) as a SpatialData zarr store.

    Elements (coordinate system ``global`` = level-0 px of the H&E): ``shapes["spots"]`` circles,
    ``tables["table"]`` annotating them, and with ``sample`` the H&E ``images["he"]`` (at most
    ``image_max_px`` on its long side, scaled into level-0 px). Written to a temporary folder and
    renamed into place.
    """
    import anndata as ad
    import pandas as pd

    sd = _require()
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    path = Path(path)
    coords = np.asarray(pred.obsm["spatial"], dtype=np.float64)
    n = len(coords)
    um = float(sample.um_per_px) if sample is not None else float(pred.uns.get("stfeat", {}).get("um_per_px", 1.0))
    if spot_diameter_um is None and sample is not None:
        from stfeat.spatial_uns import spot_diameter_um as _diam

        spot_diameter_um = _diam(sample, coords)
    radius = (spot_diameter_um or 10.0) / um / 2
    shapes = ShapesModel.parse(coords, geometry=0, radius=np.full(n, radius), index=pd.RangeIndex(n),
                               transformations={"global": Identity()})
    t = ad.AnnData(X=pred.X.copy(), obs=pd.DataFrame(index=pred.obs_names.astype(str)), var=pred.var.copy())
    for col in pred.obs.columns:
        t.obs[col] = pred.obs[col].to_numpy()
    for k, v in pred.layers.items():
        t.layers[k] = v
    t.obsm["spatial"] = coords
    t.obs["region"] = pd.Categorical(["spots"] * n)
    t.obs["spot_id"] = np.arange(n)
    meta = {k: v for k, v in dict(pred.uns.get("stfeat", {})).items() if isinstance(v, (str, int, float, bool))}
    if sample is not None:
        meta.update(sample_id=sample.sample_id, um_per_px=um, um_per_px_source=sample.um_per_px_source)
    t.uns["stfeat"] = meta
    table = TableModel.parse(t, region="spots", region_key="region", instance_key="spot_id")
    images = {}
    if sample is not None and sample.slide is not None:
        rgb, s = sample.slide.thumbnail(int(image_max_px))
        images["he"] = Image2DModel.parse(np.ascontiguousarray(rgb[..., :3].transpose(2, 0, 1)), dims=("c", "y", "x"),
                                          c_coords=["r", "g", "b"],
                                          transformations={"global": Scale([1 / s, 1 / s], axes=("x", "y"))})
    sdata = sd.SpatialData(images=images, shapes={"spots": shapes}, tables={"table": table})
    from stfeat._safe_write import atomic_path

    with atomic_path(path, folder=True) as tmp:  # a fresh, unguessable name of ours, swapped in whole
        tmp.rmdir()  # spatialdata creates the store itself (it refuses an existing non-zarr folder)
        sdata.write(tmp)
    return path
