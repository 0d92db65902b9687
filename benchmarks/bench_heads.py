"""Fit-time benchmark of the stage-two heads on synthetic data shaped like a real run.

Default shape: 10,000 spots x 1,024 features x 3 scales (concatenated to 3,072 for the flat heads,
tokens for the attention head, plus 8 neighbour tokens) x 250 genes. Prints wall-clock seconds;
nothing is asserted (timings depend on the machine). Targets on 2 CPU cores: ridge and hest-ridge
fit < 2 s, one attention epoch < 10 s.

    python benchmarks/bench_heads.py [--n 10000] [--d 1024] [--scales 3] [--genes 250]
        [--neighbors 8] [--lgbm-genes 5] [--heads ridge,hest-ridge,attention,knn,mlp,lgbm]
        [--no-baselines]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def make_data(n: int, d: int, scales: int, genes: int, k: int, seed: int = 0):
    """Low-rank features (as encoder embeddings are) and genes linear in them plus noise."""
    rng = np.random.default_rng(seed)
    rank = 64
    basis = rng.standard_normal((rank, d)).astype(np.float32)
    feats = []
    latent = rng.standard_normal((n, rank)).astype(np.float32)
    for s in range(scales):
        z = latent + 0.5 * rng.standard_normal((n, rank)).astype(np.float32)
        f = np.maximum(z @ basis / np.sqrt(rank) + 0.3 * rng.standard_normal((n, d),
                                                                            dtype=np.float32), 0)
        feats.append(f.astype(np.float32))
    W = rng.standard_normal((rank, genes)) / np.sqrt(rank)
    Y = latent @ W + 0.5 * rng.standard_normal((n, genes))
    side = int(np.ceil(np.sqrt(n)))
    coords = np.stack(np.divmod(np.arange(n), side), 1).astype(np.float64) * 100.0
    return feats, coords, Y


def grid_neighbors(coords: np.ndarray, k: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatL2(2)
    index.add(coords.astype(np.float32))
    _, idx = index.search(coords.astype(np.float32), k + 1)
    return idx[:, 1:].astype(np.int64)


def timeit(label: str, fn):
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    print(f"{label:<58s} {dt:8.2f} s", flush=True)
    return out, dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--scales", type=int, default=3)
    ap.add_argument("--genes", type=int, default=250)
    ap.add_argument("--neighbors", type=int, default=8)
    ap.add_argument("--lgbm-genes", type=int, default=5)
    ap.add_argument("--heads", default="ridge,hest-ridge,attention,knn,mlp,lgbm")
    ap.add_argument("--no-baselines", dest="baselines", action="store_false",
                    help="skip the scikit-learn baselines timed beside ridge and hest-ridge")
    args = ap.parse_args()

    import torch

    from stfeat.heads import make_head
    from stfeat.heads.attention import build_tokens

    heads = args.heads.split(",")
    print(f"cpu cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, "
          f"cuda: {torch.cuda.is_available()}")
    feats, coords, Y = make_data(args.n, args.d, args.scales, args.genes, args.neighbors)
    X = np.concatenate(feats, axis=1)
    n_test = 1000
    print(f"data: {args.n} spots x {args.d} features x {args.scales} scales "
          f"(flat {X.shape[1]}) x {args.genes} genes; {args.neighbors} neighbours")

    def r_mean(P):
        Yt = Y[:n_test, :P.shape[1]]
        Pc, Tc = P - P.mean(0), Yt - Yt.mean(0)
        return float(np.mean((Pc * Tc).sum(0) / (np.linalg.norm(Pc, axis=0) *
                                                   np.linalg.norm(Tc, axis=0) + 1e-12)))

    tr = slice(n_test, None)
    if "ridge" in heads:
        # warm-up: torch/MKL/threadpoolctl initialisation is a one-off per process
        make_head("ridge").fit(X[:500, :64], Y[:500, :2])
        h, t_ours = timeit(f"ridge fit (GCV, 15 alphas) {X.shape}",
                           lambda: make_head("ridge").fit(X, Y))
        print(f"  chosen alpha {h.alpha_:.3g}")
        # what `stfeat fit` runs when the training set has >= 3 sections or patients
        sections = np.arange(len(X)) * 5 // len(X)
        timeit("ridge fit, grouped 5-fold CV (5 sections, the fit default)",
               lambda: make_head("ridge").fit(X, Y, groups=sections))
        if args.baselines:
            from sklearn.linear_model import RidgeCV
            from sklearn.preprocessing import StandardScaler

            def sk_ridge():
                Z = StandardScaler().fit_transform(X)
                return RidgeCV(alphas=h.alphas_).fit(Z, Y)

            sk, t_sk = timeit("  baseline: StandardScaler + sklearn RidgeCV (same 15 alphas, GCV)",
                              sk_ridge)
            print(f"  sklearn chose alpha {sk.alpha_:.3g}; speed-up {t_sk / t_ours:.1f}x")
        h9 = make_head("ridge").fit(X[tr], Y[tr])
        print(f"  held-out mean r {r_mean(h9.predict(X[:n_test])):.3f}")
    if "hest-ridge" in heads:
        make_head("hest-ridge").fit(X[:2000, :600], Y[:2000])  # warm-up
        h, t_ours = timeit(f"hest-ridge fit {X.shape} (default backend='stfeat')",
                           lambda: make_head("hest-ridge").fit(X, Y))
        print(f"  PCA solver {h.pca_solver_}; LSQR iterations per gene: max {h.n_iter_.max()}")
        hs, t_sk = timeit("  baseline: backend='sklearn' (sklearn's scaler + PCA objects)",
                          lambda: make_head("hest-ridge", backend="sklearn").fit(X, Y))
        P, Ps = h.predict(X[:n_test]), hs.predict(X[:n_test])
        print(f"  speed-up {t_sk / t_ours:.1f}x; same LSQR iterations for "
              f"{np.mean(h.n_iter_ == hs.n_iter_):.0%} of genes; max |dP| / std(P) "
              f"{np.abs(P - Ps).max() / Ps.std():.1e}; mean r {r_mean(P):.6f} vs {r_mean(Ps):.6f}")
        timeit(f"hest-ridge fit, one scale ({args.n} x {args.d})",
               lambda: make_head("hest-ridge").fit(feats[0], Y))
        if args.baselines:
            timeit("hest-ridge fit, solver='cholesky' (exact minimiser, not HEST's LSQR)",
                   lambda: make_head("hest-ridge", solver="cholesky").fit(X, Y))
    if "knn" in heads:
        h, _ = timeit("knn fit", lambda: make_head("knn").fit(X[tr], Y[tr]))
        timeit(f"knn predict {n_test} spots", lambda: h.predict(X[:n_test]))
    if "mlp" in heads:
        h = make_head("mlp", max_epochs=1, patience=1)
        _, dt = timeit("mlp fit, 1 epoch (+ validation pass)", lambda: h.fit(X, Y))
        h = make_head("mlp", max_epochs=5, patience=5)
        timeit("mlp fit, 5 epochs", lambda: h.fit(X, Y))
    if "attention" in heads:
        nb = grid_neighbors(coords, args.neighbors)
        Xt, rel, types, mask = build_tokens(feats, coords, nb)
        print(f"  attention tokens {Xt.shape}")
        h = make_head("attention", baseline=None, max_epochs=1, patience=1)
        timeit("attention fit, 1 epoch, no baseline (+ validation pass)",
               lambda: h.fit(Xt, Y, rel_pos=rel, token_type=types, token_mask=mask))
        h = make_head("attention", max_epochs=1, patience=1)
        timeit("attention fit, 1 epoch + ridge baseline",
               lambda: h.fit(Xt, Y, rel_pos=rel, token_type=types, token_mask=mask))
    if "lgbm" in heads:
        g = args.lgbm_genes
        g_r = min(g, 10)  # held-out r from a second fit on the training spots, on few genes

        for label, kw in (("defaults", {}), ("PCA 256", {"pca_components": 256})):
            h = make_head("lgbm", **kw)
            _, dt = timeit(f"lgbm fit, {label}, {g} genes (<=500 rounds, early stop)",
                           lambda: h.fit(X, Y[:, :g]))
            its = h.best_iterations_
            print(f"  best iterations median {int(np.median(its))} (max {its.max()}); "
                  f"{h.feature_fraction_:.3g} of "
                  f"{X.shape[1] if h.components_ is None else len(h.components_)} features per tree")
            print(f"  extrapolated to {args.genes} genes: ~{dt / g * args.genes:.0f} s "
                  "(linear in genes; binning is shared so this slightly overestimates)")
            h9 = make_head("lgbm", **kw).fit(X[tr], Y[tr, :g_r])
            print(f"  held-out mean r {r_mean(h9.predict(X[:n_test])):.3f} "
                  f"({g_r} genes, {n_test} spots)")


if __name__ == "__main__":
    main()
