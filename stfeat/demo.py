"""``stfeat demo``: the whole pipeline end to end, offline, in a few minutes on a laptop CPU.

Without data it generates the synthetic dataset (:mod:`stfeat.datasets`: 3 patients x 2 sections,
labelled ``SYN-...``), extracts features with the no-weights ``classical`` encoder at three fields
of view, fits a few heads with a patient-grouped split, and writes metrics, plots and predictions.
With ``data=`` it runs the same steps on the user's own sample, folder or manifest.

It calls the library functions the CLI commands call (:func:`stfeat.extraction.extract`,
:func:`stfeat.fitting.fit`, :func:`stfeat.prediction.predict`), never copies of them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

DEFAULT_SCALES_UM: tuple[float, ...] = (112.0, 224.0, 448.0)
DEFAULT_HEADS: tuple[str, ...] = ("hest-ridge", "ridge", "knn")
QUICK_ENV = "STFEAT_DEMO_QUICK"  # "1": a smaller synthetic dataset and two heads (tests, CI)


@dataclass
class DemoResult:
    """Where the demo put everything, and what it measured."""

    out_dir: Path
    data: Path
    synthetic: bool
    cache_dir: Path
    fit_dir: Path
    encoder: str
    scales_um: list[float]
    heads: list[str]
    cache_files: list[Path] = field(default_factory=list)
    comparison: Any = None  # pandas DataFrame from FitResult.comparison
    metrics: dict = field(default_factory=dict)
    prediction: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def summary_path(self) -> Path:
        return self.out_dir / "demo_summary.json"

    def headline(self) -> dict[str, float]:
        """Mean Pearson r over held-out folds, per head (the metric of record)."""
        out: dict[str, float] = {}
        if self.comparison is None:
            return out
        df = self.comparison
        col = "mean" if "mean" in df.columns else df.columns[-1]
        for _, row in df.iterrows():
            out[str(row.get("head", row.iloc[0]))] = float(row[col])
        return out


def quick_mode() -> bool:
    """True when ``$STFEAT_DEMO_QUICK`` asks for reduced settings (same command, smaller run)."""
    return os.environ.get(QUICK_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def synthetic_settings(quick: bool) -> dict[str, Any]:
    """Synthetic dataset parameters of the demo (full: 3 patients x 2 sections of 1.5 mm, ~150 spots each)."""
    if quick:
        return dict(n_patients=3, sections_per_patient=1, n_genes=100, size_um=(600.0, 600.0))
    return dict(n_patients=3, sections_per_patient=2, n_genes=300, size_um=(1500.0, 1500.0))


def run_demo(
    out_dir: str | Path = "stfeat_demo",
    *,
    data: str | Path | None = None,
    encoder: str = "classical",
    weights: str | Path | None = None,
    scales_um: Sequence[float] = DEFAULT_SCALES_UM,
    heads: Sequence[str] | None = None,
    genes: str = "hvg:50",
    split: str = "auto",
    um_per_px: float | None = None,
    device: str | None = None,
    num_workers: int | None = 0,
    seed: int = 0,
    quick: bool | None = None,
    predict: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run extract -> fit (-> predict) on the synthetic dataset or on ``data``.

    Parameters
    ----------
    out_dir
        Everything goes here: ``data/`` (synthetic dataset), ``cache/`` (features), ``fit/``
        (metrics, plots, predictions, models), ``demo_summary.json``.
    data
        A sample, a folder of samples or a manifest; ``None`` generates the synthetic dataset.
    encoder, weights
        Stage-one encoder (default the no-weights ``classical`` one) and optional local weights.
    scales_um
        Fields of view in micrometres.
    heads
        Head names; default ``hest-ridge, ridge, knn`` (``hest-ridge, ridge`` in quick mode). ``lgbm``
        and ``attention`` work too but take minutes more on a CPU.
    genes, split
        Target gene rule and split (``auto`` = leave-one-patient-out when there are patients).
    um_per_px
        Override the samples' micrometres per pixel (user data lacking it).
    device, num_workers
        Passed to :func:`stfeat.extraction.extract`.
    seed
        Seed of the synthetic dataset and of the heads.
    quick
        Reduced settings (smaller dataset, two heads); default from ``$STFEAT_DEMO_QUICK``.
    predict
        Also predict one held-in sample with the refit model (``demo_prediction_{sample}.h5ad``) when
        :mod:`stfeat.prediction` is available.
    on_step
        Called with a one-line message before each step (the CLI prints them).
    """
    from stfeat.extraction import extract_caches
    from stfeat.fitting import fit_report
    from stfeat.datasets import SYNTHETIC_BANNER, make_synthetic_dataset

    say = on_step or (lambda msg: log.info("%s", msg))
    quick = quick_mode() if quick is None else bool(quick)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    heads = list(heads) if heads else (["hest-ridge", "ridge"] if quick else list(DEFAULT_HEADS))
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    if data is None:
        settings = synthetic_settings(quick)
        n_sec = settings["sections_per_patient"]
        say(f"[1/4] synthetic dataset ({settings['n_patients']} patients x {n_sec} section{'s' * (n_sec > 1)}) "
            f"-> {out / 'data'}")
        ds = make_synthetic_dataset(out / "data", seed=seed, **settings)
        data_path, synthetic = ds.root, True
        log.warning("%s", SYNTHETIC_BANNER)
    else:
        data_path, synthetic = Path(data).resolve(), False
        say(f"[1/4] your data: {data_path}")
    seconds["data"] = time.perf_counter() - t0

    cache_dir = out / "cache"
    say(f"[2/4] extract: encoder {encoder}, fields of view {', '.join(f'{s:g}' for s in scales_um)} um "
        f"-> {cache_dir}")
    t0 = time.perf_counter()
    files = extract_caches(data_path, encoder=encoder, weights=weights, scales_um=list(scales_um), cache_dir=cache_dir,
                    num_workers=num_workers, device=device, um_per_px=um_per_px)
    seconds["extract"] = time.perf_counter() - t0

    fit_dir = out / "fit"
    say(f"[3/4] fit: heads {', '.join(heads)}; genes {genes}; split {split} (patient-grouped) -> {fit_dir}")
    t0 = time.perf_counter()
    res = fit_report(data_path, encoder=encoder, cache_dir=cache_dir, head=heads, genes=genes, split=split,
              out_dir=fit_dir, seed=seed)
    seconds["fit"] = time.perf_counter() - t0

    result = DemoResult(out_dir=out, data=data_path, synthetic=synthetic, cache_dir=cache_dir, fit_dir=fit_dir,
                        encoder=encoder, scales_um=[float(s) for s in scales_um], heads=heads,
                        cache_files=[Path(p) for p in files], comparison=res.comparison, metrics=res.metrics,
                        seconds=seconds, notes=list(res.notes))
    if predict:
        result.prediction = _predict_one(result, res, say)
    _write_summary(result)
    return result


def _predict_one(result: DemoResult, res: Any, say: Callable[[str], None]) -> Path | None:
    """Predict the first sample with the best head by cross-validation (its refit model, with an intercept)."""
    from stfeat.io import resolve_samples
    from stfeat.prediction import predict

    model_dirs = getattr(res, "model_dirs", {}) or {}
    if not model_dirs:
        return None
    best = res.metrics.get("best_model") or next(iter(model_dirs))
    model_dir = model_dirs[best]
    ref = resolve_samples(result.data)[0]
    dest = result.out_dir / f"demo_prediction_{ref.sample_id}.h5ad"  # fit/ is replaced whole by a refit
    say(f"[4/4] predict: {ref.sample_id} with the refit {best} model (best by cross-validation) -> {dest}")
    t0 = time.perf_counter()
    predict(model_dir, ref, out=dest, cache_dir=result.cache_dir)
    result.seconds["predict"] = time.perf_counter() - t0
    return dest


def _write_summary(result: DemoResult) -> Path:
    doc = {
        "synthetic": result.synthetic,
        "data": str(result.data),
        "encoder": result.encoder,
        "scales_um": result.scales_um,
        "heads": result.heads,
        "cache_dir": str(result.cache_dir),
        "fit_dir": str(result.fit_dir),
        "prediction": None if result.prediction is None else str(result.prediction),
        "mean_pearson_r": result.headline(),
        "split": result.metrics.get("split"),
        "genes": result.metrics.get("genes"),
        "seconds": {k: round(v, 2) for k, v in result.seconds.items()},
        "notes": result.notes,
    }
    from stfeat._safe_write import write_text

    # a fresh temporary file of ours, renamed into place (a planted link is replaced, never written through)
    write_text(result.summary_path, json.dumps(doc, indent=1, default=str))
    return result.summary_path


def next_steps(result: DemoResult) -> list[str]:
    """Commands to run next, on real data."""
    return [
        "stfeat encoders                                  # the encoder registry (licenses, gated access)",
        "stfeat extract PATH --encoder uni --cache-dir cache   # PATH: Space Ranger outs/, HEST-1k root, "
        "legacy ST folder or manifest.csv",
        "stfeat fit PATH --encoder uni --cache-dir cache --head ridge,hest-ridge --out-dir runs/uni   # ridge on "
        "per-slide standardised features: best across patients (docs/results.md)",
        "stfeat compare PATH --encoder uni --cache-dir cache --variant plain,slide-std,d8 --head ridge,lgbm   "
        "# feature variants x heads, patient held out",
        "stfeat run configs/hest_benchmark.yaml           # the HEST-Benchmark protocol from one config",
        f"stfeat demo --data PATH --out {result.out_dir.name}_mine   # this demo on your own data",
    ]


__all__ = ["DemoResult", "DEFAULT_HEADS", "DEFAULT_SCALES_UM", "QUICK_ENV", "next_steps", "quick_mode", "run_demo",
           "synthetic_settings"]
