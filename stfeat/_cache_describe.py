"""The summary of a feature cache that ``stfeat info CACHE.h5`` prints (:func:`stfeat.cache.describe_cache`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def describe(path: Path) -> str:
    """A human-readable summary of a cache file (:func:`stfeat.cache.describe_cache`)."""
    import h5py

    from stfeat.cache import _check_schema, read_attrs

    attrs = read_attrs(path)
    _check_schema(path, attrs)
    lines = [f"stfeat feature cache: {path}"]
    state = "complete" if attrs.get("complete") else "INCOMPLETE (rerun `stfeat extract` to resume)"
    lines.append(f"  state:      {state}; created {attrs.get('created', '?')}, "
                 f"completed {attrs.get('completed') or '-'}")
    lines.append(f"  sample:     {attrs.get('sample_id')} (patient {attrs.get('patient') or '-'}), "
                 f"{attrs.get('n_spots')} spots")
    lines.append(f"  encoder:    {attrs.get('encoder')} [tag {attrs.get('encoder_tag')}], "
                 f"weights {attrs.get('weights_id')}, config {attrs.get('config_hash')}")
    lines.append(f"  image:      {attrs.get('um_per_px')} um/px ({attrs.get('um_per_px_source')}), "
                 f"crops resized to {attrs.get('patch_px')} px")
    if isinstance(attrs.get("views"), dict) and not attrs["views"].get("plain"):
        v = attrs["views"]
        lines.append(f"  views:      stain {v.get('stain_norm')}, tta {v.get('tta')} ({attrs.get('n_views', 1)} per crop), "
                     f"HED jitter {v.get('tta_hed_jitter')}, background {v.get('background')}")
    if "extract_seconds" in attrs:
        lines.append(f"  extraction: {float(attrs['extract_seconds']):.1f} s wall (summed over resumes)")
    with h5py.File(path, "r") as f:
        for s in sorted(f["features"].keys(), key=float):
            ds = f["features"][s]
            done = int(np.count_nonzero(f["done"][s][...])) if "done" in f and s in f["done"] else ds.shape[0]
            pad = int(np.count_nonzero(f["padded"][s][...])) if "padded" in f and s in f["padded"] else 0
            lines.append(f"  features/{s:<6} {ds.shape[0]} x {ds.shape[1]} {ds.dtype}, "
                         f"{done}/{ds.shape[0]} done, {pad} padded at the image edge")
        if "neighbors" in f and "spatial" in f["neighbors"]:
            nb = f["neighbors"]["spatial"]
            dist = f["neighbors"]["spatial_dist_um"][...]
            finite = dist[np.isfinite(dist)]
            med = f", median distance {np.median(finite):.1f} um" if finite.size else ""
            lines.append(f"  neighbors:  k={nb.shape[1]} spatial{med}")
        else:
            lines.append("  neighbors:  none")
        from stfeat.spot_index import describe as describe_index

        lines.extend(describe_index(f))
    lines.append(f"  versions:   stfeat {attrs.get('stfeat_version')}, torch {attrs.get('torch_version')}, "
                 f"timm {attrs.get('timm_version')}, schema {attrs.get('schema_version')}")
    return "\n".join(lines)
