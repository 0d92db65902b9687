"""Benchmark stage two at Visium HD scale (issue 13): ridge from sufficient statistics, streamed predict.

Targets (1,000,000 points x 1,024 features x 3 scales x 250 genes, 2 cores): ridge with 5-fold
grouped CV over a penalty grid under 5 minutes with peak RSS under 4 GB; predicting 1,000,000
points under 30 s.

A child process writes synthetic float16 caches (several samples, two per patient) to a temporary
folder, so its memory does not count; this process then

* loads them lazily (``FeatureSet.from_caches(..., lazy=True)``: nothing big is read),
* the stats pass: one :func:`stfeat.suffstats.sample_stats` per sample, streaming row chunks of the
  flat input (targets are synthetic, computed per chunk from a hidden low-rank signal);
* the solve: :func:`stfeat.suffstats.solve` with ``RidgeCVHead(cv=5)`` over the patient groups
  (grouped 5-fold CV over the default 15-penalty grid, then the final fit);
* predict: :func:`stfeat.suffstats_cache.predict_chunks` over every point (float64 product, as
  ``RidgeCVHead.predict``; then the faster float32 product).

Peak RSS is ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the process's peak so far: the figure after
the solve covers the stats pass too. Usage::

    python benchmarks/bench_stage2_scale.py [--points 1000000] [--dim 1024] [--scales 3] [--genes 250]
                                            [--samples 10] [--dir /tmp] [--standardize slide]

Prints one line per measurement; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LATENT = 16


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _truth(d_total: int, genes: int) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(d_total, genes)).astype(np.float32) / np.sqrt(d_total)


def _write(folder: Path, points: int, dim: int, n_scales: int, n_samples: int) -> None:
    """Child process: write the caches (features = low-rank signal + noise, float16)."""
    from stfeat.cache import write_cache

    per = np.array_split(np.arange(points), n_samples)
    P = np.random.default_rng(0).normal(size=(n_scales, LATENT, dim)).astype(np.float32)
    for i, rows in enumerate(per):
        n, rng = len(rows), np.random.default_rng(100 + i)
        z = rng.normal(size=(n, LATENT)).astype(np.float32)
        feats = {}
        for j in range(n_scales):
            f = z @ P[j]
            f += rng.standard_normal((n, dim), dtype=np.float32)
            feats[112.0 * 2 ** j] = f.astype(np.float16)
            del f
        side = int(np.ceil(np.sqrt(n)))
        coords = np.c_[np.arange(n) % side, np.arange(n) // side].astype(np.float64) * 4.0
        write_cache(folder / f"S{i:02d}.h5", barcodes=np.array([f"b{k}" for k in range(n)]), coords=coords,
                    features=feats, attrs={"encoder": "bench", "sample_id": f"S{i:02d}",
                                           "patient": f"P{i // 2}", "um_per_px": 0.5, "weights_id": "bench"},
                    index=False)  # the FAISS index of the embeddings is not part of stage two
        del feats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--scales", type=int, default=3)
    ap.add_argument("--genes", type=int, default=250)
    ap.add_argument("--samples", type=int, default=10, help="samples, two per patient")
    ap.add_argument("--chunk-rows", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=None, help="BLAS threads (default: the CPU affinity's cores)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the temporary caches")
    ap.add_argument("--standardize", choices=("none", "slide"), default="none",
                    help="per-slide standardisation (slide: one more streaming pass per sample for its statistics)")
    ap.add_argument("--write-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write_only is not None:
        _write(args.write_only, args.points, args.dim, args.scales, args.samples)
        return

    from stfeat.features import FeatureSet
    from stfeat.heads.ridge import RidgeCVHead
    from stfeat.suffstats import combine, sample_stats, solve
    from stfeat.suffstats_cache import predict_chunks

    tmp = Path(tempfile.mkdtemp(prefix="bench_stage2_", dir=args.dir))
    try:
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--points", str(args.points), "--dim", str(args.dim),
                        "--scales", str(args.scales), "--samples", str(args.samples), "--write-only", str(tmp)],
                       check=True)
        size = sum(p.stat().st_size for p in tmp.glob("*.h5")) / 2**30
        print(f"BLAS threads: {args.threads or 'default'}; load average {os.getloadavg()[0]:.1f}")
        print(f"setup: {args.points} points x {args.dim} features x {args.scales} scales in {args.samples} float16 "
              f"caches ({size:.2f} GiB) written in {time.perf_counter() - t:.1f} s (child process)")

        from stfeat.cache import read_attrs

        entries = []
        for p in sorted(tmp.glob("*.h5")):
            a = read_attrs(p)
            entries.append((a["sample_id"], a["patient"], p, None, None))
        t = time.perf_counter()
        fs = FeatureSet([_lazy(e) for e in entries], standardize=args.standardize)
        print(f"lazy load: {time.perf_counter() - t:.2f} s, {fs!r}, peak RSS {_rss_gb():.2f} GB")
        t_slide = 0.0
        if args.standardize == "slide":
            t = time.perf_counter()
            for sid in fs.sample_ids:
                fs.samples[sid].slide_stats(fs.scales)  # memoised: the passes below reuse them
            t_slide = time.perf_counter() - t
            print(f"slide statistics pass (mean, std per sample, streamed): {t_slide:.1f} s, "
                  f"peak RSS {_rss_gb():.2f} GB")

        B = _truth(args.dim * args.scales, args.genes)
        ids = fs.sample_ids
        t = time.perf_counter()
        stats = {}
        for sid in ids:
            def chunks(sid=sid):
                for _, a, X in fs.iter_flat([sid], chunk_rows=args.chunk_rows):
                    noise = np.random.default_rng(a).standard_normal((len(X), args.genes), dtype=np.float32)
                    yield X, X @ B + noise
            stats[sid] = sample_stats(chunks(), n_jobs=args.threads)
        t_stats = time.perf_counter() - t
        print(f"stats pass: {t_stats:.1f} s ({args.points / t_stats:,.0f} points/s), peak RSS {_rss_gb():.2f} GB")

        groups = {}
        for sid in ids:
            groups.setdefault(fs.samples[sid].patient, []).append(stats[sid])
        t = time.perf_counter()
        est = solve({g: combine(v) for g, v in groups.items()}, RidgeCVHead(cv=5, n_jobs=args.threads))
        t_solve = time.perf_counter() - t
        print(f"solve (grouped 5-fold CV over {len(est.alphas_)} penalties + final fit, d={est.n_features_in_}, "
              f"{args.genes} genes): {t_solve:.1f} s, alpha={est.alpha_:.3g}, peak RSS {_rss_gb():.2f} GB")
        print(f"CV total ({'slide statistics + ' if t_slide else ''}stats pass + solve): "
              f"{t_slide + t_stats + t_solve:.1f} s (target < 300 s at 1M points)")

        layout = {"kind": "flat", "scales": fs.scales, "neighbor_mean": False, "k_neighbors": 8,
                  "standardize": args.standardize}
        from stfeat.heads._cpu import blas_threads

        t = time.perf_counter()
        with blas_threads(args.threads):
            P = predict_chunks(est, fs, ids, layout, chunk_rows=args.chunk_rows)
        t_pred = time.perf_counter() - t
        print(f"predict {len(P)} points x {P.shape[1]} genes, streamed, float64 product: {t_pred:.1f} s "
              f"({len(P) / t_pred:,.0f} points/s; target < 30 s at 1M), peak RSS {_rss_gb():.2f} GB")
        head = P[:100_000].copy()  # kept for the comparison; the full arrays are not held twice
        del P
        t = time.perf_counter()
        with blas_threads(args.threads):
            P = predict_chunks(est, fs, ids, layout, chunk_rows=args.chunk_rows, precision="float32")
        t32 = time.perf_counter() - t
        err = float(np.abs(P[:len(head)] - head).max() / np.abs(head).max())
        print(f"predict, float32 product (what Model.predict uses on a lazy sample): {t32:.1f} s ({len(P) / t32:,.0f} points/s), max |diff| / max |P| = "
              f"{err:.1e} over the first {len(head)} points, peak RSS {_rss_gb():.2f} GB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _lazy(entry):
    from stfeat.features import SampleFeatures

    sid, patient, path, _, _ = entry
    return SampleFeatures.from_cache(path, patient=patient, sample_id=sid, lazy=True)


if __name__ == "__main__":
    main()
