"""Small in-code datasets for the stage-two tests (no tests here; imported by test_fit*.py etc.).

Each toy sample has spots on a square lattice, a hidden 3-d "morphology" z per spot, features at two
scales that are noisy linear maps of z (the larger scale also sees the neighbourhood mean), and
Poisson counts whose log-mean is linear in z, so a linear head can learn real signal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ENCODER = "toy"
SCALES = (112.0, 224.0)
UM_PER_PX = 0.5
N_GENES = 40
DIM = 16


def gene_names(n: int = N_GENES) -> list[str]:
    return [f"G{i:03d}" for i in range(n)]


def toy_sample(sample_id: str, patient: str | None, *, n_side: int = 9, seed: int = 0, genes=None,
               extra_counts: dict | None = None):
    """An in-memory stfeat Sample (no slide) plus its hidden z."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from stfeat import _constants as K
    from stfeat.io.sample import Sample

    rng = np.random.default_rng(abs(hash((sample_id, seed))) % 2**32)
    gx, gy = np.meshgrid(np.arange(n_side), np.arange(n_side))
    coords = np.c_[gx.ravel(), gy.ravel()].astype(float) * 200.0 + 300.0  # 100 um pitch at 0.5 um/px
    n = len(coords)
    z = rng.normal(size=(n, 3))
    genes = list(genes or gene_names())
    W = np.random.default_rng(7).normal(scale=0.6, size=(3, len(genes)))  # shared across samples
    b = np.random.default_rng(8).uniform(0.5, 2.5, size=len(genes))
    lam = np.exp(z @ W + b)
    counts = rng.poisson(lam).astype(np.float32)
    if extra_counts:
        for g, col in extra_counts.items():
            counts[:, genes.index(g)] = col
    obs = pd.DataFrame(index=[f"s{sample_id}_{i}" for i in range(n)])
    a = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=genes))
    a.obsm[K.SPATIAL_KEY] = coords
    a.uns[K.UNS_KEY] = {K.U_SAMPLE_ID: sample_id, K.U_PATIENT: patient or "", K.U_UM_PER_PX: UM_PER_PX,
                        K.U_FORMAT: "toy"}
    return Sample(adata=a, slide=None), z


def toy_features(z: np.ndarray, coords_px: np.ndarray, seed: int) -> dict[float, np.ndarray]:
    rng = np.random.default_rng(seed)
    P = np.random.default_rng(11).normal(size=(3, DIM))
    f1 = z @ P + 0.1 * rng.normal(size=(len(z), DIM))
    # the wider field of view averages the neighbourhood
    from scipy.spatial import cKDTree

    _, idx = cKDTree(coords_px).query(coords_px, k=5)
    f2 = z[idx].mean(axis=1) @ P + 0.1 * rng.normal(size=(len(z), DIM))
    return {SCALES[0]: f1.astype(np.float32), SCALES[1]: f2.astype(np.float32)}


def write_toy_cache(cache_dir: Path, sample, z: np.ndarray, *, encoder: str = ENCODER, seed: int = 0,
                    shuffle: bool = False, drop: int = 0) -> Path:
    """Write the sample's cache with stage one's writer (optionally rows shuffled / some dropped)."""
    from stfeat.cache import cache_path, encoder_tag, write_cache
    from stfeat.neighbors import spatial_neighbors

    bc = sample.barcodes
    coords = sample.coords
    feats = toy_features(z, coords, seed)
    order = np.arange(len(bc))
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(bc))
    if drop:
        order = order[drop:]
    bc, coords = bc[order], coords[order]
    feats = {k: v[order] for k, v in feats.items()}
    idx, dist = spatial_neighbors(coords * UM_PER_PX, 6)
    p = cache_path(cache_dir, encoder_tag(encoder), sample.sample_id)
    return write_cache(p, barcodes=bc, coords=coords, features=feats, neighbors=idx, neighbor_dist_um=dist,
                       attrs={"encoder": encoder, "sample_id": sample.sample_id, "patient": sample.patient or "",
                              "um_per_px": UM_PER_PX, "weights_id": "toy-weights"})


def toy_dataset(cache_dir: Path, layout=(("A", 2), ("B", 2), ("C", 1)), *, encoder: str = ENCODER,
                with_patients: bool = True, n_side: int = 9):
    """Samples (patient P, sections P1..Pk) and their caches; returns the list of Samples."""
    samples = []
    for p, n_sec in layout:
        for j in range(n_sec):
            sid = f"{p}{j + 1}"
            s, z = toy_sample(sid, p if with_patients else None, n_side=n_side)
            write_toy_cache(cache_dir, s, z, encoder=encoder, seed=len(samples))
            samples.append(s)
    return samples


def write_toy_disk(root: Path, samples) -> Path:
    """Write samples as .h5ad + PNG H&E-like image + manifest.csv (read back by stfeat.io); returns the manifest."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rows = ["sample_id,patient,path,image,um_per_px"]
    for k, s in enumerate(samples):
        a = s.adata.copy()
        a.uns = {}
        a.write_h5ad(root / f"{s.sample_id}.h5ad")
        # pink tissue disc on white glass, with a texture that differs per sample
        h = w = int(s.coords.max() + 400)
        c = h / 2
        y, x = np.arange(h)[:, None], np.arange(w)[None, :]
        tissue = (x - c) ** 2 + (y - c) ** 2 < (0.45 * h) ** 2
        shade = (40 * np.sin(x / (37 + 5 * k)) * np.cos(y / 53)).astype(np.int16)
        rgb = np.full((h, w, 3), 245, np.uint8)
        for ch, base in enumerate((200, 120, 170)):
            rgb[..., ch] = np.where(tissue, np.clip(base + shade, 0, 255), 245)
        Image.fromarray(rgb).save(root / f"{s.sample_id}.jpg", quality=90)
        rows.append(f"{s.sample_id},{s.patient or ''},{s.sample_id}.h5ad,{s.sample_id}.jpg,{UM_PER_PX}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def plant_pickled_head(model_dir: Path, sentinel: Path) -> None:
    """Make a saved model folder malicious: model.json says joblib, and head.joblib runs `touch sentinel`."""
    import json
    import pickle

    man = json.loads((model_dir / "model.json").read_text())
    man["head_format"] = "joblib"
    (model_dir / "model.json").write_text(json.dumps(man))

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {sentinel}",))

    (model_dir / "head.joblib").write_bytes(pickle.dumps(Evil()))
