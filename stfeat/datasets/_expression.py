"""Synthetic expression: the gene panel, per-cell-type profiles, spot lattice, morphology and counts.

The counts of a spot are a negative binomial whose mean is driven by the morphology under it
(see :mod:`stfeat.datasets.synthetic`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stfeat.datasets._tissue import CELL_TYPES, FAT, IMMUNE, REGIONS, STROMA, TUMOUR

# Marker genes per cell type (real symbols, so plots read naturally; the values are synthetic).
MARKERS = {
    "tumour": ["EPCAM", "KRT8", "KRT18", "KRT19", "ERBB2", "GRB7", "CDH1", "MUC1", "KRT7", "CLDN4"],
    "stroma": ["COL1A1", "COL1A2", "COL3A1", "DCN", "LUM", "FN1", "SPARC", "POSTN", "PDGFRB", "VIM"],
    "immune": ["PTPRC", "CD3E", "CD2", "CD19", "MS4A1", "CD74", "HLA-DRA", "IGKC", "CD52", "LCK"],
    "adipocyte": ["ADIPOQ", "PLIN1", "FABP4", "LEP", "CIDEA", "LPL"],
}
HYPOXIA_GENES = ["CA9", "VEGFA", "NDRG1", "BNIP3"]  # rise with distance from stroma inside nests
INTERFERON_GENES = ["CXCL9", "CXCL10", "IDO1"]  # rise with immune cells within ~150 um
PROLIFERATION_GENES = ["MKI67", "TOP2A", "CCNB1"]  # rise with tumour nuclear size
HOUSEKEEPING = ["ACTB", "GAPDH", "B2M", "RPLP0", "RPS18", "EEF1A1", "TPT1", "MALAT1", "FTL", "TMSB4X"]


def gene_panel(n_genes: int = 300) -> tuple[list[str], list[str]]:
    """Gene names and their role (``marker:tumour``, ``hypoxia``, ``housekeeping``, ``mixed``, ``noise``)."""
    names: list[str] = []
    roles: list[str] = []
    for ct, genes in MARKERS.items():
        names += genes
        roles += [f"marker:{ct}"] * len(genes)
    for genes, role in (
        (HYPOXIA_GENES, "hypoxia"),
        (INTERFERON_GENES, "interferon"),
        (PROLIFERATION_GENES, "proliferation"),
        (HOUSEKEEPING, "housekeeping"),
    ):
        names += genes
        roles += [role] * len(genes)
    if n_genes < len(names):
        raise ValueError(f"n_genes must be at least {len(names)} (the named marker panel), got {n_genes}")
    rest = n_genes - len(names)
    n_noise = rest // 4
    n_mixed = rest - n_noise
    names += [f"SYNMIX{i + 1:03d}" for i in range(n_mixed)]
    roles += ["mixed"] * n_mixed
    names += [f"SYNNOISE{i + 1:03d}" for i in range(n_noise)]
    roles += ["noise"] * n_noise
    return names, roles


def _profiles(roles: list[str], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-cell-type mean UMIs per cell (4, g) and the context-term weights, from the gene roles."""
    g = len(roles)
    prof = np.zeros((len(CELL_TYPES), g))
    # Every type expresses a little of everything (ambient + shared programmes).
    prof += rng.lognormal(mean=np.log(0.05), sigma=0.6, size=prof.shape)
    ctx = {k: np.zeros(g) for k in ("fat_area", "fibre", "hypoxia", "interferon", "prolif", "const")}
    for j, role in enumerate(roles):
        if role.startswith("marker:"):
            t = CELL_TYPES.index(role.split(":", 1)[1])
            prof[t, j] += rng.lognormal(np.log(2.0), 0.5)
            if t == 3:  # adipocytes are few nuclei and much area: their genes follow fat area
                ctx["fat_area"][j] = rng.lognormal(np.log(25.0), 0.3)
            if t == 1:
                ctx["fibre"][j] = rng.lognormal(np.log(8.0), 0.3)
        elif role == "hypoxia":
            ctx["hypoxia"][j] = rng.lognormal(np.log(1.2), 0.3)
        elif role == "interferon":
            ctx["interferon"][j] = rng.lognormal(np.log(1.0), 0.3)
        elif role == "proliferation":
            ctx["prolif"][j] = rng.lognormal(np.log(1.0), 0.3)
        elif role == "housekeeping":
            prof[:, j] += rng.lognormal(np.log(3.0), 0.3)
        elif role == "mixed":
            w = rng.dirichlet(np.full(len(CELL_TYPES), 0.5))
            prof[:, j] += w * rng.lognormal(np.log(1.0), 0.7)
        elif role == "noise":
            ctx["const"][j] = rng.lognormal(np.log(3.0), 0.5)
    return {"profiles": prof, **ctx}


def hex_spots(size_um: tuple[float, float], pitch_um: float, margin_um: float) -> np.ndarray:
    """Visium-style hexagonal lattice: rows ``pitch*sqrt(3)/2`` apart, odd rows offset by half a pitch.

    Returns (n, 4) rows of (x_um, y_um, array_row, array_col).
    """
    dy = pitch_um * np.sqrt(3) / 2
    out = []
    r = 0
    y = margin_um
    while y <= size_um[1] - margin_um:
        x = margin_um + (pitch_um / 2 if r % 2 else 0.0)
        c = 0
        while x <= size_um[0] - margin_um:
            out.append((x, y, r, 2 * c + (r % 2)))
            x += pitch_um
            c += 1
        y += dy
        r += 1
    return np.asarray(out, dtype=np.float64)


def spot_morphology(
    section: dict[str, Any], spots_um: np.ndarray, spot_diameter_um: float
) -> dict[str, np.ndarray]:
    """Morphology under each spot: cells per type, fat and fibre fractions, hypoxia, immune proximity.

    These are the ground-truth drivers of the synthetic expression (stored in ``obs`` as ``syn_*``).
    """
    from scipy.ndimage import distance_transform_edt
    from scipy.spatial import cKDTree

    lab, cell_um, nuc = section["labels"], section["cell_um"], section["nuclei"]
    n = len(spots_um)
    rad = spot_diameter_um / 2
    tree = cKDTree(nuc[:, :2]) if len(nuc) else None
    counts = np.zeros((n, len(CELL_TYPES)))
    tum_size = np.zeros(n)
    region_of_type = {TUMOUR: 0, STROMA: 1, IMMUNE: 2, FAT: 3}
    if tree is not None:
        for i, hits in enumerate(tree.query_ball_point(spots_um, rad)):
            if not hits:
                continue
            reg = nuc[hits, 6].astype(int)
            for region, t in region_of_type.items():
                counts[i, t] = np.sum(reg == region)
            tmask = reg == TUMOUR
            if tmask.any():
                tum_size[i] = float(np.mean(nuc[hits, 2][tmask] * nuc[hits, 3][tmask]))
    # Region fractions inside the spot disk on the coarse grid.
    gy, gx = np.mgrid[0 : lab.shape[0], 0 : lab.shape[1]]
    centres = np.column_stack([(gx.ravel() + 0.5) * cell_um, (gy.ravel() + 0.5) * cell_um])
    gtree = cKDTree(centres)
    flat = lab.ravel()
    frac = np.zeros((n, len(REGIONS)))
    for i, hits in enumerate(gtree.query_ball_point(spots_um, rad)):
        if hits:
            frac[i] = np.bincount(flat[hits], minlength=len(REGIONS)) / len(hits)
    # Fibre density (mean over the spot disk, sampled on a 2 um grid).
    fib = section["fibre"]
    fibre = np.zeros(n)
    upp = section["um_per_px"]
    off = np.arange(-rad, rad + 1e-9, 2.0)
    ox, oy = np.meshgrid(off, off)
    disk = ox**2 + oy**2 <= rad**2
    ox, oy = ox[disk], oy[disk]
    for i, (x, y) in enumerate(spots_um):
        px = np.clip(((x + ox) / upp).astype(int), 0, fib.shape[1] - 1)
        py = np.clip(((y + oy) / upp).astype(int), 0, fib.shape[0] - 1)
        fibre[i] = float(np.mean(fib[py, px])) * frac[i, STROMA]
    # Hypoxia: depth inside a tumour nest (um to the nearest non-tumour cell), saturating at 100 um.
    depth = distance_transform_edt(lab == TUMOUR) * cell_um
    gi = np.clip((spots_um[:, 1] / cell_um).astype(int), 0, lab.shape[0] - 1)
    gj = np.clip((spots_um[:, 0] / cell_um).astype(int), 0, lab.shape[1] - 1)
    hyp = np.clip(depth[gi, gj] / 100.0, 0, 1.5) * frac[:, TUMOUR]
    # Interferon: immune nuclei within 150 um, acting on tumour cells under the spot.
    imm = nuc[nuc[:, 6] == IMMUNE, :2]
    near = np.zeros(n)
    if len(imm):
        near = np.array([len(h) for h in cKDTree(imm).query_ball_point(spots_um, 150.0)], float)
    ifn = np.log1p(near / 20.0) * counts[:, 0] / 10.0
    prolif = counts[:, 0] * np.clip(tum_size / (5.5 * 4.2) - 0.6, 0, None)
    return {
        "cells": counts,
        "frac": frac,
        "fibre": fibre,
        "hypoxia": hyp,
        "interferon": ifn,
        "prolif": prolif,
    }


def _counts(
    morph: dict[str, np.ndarray],
    model: dict[str, np.ndarray],
    batch: np.ndarray,
    rng: np.random.Generator,
    theta: float = 8.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Negative-binomial counts (n, g) and their means, from morphology and the expression model."""
    mu = morph["cells"] @ model["profiles"]
    mu += morph["frac"][:, [FAT]] * model["fat_area"][None]
    mu += morph["fibre"][:, None] * model["fibre"][None]
    mu += morph["hypoxia"][:, None] * model["hypoxia"][None] * 12.0
    mu += morph["interferon"][:, None] * model["interferon"][None] * 10.0
    mu += morph["prolif"][:, None] * model["prolif"][None] * 2.0
    mu += model["const"][None] * (0.5 + morph["frac"][:, 1:].sum(1, keepdims=True))
    mu = (mu + 0.02) * batch[None] * rng.lognormal(0, 0.15, size=(len(mu), 1))  # capture efficiency
    p = theta / (theta + mu)
    return rng.negative_binomial(theta, p).astype(np.float32), mu
