"""Feature variant x head across patients: the table that chooses stfeat's defaults (:func:`compare`).

A *feature variant* is what the head sees: the extraction views (stain normalisation, test-time
augmentation, background fill: :mod:`stfeat.views`, one cache folder each) and the stage-two per-slide
standardisation (:class:`stfeat.features.FeatureSet`). Variants are written as ``+``-joined words:

=================  =====================================================================
``plain``          the encoder on the crops as they are
``macenko``        Macenko stain normalisation before the encoder (``reinhard`` likewise)
``d8``             test-time augmentation: mean over the 8 flips / 90-degree rotations
``bgfill``         black or white background filled with the padding white
``slide-std``      stage two: each sample's features centred and scaled with its own statistics
=================  =====================================================================

e.g. ``"macenko+d8"`` or ``"bgfill+slide-std"``. For every variant and head the table gives the mean
Pearson r (over genes, on all spots of the held-out side) of

- every leave-one-patient-out fold, as ``train C -> test A`` (the numbers of record: a patient the model
  never saw), and their mean;
- leave-one-section-out within each patient that has several sections (``within C (loso)``): within one
  patient, NOT a measure of generalisation to new patients, shown because it is what papers report;

with the extraction time of the variant (from the cache files: ``extract_seconds``) and the fit time of
each head (all folds). Genes are chosen on each fold's training samples (``genes``), the target
transform is ``transform``; both are recorded with the table.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stfeat.errors import InputError

log = logging.getLogger(__name__)

PLAIN = "plain"
STANDARDIZE_WORDS = ("slide-std",)


@dataclass(frozen=True)
class Variant:
    """One feature variant: its name as given, the cache encoder name, extraction options, standardisation."""

    name: str
    cache_encoder: str
    extract_options: dict = field(default_factory=dict, hash=False, compare=False)
    standardize: str = "none"


def parse_variant(encoder: str, text: str) -> Variant:
    """``parse_variant("densenet121", "macenko+d8+slide-std")`` -> the cache encoder
    ``densenet121+macenko+d8`` (see :mod:`stfeat.views`), its extraction options and ``standardize="slide"``."""
    words = [w.strip().lower() for w in str(text).split("+") if w.strip()]
    if not words:
        raise InputError(None, f"empty feature variant {text!r}.", "give e.g. plain, macenko, d8, slide-std.")
    std = "slide" if any(w in STANDARDIZE_WORDS for w in words) else "none"
    views = [w for w in words if w not in STANDARDIZE_WORDS and w != PLAIN]
    if PLAIN in words and len(words) > 1 and views:
        raise InputError(None, f"feature variant {text!r} says plain and {'+'.join(views)}.",
                         "drop 'plain' when other views are named.")
    from stfeat.views import ViewSpec

    base, spec = ViewSpec.from_variant("+".join(["~base", *views]))
    if base != "~base":
        bad = base.split("+")[1:]
        raise InputError(None, f"feature variant {text!r}: unknown or repeated word(s) {bad}.",
                         "use plain, macenko, reinhard, d8, hed<sigma> (e.g. hed0.05), bgfill and slide-std.")
    opts = {"stain_norm": spec.stain_norm, "tta": spec.tta, "tta_hed_jitter": spec.tta_hed_jitter,
            "background": spec.background}
    return Variant(name="+".join(words), cache_encoder=f"{encoder}{spec.suffix}",
                   extract_options={k: v for k, v in opts.items() if not spec.plain}, standardize=std)


@dataclass
class CompareResult:
    """What :func:`compare` returns: the table, every CVResult behind it, and how it was made."""

    table: Any  # pandas DataFrame: one row per variant x head
    cvs: dict = field(default_factory=dict)  # (variant, head, column) -> CVResult
    provenance: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_markdown(self, digits: int = 3) -> str:
        df = self.table
        cols = list(df.columns)

        def fmt(v: Any, col: str) -> str:
            if isinstance(v, (float, np.floating)):
                return "" if not np.isfinite(v) else f"{v:.1f}" if col.endswith("_s") else f"{v:.{digits}f}"
            return str(v)

        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(fmt(v, c) for v, c in zip(row, cols)) + " |" for row in df.itertuples(index=False)]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()

    def best(self, column: str = "mean across patients") -> dict:
        """The row with the highest value in ``column`` (default the cross-patient mean)."""
        df = self.table
        if column not in df.columns or not np.isfinite(df[column].to_numpy(float)).any():
            raise InputError(None, f"no numbers in column {column!r}.", f"use one of {list(df.columns)}.")
        return df.loc[df[column].astype(float).idxmax()].to_dict()

    def save(self, out_dir: str | Path) -> Path:
        """``compare.csv``, ``compare.md`` and ``compare.json`` (table + provenance + notes), written atomically."""
        from stfeat._safe_write import write_text as write_text_atomic

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "compare.csv", self.table.to_csv(index=False))
        write_text_atomic(out / "compare.md", self.to_markdown() + "\n\n" + "\n".join(f"- {n}" for n in self.notes)
                          + "\n")
        doc = {"table": self.table.to_dict("records"), "provenance": self.provenance, "notes": self.notes}
        write_text_atomic(out / "compare.json", json.dumps(doc, indent=2, default=str))
        return out


def _extract_seconds(fs: Any) -> float:
    tot = 0.0
    for sf in fs.samples.values():
        v = (getattr(sf, "attrs", None) or {}).get("extract_seconds")
        if v is None:
            return float("nan")
        tot += float(v)
    return tot


def _patients(fs: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for sid in fs.sample_ids:
        out.setdefault(str(fs.group_of(sid)), []).append(sid)
    return out


def compare(samples: Any, *, encoder: str, cache_dir: str | Path, variant: Sequence[str] = (PLAIN,),
            head: Sequence[Any] = ("ridge",), head_params: dict | None = None, weights: str | Path | None = None,
            scales_um: Sequence[float] | None = None, genes: str = "hvg:50", transform: str = "log1p_cp10k",
            within: bool = True, extract: bool = True, device: str | None = None, num_workers: int | None = None,
            batch_size: int | None = None, seed: int = 0, out_dir: str | Path | None = None) -> CompareResult:
    """Cross-validate every feature variant x head across patients and within patients (see the module doc).

    Parameters
    ----------
    samples
        Anything :func:`stfeat.io.as_samples` takes, with patient ids (two patients at least for the
        cross-patient columns).
    encoder, weights, scales_um, device, num_workers, batch_size
        The base encoder (a registry name or weights file) and extraction settings; each variant's caches
        are extracted into ``cache_dir`` when missing (``extract=False``: they must exist).
    variant
        Feature variants (module doc), e.g. ``("plain", "macenko", "d8", "slide-std")``.
    head, head_params
        Heads (names or estimators) and per-head parameters, as in :func:`stfeat.fitting.fit_report`.
    within
        Also leave one section out within each patient that has several sections.
    out_dir
        When given, the table is saved there (:meth:`CompareResult.save`).
    """
    import pandas as pd

    from stfeat.crossval import cross_validate
    from stfeat.estimators import head_name
    from stfeat.evaluate import make_splits
    from stfeat.extraction import extract_caches
    from stfeat.features import FeatureSet
    from stfeat.io import as_samples

    loaded = as_samples(samples)
    variants = [parse_variant(str(encoder), v) for v in (variant if not isinstance(variant, str)
                                                          else variant.split(","))]
    if len({v.name for v in variants}) != len(variants):
        raise InputError(None, f"feature variants repeat: {[v.name for v in variants]}.", "name each variant once.")
    heads = [head] if isinstance(head, str) else list(head)
    head_params = dict(head_params or {})
    patients = sorted({str(s.patient) for s in loaded if s.patient not in (None, "")})
    if len(patients) < 2:
        raise InputError(None, f"compare needs samples of at least two patients, got {patients or 'none'}.",
                         "add a patient column to the manifest and samples of another patient.")
    rows, cvs, notes = [], {}, []
    extracted: dict[str, float] = {}
    opts = dict(genes=genes, transform=transform, seed=seed, conformal=None)  # intervals: `stfeat fit`
    for v in variants:
        if extract and v.cache_encoder not in extracted:
            t0 = time.perf_counter()
            extract_caches(loaded, encoder=encoder, weights=weights, cache_dir=cache_dir,
                           **({"scales_um": list(scales_um)} if scales_um else {}), device=device,
                           num_workers=num_workers, batch_size=batch_size, **v.extract_options)
            extracted[v.cache_encoder] = time.perf_counter() - t0
        fs = FeatureSet.load(loaded, encoder=v.cache_encoder, cache_dir=cache_dir, scales_um=scales_um,
                             standardize=v.standardize)
        ext_s = _extract_seconds(fs)
        groups = _patients(fs)
        for h in heads:
            hn = head_name(h)
            params = head_params.get(hn)
            row: dict[str, Any] = {"variant": v.name, "head": hn}
            t0 = time.perf_counter()
            cv = cross_validate(fs, head=h, head_params=params, split="lopo", **opts)
            lopo_cols = []
            for r in cv.rows:
                test = r["test_samples"].split(";")
                train = r["train_samples"].split(";")
                tp = "+".join(sorted({str(fs.group_of(s)) for s in test}))
                trp = "+".join(sorted({str(fs.group_of(s)) for s in train}))
                col = f"train {trp} -> test {tp}"
                row[col] = float(r["mean_r"])
                lopo_cols.append(col)
                cvs[(v.name, hn, col)] = cv
            row["mean across patients"] = float(np.nanmean([row[c] for c in lopo_cols]))
            if within:
                for p, ids in groups.items():
                    if len(ids) < 2:
                        continue
                    cw = cross_validate(fs.subset(ids), head=h, head_params=params, split="loso", **opts)
                    col = f"within {p} (loso)"
                    row[col] = cw.mean_r
                    cvs[(v.name, hn, col)] = cw
            row["fit_s"] = time.perf_counter() - t0
            row["extract_s"] = ext_s
            rows.append(row)
            log.info("%s x %s: %s", v.name, hn, {k: (round(x, 3) if isinstance(x, float) else x)
                                               for k, x in row.items()})
    table = pd.DataFrame(rows)
    lead = ["variant", "head"]
    cross = [c for c in table.columns if c.startswith("train ")] + ["mean across patients"]
    inner = [c for c in table.columns if c.startswith("within ")]
    table = table[lead + cross + inner + ["extract_s", "fit_s"]]
    plan = make_splits([s.sample_id for s in loaded], [s.patient for s in loaded], "lopo")
    notes.append("train X -> test Y: leave one patient out, the held-out patient's number is the one of record; "
                 "within P (loso): leave one section out inside patient P, which does NOT measure "
                 "generalisation to new patients")
    notes.append(f"genes {genes} chosen on each fold's training samples; target transform {transform}; metric: "
                 "Pearson r per gene over the fold's test spots, mean over genes")
    notes.append("extract_s: the variant's extraction wall time summed over samples (cache attrs extract_seconds; "
                 "empty when a cache predates that record); fit_s: all folds of the head, this machine")
    prov = {"encoder": str(encoder), "weights": None if weights is None else str(weights),
            "variants": {v.name: {"cache_encoder": v.cache_encoder, "extract_options": v.extract_options,
                                  "standardize": v.standardize} for v in variants},
            "heads": [head_name(h) for h in heads], "head_params": head_params, "genes": genes,
            "transform": transform, "scales_um": None if scales_um is None else [float(s) for s in scales_um],
            "lopo_folds": plan.to_dict()["folds"], "seed": seed,
            "extract_wall_s_this_call": extracted}
    res = CompareResult(table=table, cvs=cvs, provenance=prov, notes=notes)
    if out_dir is not None:
        res.save(out_dir)
    return res


__all__ = ["CompareResult", "Variant", "compare", "parse_variant"]
