"""Per-gene predictability: which genes H&E predicts on held-out data, with bootstrap intervals.

For every target gene: its held-out Pearson r in each outer fold, their mean over folds (``r_mean``), the
r over all held-out spots pooled (``r_pooled``), and a percentile bootstrap interval of ``r_mean``
(``ci_low``, ``ci_high``): test spots resampled with replacement within each fold (seeded, 200 resamples,
95% by default). A gene is ``predictable`` when ``ci_low > 0``. With a split across patients this says
which genes H&E predicts on new patients; with a within-section split (``block``) it does not.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

N_BOOT = 200
LEVEL = 0.95


def predictability(pieces: Sequence[tuple[str, Sequence[str], np.ndarray, np.ndarray]], *, n_boot: int = N_BOOT,
                   level: float = LEVEL, seed: int = 0):
    """Per-gene table from ``(fold, genes, measured, predicted)`` of every outer fold's test spots.

    Returns a pandas DataFrame: gene, r_mean, ci_low, ci_high, predictable, r_pooled, n_folds, n_test_spots,
    then ``r_{fold}`` per fold (NaN where the gene was not a target of that fold).
    """
    import pandas as pd

    from stfeat.evaluate import pearson_per_gene

    genes = list(dict.fromkeys(g for _, gl, _, _ in pieces for g in gl))
    col = {g: i for i, g in enumerate(genes)}
    G, F = len(genes), len(pieces)
    r_fold = np.full((F, G), np.nan)
    boot = np.full((n_boot, F, G), np.nan)
    rng = np.random.default_rng(seed)
    n_spots = np.zeros(G, np.int64)
    for f, (_, gl, Y, P) in enumerate(pieces):
        cols = [col[g] for g in gl]
        Y, P = np.asarray(Y, np.float64), np.asarray(P, np.float64)
        r_fold[f, cols] = pearson_per_gene(Y, P)
        n_spots[cols] += len(Y)
        for b in range(n_boot):
            idx = rng.integers(0, len(Y), len(Y))
            boot[b, f, cols] = pearson_per_gene(Y[idx], P[idx])
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            r_mean = np.nanmean(r_fold, axis=0)
            stat = np.nanmean(boot, axis=1)  # (B, G): the statistic r_mean on each resample
            a = (1 - level) / 2
            lo = np.nanquantile(stat, a, axis=0)
            hi = np.nanquantile(stat, 1 - a, axis=0)
    pooled = np.full(G, np.nan)
    for g, j in col.items():
        ys = [np.asarray(Y, np.float64)[:, gl.index(g)] for _, gl, Y, _ in pieces if g in gl]
        ps = [np.asarray(P, np.float64)[:, list(gl).index(g)] for _, gl, _, P in pieces if g in gl]
        pooled[j] = pearson_per_gene(np.concatenate(ys)[:, None], np.concatenate(ps)[:, None])[0]
    df = pd.DataFrame({"gene": genes, "r_mean": r_mean, "ci_low": lo, "ci_high": hi,
                       "predictable": np.nan_to_num(lo, nan=-1.0) > 0, "r_pooled": pooled,
                       "n_folds": np.isfinite(r_fold).sum(axis=0), "n_test_spots": n_spots})
    for f, (name, _, _, _) in enumerate(pieces):
        df[f"r_{name}"] = r_fold[f]
    return df.sort_values("r_mean", ascending=False, na_position="last").reset_index(drop=True)


def write_gene_list(path, genes: Sequence[str], header: str = "") -> None:
    """A gene list in the format ``--genes file:PATH`` reads: one symbol per line, ``#`` comments."""
    from pathlib import Path

    lines = [f"# {h}" for h in header.splitlines() if h] + [str(g) for g in genes]
    Path(path).write_text("\n".join(lines) + "\n")
