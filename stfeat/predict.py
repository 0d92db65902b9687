"""Apply a fitted model to a sample (``stfeat predict``): at its spots, or on a dense grid over the tissue.

At the spots, features come from the stage-one cache when it holds this sample for the model's
encoder configuration (same ``config_hash``), else they are extracted with stage one's code
(:func:`stfeat.extract.extract_points`) and the encoder recorded in the model. With ``grid_um`` the
model predicts on a square grid (step in micrometres) over the tissue, beyond the measured spots:
the tissue mask is Otsu's threshold on the saturation of the H&E thumbnail (cleaned by a
morphological opening/closing), falling back to the measured spots' region dilated by two spot
pitches when the mask is implausible; neighbours are recomputed on the grid.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from stfeat.errors import InputError

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ models
def find_model_dir(model_dir: str | Path, head: str | None = None) -> Path:
    """The model folder: ``model_dir`` itself, or one of ``model_dir/models/*`` (a ``stfeat fit`` output)."""
    d = Path(model_dir)
    if (d / "model.json").is_file():
        return d
    sub = d / "models"
    cands = sorted(p for p in sub.iterdir() if (p / "model.json").is_file()) if sub.is_dir() else []
    if not cands:
        raise InputError(d, "holds no fitted model (no model.json here or under models/).",
                         "give the --out folder of `stfeat fit` or one of its models/ENCODER__HEAD folders.")
    if head is not None:
        cands = [p for p in cands if p.name == head or p.name.endswith(f"__{head}")]
    if len(cands) != 1:
        names = ", ".join(p.name for p in sorted((sub).iterdir()) if (p / "model.json").is_file())
        raise InputError(d, f"holds {'several models' if len(cands) > 1 else 'no model for head ' + repr(head)} "
                         f"({names}).", f"pick one: {d / 'models' / '<name>'} or --head NAME.")
    return cands[0]


def load_model(model_dir: str | Path, head: str | None = None) -> tuple[dict, Any]:
    """Read a model saved by :func:`stfeat.fit.fit`: (manifest dict, fitted estimator)."""
    from stfeat.fit import MODEL_FORMAT, MODEL_FORMAT_VERSION

    d = find_model_dir(model_dir, head)
    try:
        manifest = json.loads((d / "model.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(d / "model.json", f"cannot be read ({exc}).", "re-run `stfeat fit`.") from None
    if manifest.get("format") != MODEL_FORMAT:
        raise InputError(d / "model.json", "is not an stfeat model manifest.", "give a folder written by `stfeat fit`.")
    if int(manifest.get("format_version", 0)) > MODEL_FORMAT_VERSION:
        raise InputError(d, f"model format {manifest['format_version']} is newer than this stfeat understands.",
                         "upgrade stfeat.")
    fmt = manifest.get("head_format")
    if fmt == "stfeat-head":
        from stfeat.heads import load_head

        est = load_head(d / "head")
    elif fmt == "joblib":
        import joblib

        log.warning("%s: loading a pickled scikit-learn estimator; only do this for folders you trust", d)
        est = joblib.load(d / "head.joblib")
    else:
        raise InputError(d / "model.json", f"unknown head_format {fmt!r}.", "re-run `stfeat fit`.")
    manifest["model_dir"] = str(d)
    return manifest, est


# ------------------------------------------------------------------------------------------ tissue grid
def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D array (maximises the between-class variance)."""
    v = np.asarray(values, float).ravel()
    hist, edges = np.histogram(v, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = (w0 * w1 * (mu0 - mu1) ** 2)[:-1]  # split after bin i, i.e. at edges[i + 1]
    if not len(between) or between.max() <= 0:
        return float(v.mean())
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float(edges[1:-1][best].mean())  # middle of a plateau (an empty gap between the classes)


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail: Otsu on median-filtered HSV saturation, closed, opened, filled."""
    from scipy import ndimage

    x = np.asarray(rgb, float)[..., :3] / 255.0
    mx, mn = x.max(-1), x.min(-1)
    sat = np.divide(mx - mn, mx, out=np.zeros_like(mx), where=mx > 0)
    r = max(1, int(round(min(sat.shape) / 200)))
    # smooth first: tissue is textured (pale stroma between dark nuclei), glass is not
    sat = ndimage.median_filter(sat, size=2 * r + 1)
    mask = sat > otsu_threshold(sat)
    st = np.ones((2 * r + 1, 2 * r + 1), bool)
    mask = ndimage.binary_opening(ndimage.binary_closing(mask, st), st)
    return ndimage.binary_fill_holes(mask)


def tissue_grid(sample: Any, step_um: float, *, max_points: int = 500_000) -> tuple[np.ndarray, str]:
    """Grid centres (m, 2) level-0 px with spacing ``step_um`` over the tissue, and how the tissue was found."""
    from scipy.spatial import cKDTree

    if not step_um > 0:
        raise ValueError(f"grid step must be positive micrometres, got {step_um}")
    um = float(sample.um_per_px)
    step_px = step_um / um
    spots = np.asarray(sample.coords, float)
    pitch = float(np.median(cKDTree(spots).query(spots, k=2)[0][:, 1])) if len(spots) > 1 else 100.0 / um
    W, H = sample.slide.dimensions
    n_pts = (W / step_px) * (H / step_px)
    if n_pts > max_points * 4:
        raise ValueError(f"a {step_um:g} um grid over a {W}x{H} px slide is about {n_pts:.0f} points; use a "
                         f"larger step")
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
        raise ValueError(f"{len(pts)} grid points over the tissue (more than {max_points}); use a larger step")
    log.info("grid: %d points every %g um; tissue from %s", len(pts), step_um, how)
    return pts, how


# ------------------------------------------------------------------------------------------ predict
def _load_sample(sample: Any):
    if hasattr(sample, "adata"):
        return sample
    if hasattr(sample, "load"):
        return sample.load()
    from stfeat.io import resolve_samples

    refs = resolve_samples(sample)
    if len(refs) != 1:
        raise InputError(sample, f"holds {len(refs)} samples ({[r.sample_id for r in refs][:8]}).",
                         "give one sample (its folder or file) to predict.")
    return refs[0].load()


def _extract(manifest: dict, sample: Any, centres_px: np.ndarray, *, encoder, weights, device, batch_size):
    """Features at points with the model's encoder; refuses an encoder configuration the model did not see."""
    from stfeat.extract import encoder_identity, extract_points

    if sample.slide is None:
        raise InputError(None, f"sample {sample.sample_id} has no H&E image to extract features from.",
                         "give the sample with its image, or a --cache-dir holding its features.")
    enc = encoder if encoder is not None else manifest["encoder"]
    want = (manifest.get("encoder_attrs") or {}).get("config_hash")
    if want and isinstance(enc, str):
        ident = encoder_identity(enc, weights=weights)
        if ident.hash != want:
            raise InputError(Path(manifest["model_dir"]), f"the model was fitted on features of encoder "
                             f"{manifest['encoder']} with weights {manifest['encoder_attrs'].get('weights_id')} "
                             f"(config {want}), but {enc} with weights {ident.weights_id} gives config {ident.hash}.",
                             "pass the same --weights as at extraction, or a --cache-dir that holds this sample.")
    scales = [float(s) for s in manifest["layout"]["scales"]]
    log.info("extracting %s features at %d points, scales %s um", enc if isinstance(enc, str) else "encoder",
             len(centres_px), scales)
    feats = extract_points(sample.slide, centres_px, encoder=enc, scales_um=scales, um_per_px=sample.um_per_px,
                           weights=weights, device=device, batch_size=batch_size)
    # The heads were fitted on features as the cache stores them (float16 by default): round fresh features
    # the same way, so a grid point on a measured spot gets that spot's prediction.
    stored = (manifest.get("encoder_attrs") or {}).get("dtype")
    if stored:
        feats = {k: np.asarray(v).astype(np.dtype(stored)).astype(np.float32) for k, v in feats.items()}
    return feats


def _inputs(manifest: dict, sf) -> dict:
    from stfeat.features import flat_features, token_features

    lay = manifest["layout"]
    if lay["kind"] == "tokens":
        t = token_features(sf, lay["scales"], k=lay["k_neighbors"], neighbor_scale=lay.get("neighbor_scale"))
        return {"X": t["X"], "rel_pos": t["rel_pos"], "token_type": t["token_type"], "mask": t["mask"]}
    return {"X": flat_features(sf, lay["scales"], neighbor_mean=lay["neighbor_mean"], k=lay["k_neighbors"])}


def predict(model_dir: str | Path, sample: Any, *, out: str | Path | None = None, grid_um: float | None = None,
            cache_dir: str | Path | None = None, head: str | None = None, encoder: Any = None,
            weights: str | Path | None = None, device: str | None = None, batch_size: int | None = None,
            plot: bool = True):
    """Predict expression for a sample's spots, or on a dense grid over its tissue.

    Parameters
    ----------
    model_dir
        A model folder (``models/ENCODER__HEAD``) or a ``stfeat fit`` output with one model (else ``head``).
    sample
        A sample path (or SampleRef / Sample).
    out
        ``.h5ad`` to write (atomically); with ``plot`` a PNG map is written beside it.
    grid_um
        Grid step in micrometres: predict on a grid over the tissue instead of at the spots.
    cache_dir
        Where to look for the sample's features (default: the cache the model was fitted on).
    head
        Which model of a multi-model fit output.
    encoder, weights
        Override the encoder (name or built Encoder) / weights used when features must be extracted.

    Returns
    -------
    AnnData
        ``X`` = predicted expression (transform of the model) for the model's genes; spots: obs =
        barcodes, ``layers["measured"]`` = the measured values under the same transform; grid:
        obs ``grid_*``, ``obs["in_tissue"]``. ``obsm["spatial"]`` holds level-0 px centres (x, y).
    """
    import anndata as ad
    import pandas as pd

    from stfeat import __version__
    from stfeat.features import SampleFeatures, cache_file
    from stfeat.fit import predict_estimator
    from stfeat.targets import Expression, target_matrix

    manifest, est = load_model(model_dir, head)
    s = _load_sample(sample)
    genes = list(manifest["genes"])
    scales = manifest["layout"]["scales"]
    prov = {"model_dir": manifest["model_dir"], "encoder": manifest["encoder"], "head": manifest["head"],
            "transform": manifest["transform"], "gene_rule": manifest["gene_rule"], "stfeat_version": __version__,
            "sample_id": s.sample_id}
    if grid_um is None:
        sf = None
        cdir = cache_dir if cache_dir is not None else manifest.get("cache_dir")
        p = cache_file(cdir, manifest["encoder"], s.sample_id) if cdir else None
        if p is not None and p.exists():
            sf = SampleFeatures.from_cache(p, scales=scales, sample_id=s.sample_id)
            want = (manifest.get("encoder_attrs") or {}).get("config_hash")
            if want and sf.attrs.get("config_hash") != want:
                raise InputError(p, f"was made with another encoder configuration ({sf.attrs.get('config_hash')}) "
                                 f"than the model's ({want}).", "point --cache-dir to the cache the model was fitted "
                                 "on, or move this file away so features are extracted afresh.")
            sf = sf.aligned_to(s.barcodes, sample_path=getattr(sample, "path", sample))
            prov["features"] = f"cache {p}"
        else:
            feats = _extract(manifest, s, s.coords, encoder=encoder, weights=weights, device=device,
                             batch_size=batch_size)
            sf = SampleFeatures(s.sample_id, s.patient, s.barcodes, s.coords, s.um_per_px, feats)
            prov["features"] = "extracted"
        P = predict_estimator(est, _inputs(manifest, sf))
        a = ad.AnnData(X=P, obs=pd.DataFrame(index=pd.Index(s.barcodes, name="barcode")),
                       var=pd.DataFrame(index=pd.Index(genes, name="gene")))
        a.obs["sample"] = s.sample_id
        a.layers["predicted"] = P
        a.layers["measured"] = target_matrix(Expression.from_sample(s), genes, manifest["transform"])
        a.obsm["spatial"] = s.coords
    else:
        pts, how = tissue_grid(s, float(grid_um))
        feats = _extract(manifest, s, pts, encoder=encoder, weights=weights, device=device, batch_size=batch_size)
        names = np.array([f"grid_{i}" for i in range(len(pts))])
        sf = SampleFeatures(s.sample_id, s.patient, names, pts, s.um_per_px, feats)  # neighbours recomputed on the grid
        P = predict_estimator(est, _inputs(manifest, sf))
        a = ad.AnnData(X=P, obs=pd.DataFrame(index=names), var=pd.DataFrame(index=pd.Index(genes, name="gene")))
        a.obs["sample"] = s.sample_id
        a.obs["in_tissue"] = True
        a.layers["predicted"] = P
        a.obsm["spatial"] = pts
        prov.update(features="extracted", grid_step_um=float(grid_um), tissue=how)
    a.obs["sample"] = a.obs["sample"].astype("category")
    a.uns["stfeat"] = {k: str(v) if not isinstance(v, float) else v for k, v in prov.items()}
    from stfeat.spatial_uns import spatial_uns

    # scverse convention, so sc.pl.spatial(a, color=GENE) and squidpy plot it over the H&E as it is
    a.uns["spatial"] = spatial_uns(s, coords_px=np.asarray(a.obsm["spatial"]),
                                   spot_diameter_um=float(grid_um) if grid_um is not None else None)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.stem + ".tmp.h5ad")
        a.write_h5ad(tmp)
        os.replace(tmp, out)
        if plot:
            from stfeat import plots

            order = np.argsort(-np.var(P, axis=0))[:6]
            plots.plot_expression_map(plots.sample_thumbnail(s), np.asarray(a.obsm["spatial"]), P[:, order],
                                      [genes[i] for i in order], out.with_suffix(".png"),
                                      title=f"{s.sample_id}: {manifest['encoder']} / {manifest['head']}"
                                            + (f", grid {grid_um:g} um" if grid_um else ""))
    return a
