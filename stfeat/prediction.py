"""Apply a fitted model to a sample (``stfeat predict``): at its spots, or on a dense grid over the tissue.

At the spots, features come from the stage-one cache when it holds this sample for the model's
encoder configuration (same ``config_hash``), else they are extracted into that cache with stage one's
code (:func:`stfeat.extraction.extract_caches`) and the encoder recorded in the model, so a second head
or a second run reuses them. With ``grid_um`` the
model predicts on a square grid (step in micrometres) over the tissue, beyond the measured spots:
the tissue mask is Otsu's threshold on the saturation of the H&E thumbnail (cleaned by a
morphological opening/closing), falling back to the measured spots' region dilated by two spot
pitches when the mask is implausible; neighbours are recomputed on the grid.

A model fitted with ``standardize="slide"`` standardises the new sample's features with the sample's own
statistics: at the spots, over its spots; on a grid, over its measured spots when their features are cached
(the statistics the model's training samples were standardised with), else over the grid points
(``uns["stfeat"]["standardize_stats"]`` says which).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from stfeat.errors import InputError

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ tissue grid
def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail: Otsu on median-filtered HSV saturation, closed, opened, filled."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    x = np.asarray(rgb, float)[..., :3] / 255.0
    mx, mn = x.max(-1), x.min(-1)
    sat = np.divide(mx - mn, mx, out=np.zeros_like(mx), where=mx > 0)
    r = max(1, int(round(min(sat.shape) / 200)))
    # smooth first: tissue is textured (pale stroma between dark nuclei), glass is not
    sat = ndimage.median_filter(sat, size=2 * r + 1)
    mask = sat > threshold_otsu(sat)  # a constant image gives its value: an empty mask
    st = np.ones((2 * r + 1, 2 * r + 1), bool)
    mask = ndimage.binary_opening(ndimage.binary_closing(mask, st), st)
    return ndimage.binary_fill_holes(mask)


# Most grid points by default (option grid_max_points): crop mode runs one forward per point and scale, dense
# mode one per tissue tile, so a dense-mode model takes an 8 um grid over a whole Visium HD section (~600k)
GRID_MAX_POINTS = {"crop": 500_000, "dense": 3_000_000}


def _too_many(sample: Any, what: str, step_um: float, max_points: int) -> InputError:
    return InputError(sample.meta.get("source_path"), f"{what} (more than grid_max_points = {max_points}).",
                      f"use a larger grid_um than {step_um:g} (--grid-um), or raise grid_max_points "
                      "(--grid-max-points; each point costs memory for its features and predictions).")


def tissue_grid(sample: Any, step_um: float, *, max_points: int | None = None, mode: str = "crop",
                ) -> tuple[np.ndarray, str]:
    """Grid centres (m, 2) level-0 px with spacing ``step_um`` over the tissue, and how the tissue was found.

    More than ``max_points`` points (default :data:`GRID_MAX_POINTS` of the extraction ``mode``) raise an
    :class:`InputError` naming the option ``grid_max_points``."""
    from scipy.spatial import cKDTree

    if not step_um > 0:
        raise ValueError(f"grid step must be positive micrometres, got {step_um}")
    if max_points is None:
        max_points = GRID_MAX_POINTS.get(mode, GRID_MAX_POINTS["crop"])
    um = float(sample.um_per_px)
    step_px = step_um / um
    spots = np.asarray(sample.coords, float)
    pitch = float(np.median(cKDTree(spots).query(spots, k=2)[0][:, 1])) if len(spots) > 1 else 100.0 / um
    W, H = sample.slide.dimensions
    n_pts = (W / step_px) * (H / step_px)
    if n_pts > max(max_points * 4, 4_000_000):  # before building it: the tissue is rarely under a quarter
        raise _too_many(sample, f"a {step_um:g} um grid over the whole {W}x{H} px slide is about {n_pts:.0f} points",
                        step_um, max_points)
    # anchored on a measured spot, so a step that divides the spot pitch passes through the spot centres
    x0, y0 = (np.mod(spots[0], step_px) if len(spots) else (step_px / 2, step_px / 2))
    xs = np.arange(x0, W, step_px)
    ys = np.arange(y0, H, step_px)
    gx, gy = np.meshgrid(xs, ys)
    pts = np.c_[gx.ravel(), gy.ravel()]
    # the region of the measured spots, dilated by two pitches: fallback and sanity bound
    near = cKDTree(spots).query(pts, k=1)[0] <= 2 * pitch
    how = "measured spots' region dilated by two spot pitches"
    try:
        rgb, scale = sample.slide.thumbnail(2048)
        mask = tissue_mask(np.asarray(rgb))
        frac = mask.mean()
        ti = np.clip((pts * scale).astype(int), 0, [mask.shape[1] - 1, mask.shape[0] - 1])
        inside = mask[ti[:, 1], ti[:, 0]]
        si = np.clip((spots * scale).astype(int), 0, [mask.shape[1] - 1, mask.shape[0] - 1])
        spot_cover = mask[si[:, 1], si[:, 0]].mean() if len(spots) else 0.0
        if 0.01 < frac < 0.98 and spot_cover > 0.5:
            keep = inside
            how = f"Otsu tissue mask on thumbnail saturation ({frac:.0%} of the slide; covers {spot_cover:.0%} of spots)"
        else:
            log.warning("tissue mask implausible (%.0f%% of the slide, %.0f%% of spots inside): using the spots' "
                        "region instead", 100 * frac, 100 * spot_cover)
            keep = near
    except (OSError, ValueError, RuntimeError) as exc:
        log.warning("no thumbnail for the tissue mask (%s): using the spots' region", exc)
        keep = near
    pts = pts[keep]
    if len(pts) > max_points:
        raise _too_many(sample, f"a {step_um:g} um grid over the tissue has {len(pts)} points", step_um, max_points)
    log.info("grid: %d points every %g um; tissue from %s", len(pts), step_um, how)
    return pts, how


# ------------------------------------------------------------------------------------------ maps
# moved to stfeat._predict_outputs (with the h5ad / SpatialData writing); re-exported here
from stfeat._predict_outputs import MAP_GENES, gene_map_paths, map_step_px  # noqa: E402,F401


# ------------------------------------------------------------------------------------------ predict
def _one_sample(sample: Any, image: Any = None):
    from stfeat.io import as_samples

    items = as_samples(sample, image=image)  # image: --image, the sample's H&E (stfeat.io.with_image)
    if len(items) != 1:
        raise InputError(sample if isinstance(sample, (str, os.PathLike)) else None,
                         f"holds {len(items)} samples ({[s.sample_id for s in items][:8]}).",
                         "give one sample (its folder or file) to predict.")
    return items[0]


def _check_encoder(model: Any, encoder: Any, weights: Any) -> Any:
    """The encoder to extract with; refuses an encoder configuration the model did not see.

    A model fitted on a view variant (``densenet121+macenko+d8``, :mod:`stfeat.views`) has that name as its
    encoder, so new samples are extracted with the same views (and the recorded stain reference)."""
    from stfeat.identity import encoder_identity
    from stfeat.views import variant_identity

    enc = encoder if encoder is not None else model.encoder
    want = model.encoder_attrs.get("config_hash")
    if want and isinstance(enc, str):
        base, views = _model_views(model, enc)
        ident = variant_identity(encoder_identity(base, weights=weights), views)
        if ident.hash != want:
            raise InputError(model.path, f"the model was fitted on features of encoder {model.encoder} with weights "
                             f"{model.encoder_attrs.get('weights_id')} (config {want}), but {enc} with weights "
                             f"{ident.weights_id} gives config {ident.hash}.",
                             "pass the same --weights as at extraction, or a --cache-dir that holds this sample.")
    return enc


def _stain_reference(model: Any) -> str | None:
    """The stain reference image the model's features were normalised to (None: the default one)."""
    views = model.encoder_attrs.get("views") or {}
    return (views.get("stain_reference") or None) if isinstance(views, dict) else None


def _model_views(model: Any, enc: Any) -> tuple[Any, Any]:
    """``(base encoder, ViewSpec)`` to extract with: the views of the model's encoder variant
    (``densenet121+macenko+d8``, :mod:`stfeat.views`), also when a built Encoder or a base name overrides the
    encoder; an override that is itself a variant name brings its own views."""
    from stfeat.views import ViewSpec, resolve

    ref = _stain_reference(model)

    def res(name: str):
        return resolve(name, stain_reference=ref if ViewSpec.from_variant(name)[1].stain_norm != "none" else None)

    _, mviews = res(str(model.encoder))
    if not isinstance(enc, str):
        return enc, mviews
    base, views = res(enc)
    return base, (views if not views.plain else mviews)


def _spot_features(model: Any, s: Any, *, cache_dir, encoder, weights, device, batch_size):
    """The sample's features at its spots: from the cache, else extracted INTO the cache (so the next head or
    the next predict of this sample reuses them)."""
    from stfeat.extraction import extract_caches
    from stfeat.features import SampleFeatures, cache_file

    cdir = cache_dir if cache_dir is not None else model.cache_dir
    if cdir is None or (cache_dir is None and not Path(cdir).is_dir()):
        cdir = os.environ.get("STFEAT_CACHE_DIR", "stfeat_cache")
    p = cache_file(cdir, model.encoder, s.sample_id)
    how = f"cache {p}"
    if not p.exists():
        if s.slide is None:
            raise InputError(s.meta.get("source_path"), f"sample {s.sample_id} has no H&E image to extract features from.",
                             "give the sample with its image, or a --cache-dir holding its features.")
        enc = _check_encoder(model, encoder, weights)
        log.info("no cached features of %s in %s: extracting them there", s.sample_id, cdir)
        base, views = _model_views(model, enc)
        extract_caches([s], encoder=base, weights=weights, scales_um=model.scales_um, cache_dir=cdir,
                       stain_norm=views.stain_norm, stain_reference=views.stain_reference or None, tta=views.tta,
                       tta_hed_jitter=views.tta_hed_jitter, background=views.background, tokens=views.tokens,
                       k_neighbors=int(model.layout.get("k_neighbors", 8)), device=device, batch_size=batch_size,
                       dtype=str(model.encoder_attrs.get("dtype") or "float16"),
                       mode=str(model.encoder_attrs.get("extraction_mode") or "auto"))
        how = f"extracted into {p}"
    sf = SampleFeatures.from_cache(p, scales=model.layout["scales"], sample_id=s.sample_id)
    want = model.encoder_attrs.get("config_hash")
    if want and sf.attrs.get("config_hash") != want:
        raise InputError(p, f"was made with another encoder configuration ({sf.attrs.get('config_hash')}) than the "
                         f"model's ({want}).", "point --cache-dir to the cache the model was fitted on, or move this "
                         "file away so features are extracted afresh.")
    want_mode, got_mode = model.encoder_attrs.get("extraction_mode"), sf.attrs.get("extraction_mode")
    if want_mode and got_mode and str(got_mode) != str(want_mode):
        raise InputError(p, f"holds {got_mode}-mode features, but the model was fitted on {want_mode}-mode ones.",
                         "point --cache-dir to a cache of the model's mode, or move this file away so features are "
                         "extracted afresh in that mode.")
    return sf.aligned_to(s.barcodes, sample_path=s.meta.get("source_path")), how


def _spot_stats(model: Any, s: Any, cache_dir) -> dict | None:
    """Per-scale (mean, std) of the sample's measured spots from its cache, or None when it is not cached."""
    from stfeat.features import SampleFeatures, cache_file

    cdir = cache_dir if cache_dir is not None else model.cache_dir
    if cdir is None:
        cdir = os.environ.get("STFEAT_CACHE_DIR", "stfeat_cache")
    p = cache_file(cdir, model.encoder, s.sample_id)
    if not p.exists():
        return None
    try:
        sf = SampleFeatures.from_cache(p, scales=model.layout["scales"], sample_id=s.sample_id)
    except InputError as exc:
        log.info("spot features of %s unusable for grid standardisation (%s)", s.sample_id, exc)
        return None
    want = model.encoder_attrs.get("config_hash")
    if want and sf.attrs.get("config_hash") != want:
        return None
    return sf.slide_stats(model.layout["scales"])


def model_mode(model: Any) -> str:
    """The extraction engine of the model's training features (``extraction_mode`` of its caches, recorded at
    fit): ``"dense"`` or ``"crop"`` (also for models fitted before it was recorded)."""
    m = str(model.encoder_attrs.get("extraction_mode") or "crop")
    return m if m in ("crop", "dense") else "crop"


def _grid_features(model: Any, s: Any, pts: np.ndarray, *, encoder, weights, device, batch_size, mode="crop"):
    from stfeat.extraction import extract_points
    from stfeat.features import SampleFeatures

    if s.slide is None:
        raise InputError(s.meta.get("source_path"), f"sample {s.sample_id} has no H&E image to predict a grid on.",
                         "give the sample with its image.")
    enc = _check_encoder(model, encoder, weights)
    enc, views = _model_views(model, enc)
    feats = extract_points(s.slide, pts, encoder=enc, scales_um=model.scales_um, um_per_px=s.um_per_px,
                           weights=weights, device=device, batch_size=batch_size, views=views, mode=mode)
    # The heads were fitted on features as the cache stores them (float16 by default): round fresh features
    # the same way, so a grid point on a measured spot gets that spot's prediction.
    stored = model.encoder_attrs.get("dtype")
    if stored:
        feats = {k: np.asarray(v).astype(np.dtype(stored)).astype(np.float32) for k, v in feats.items()}
    names = np.array([f"grid_{i}" for i in range(len(pts))])
    return SampleFeatures(s.sample_id, s.patient, names, pts, s.um_per_px, feats)  # neighbours from the grid


def predict(model: Any, sample: Any, *, out: str | Path | None = None, grid_um: float | None = None,
            grid_max_points: int | None = None, cache_dir: str | Path | None = None, head: str | None = None,
            encoder: Any = None, weights: str | Path | None = None, device: str | None = None,
            batch_size: int | None = None, plot: bool = True, map_genes: Any = None, spatialdata: bool = False,
            allow_pickle: bool = False, image: str | Path | None = None):
    """Predict expression for a sample's spots, or on a dense grid over its tissue.

    Parameters
    ----------
    model
        A :class:`stfeat.Model`, a model folder (``models/ENCODER__HEAD``), or a ``stfeat fit`` output (its
        best head by cross-validation unless ``head`` is given).
    sample
        One sample: a path, a SampleRef or a Sample.
    out
        ``.h5ad`` to write (atomically); with ``plot`` maps are written beside it: ``OUT.png`` (the first
        6 mapped genes, one panel each) and, for dense points (bins, cells, a grid: :func:`map_step_px`),
        one ``OUT.GENE.png`` per mapped gene, painted as an image on the points' lattice over the H&E
        (:func:`stfeat.pl.raster_map`); spots are drawn as markers (per gene too when more than 6 are mapped).
    grid_um
        Grid step in micrometres: predict on a grid over the tissue instead of at the spots. The grid's
        features come from the engine of the model's training features (``extraction_mode`` recorded at fit:
        dense for bins/cells extracted densely, else crop), recorded in ``uns["stfeat"]["extraction_mode"]``.
    grid_max_points
        Most grid points allowed (default 500,000 for a crop-mode model, 3,000,000 for a dense-mode one).
    cache_dir
        Where the sample's features are, or go when they must be extracted (default: the cache the model
        was fitted on).
    head
        Which model of a multi-model fit output.
    encoder, weights
        Override the encoder (name or built Encoder) / weights used when features must be extracted.
    map_genes
        The genes mapped in the PNGs: a number K (the K of highest predicted variance; default 6), ``"all"``,
        or gene names (a list or a comma-separated string).
    spatialdata
        Also write ``OUT.zarr``, a SpatialData store (circles + table + the H&E; needs
        ``pip install "stfeat[spatialdata]"``).
    allow_pickle
        Allow a legacy pickled head (runs code from the file; only for models you made).
    image
        The sample's H&E image, overriding the one found (``--image``; :func:`stfeat.io.with_image`).

    Returns
    -------
    AnnData
        ``X`` = predicted expression (the model's transform, clipped at 0) for the model's genes; spots: obs =
        barcodes, ``layers["measured"]`` = the measured values under the same transform; grid: obs
        ``grid_*``, ``obs["in_tissue"]``. ``obsm["spatial"]`` holds level-0 px centres (x, y);
        ``uns["spatial"][sample_id]`` the H&E images and scale factors (scverse convention).
    """
    import anndata as ad
    import pandas as pd

    from stfeat import __version__
    from stfeat._predict_outputs import parse_map_genes, require_spatialdata, write_prediction
    from stfeat.model import Model
    from stfeat.targets import Expression, target_matrix

    if spatialdata:
        require_spatialdata(out)  # before any extraction
    if not isinstance(model, Model):
        model = Model.load(model, head, allow_pickle=allow_pickle)
    s = _one_sample(sample, image)
    genes = list(model.genes)
    map_spec = parse_map_genes(map_genes, genes)  # a misspelt gene fails before any extraction
    prov = {"model_dir": str(model.path or ""), "encoder": model.encoder, "head": model.head,
            "transform": model.transform, "gene_rule": model.gene_rule, "stfeat_version": __version__,
            "sample_id": s.sample_id, "clipped_at_zero": "true",
            "standardize": model.layout.get("standardize", "none")}
    kw = dict(encoder=encoder, weights=weights, device=device, batch_size=batch_size)
    if grid_um is None:
        sf, prov["features"] = _spot_features(model, s, cache_dir=cache_dir, **kw)
        if sf.attrs.get("extraction_mode"):
            prov["extraction_mode"] = sf.attrs["extraction_mode"]
        P = model.predict_features(sf)
        a = ad.AnnData(X=P, obs=pd.DataFrame(index=pd.Index(s.barcodes, name="barcode")),
                       var=pd.DataFrame(index=pd.Index(genes, name="gene")))
        a.obs["sample"] = s.sample_id
        a.layers["predicted"] = P
        a.layers["measured"] = target_matrix(Expression.from_sample(s), genes, model.transform)
        a.obsm["spatial"] = s.coords
    else:
        mode = model_mode(model)
        pts, how = tissue_grid(s, float(grid_um), max_points=grid_max_points, mode=mode)
        sf = _grid_features(model, s, pts, mode=mode, **kw)
        if model.layout.get("standardize", "none") == "slide":
            sf.standardize_stats = _spot_stats(model, s, cache_dir)
            prov["standardize_stats"] = "grid points" if sf.standardize_stats is None else "measured spots (cache)"
        P = model.predict_features(sf)
        a = ad.AnnData(X=P, obs=pd.DataFrame(index=sf.barcodes), var=pd.DataFrame(index=pd.Index(genes, name="gene")))
        a.obs["sample"] = s.sample_id
        a.obs["in_tissue"] = True
        a.layers["predicted"] = P
        a.obsm["spatial"] = pts
        prov.update(features="extracted", grid_step_um=float(grid_um), tissue=how, extraction_mode=mode)
    a.obs["sample"] = a.obs["sample"].astype("category")
    a.uns["stfeat"] = {k: str(v) if not isinstance(v, float) else v for k, v in prov.items()}
    from stfeat.spatial_uns import spatial_uns

    # scverse convention, so sc.pl.spatial(a, color=GENE) and squidpy plot it over the H&E as it is
    a.uns["spatial"] = spatial_uns(s, coords_px=np.asarray(a.obsm["spatial"]),
                                   spot_diameter_um=float(grid_um) if grid_um is not None else None)
    if out is not None:
        write_prediction(a, s, out, grid_um=grid_um, plot=plot, map_spec=map_spec, spatialdata=spatialdata,
                         title=f"{s.sample_id}: {model.encoder} / {model.head}"
                               + (f", grid {grid_um:g} um" if grid_um else ""))
    return a
