"""Many samples: :class:`SampleRef`, manifests (CSV/YAML) and :func:`resolve_samples` for folders."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stfeat.errors import InputError
from stfeat.io import anndata_reader as A
from stfeat.io import legacy_st as L
from stfeat.io import spaceranger as S
from stfeat.io.detect import detect_format, read_sample
from stfeat.io.sample import Sample

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".csv", ".tsv", ".yaml", ".yml")
_OPTION_KEYS = ("image", "um_per_px", "fmt", "allow_normalized", "bin_size_um", "alignment")
_ALIASES = {"sample": "sample_id", "id": "sample_id", "patient_id": "patient", "format": "fmt", "mpp": "um_per_px"}


@dataclass
class SampleRef:
    """A sample to read later: its id, patient, path and the :func:`read_sample` keyword arguments."""

    sample_id: str
    patient: str | None
    path: Path
    options: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Sample:
        kw = dict(self.options)
        kw.setdefault("sample_id", self.sample_id)
        if self.patient is not None:
            kw.setdefault("patient", self.patient)
        return read_sample(self.path, **kw)


def is_manifest(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip() == ""


def read_manifest(path: str | Path) -> list[SampleRef]:
    """Read a manifest: one row per sample with ``sample_id``, ``patient``, ``path`` and optional overrides.

    Paths (``path``, ``image``) are resolved relative to the manifest's folder and must exist.
    """
    mpath = Path(path)
    if not mpath.is_file():
        raise InputError(mpath, "the manifest does not exist.", "check the path.")
    rows = _manifest_rows(mpath)
    if not rows:
        raise InputError(mpath, "the manifest lists no samples.", "add one row per sample: sample_id, patient, path.")
    refs: list[SampleRef] = []
    for i, raw in enumerate(rows, start=1):
        row = {_ALIASES.get(str(k).strip().lstrip("\ufeff").lower(), str(k).strip().lstrip("\ufeff").lower()): v
               for k, v in raw.items()}
        if _blank(row.get("path")):
            raise InputError(mpath, f"row {i} has no 'path'.", "give every sample a path (relative to the manifest).")
        p = (mpath.parent / str(row["path"]).strip()).expanduser()
        if not p.exists():
            raise InputError(mpath, f"row {i}: the sample path {p} does not exist.",
                             "fix the path (relative paths are read from the manifest's folder).")
        opts: dict[str, Any] = {}
        for k in _OPTION_KEYS:
            v = row.get(k)
            if _blank(v):
                continue
            if k == "image":
                v = (mpath.parent / str(v).strip()).expanduser()
                if not v.is_file():
                    raise InputError(mpath, f"row {i}: the image {v} does not exist.", "fix the image path.")
            elif k == "bin_size_um" and str(v).strip().lower() == "cells":
                v = "cells"  # Visium HD: the segmented cells (segmented_outputs/) instead of bins
            elif k in ("um_per_px", "bin_size_um"):
                try:
                    v = float(v)
                except (TypeError, ValueError):
                    raise InputError(mpath, f"row {i}: {k} {v!r} is not a number.",
                                     "give e.g. 0.5 (bin_size_um: 2, 8, 16 or cells).") from None
                if not (math.isfinite(v) and v > 0):
                    raise InputError(mpath, f"row {i}: {k} {v!r} is not a positive finite number.",
                                     "give micrometres per pixel, e.g. 0.5 (or leave it empty); bins: 2, 8 or 16.")
            elif k == "alignment":
                v = (mpath.parent / str(v).strip()).expanduser()
            elif k == "allow_normalized":
                v = str(v).strip().lower() in ("1", "true", "yes")
            opts[k] = v
        sid = None if _blank(row.get("sample_id")) else str(row["sample_id"]).strip()
        if sid is None:
            sid = _default_id(p)
        patient = None if _blank(row.get("patient")) else str(row["patient"]).strip()
        refs.append(SampleRef(sid, patient, p, opts))
    ids = [r.sample_id for r in refs]
    dup = sorted({s for s in ids if ids.count(s) > 1})
    if dup:
        raise InputError(mpath, f"duplicate sample ids {dup}.", "give each row a unique sample_id.")
    check_duplicates(refs, mpath)
    return refs


def _counts_file(r: SampleRef) -> Path | None:
    """The file holding a ref's counts (what makes two rows the same sample), or None when unknown."""
    p = r.path
    try:
        if p.is_file():
            return p
        fmt = r.options.get("fmt") or detect_format(p)
        if fmt == "legacy-st":
            return Path(L.locate(p, L.section_for(p, r.sample_id))["counts"])  # type: ignore[arg-type]
        if fmt == "spaceranger":
            outs = S.outs_dir(p)
            if outs is not None:
                for c in (outs / S._H5, outs / S._MTX / "matrix.mtx.gz", outs / S._MTX / "matrix.mtx"):
                    if c.is_file():
                        return c
        if fmt == "anndata":
            return A.single_h5ad(p)
    except InputError:
        return None  # the read itself names the problem
    return None


def _digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_duplicates(refs: list[SampleRef], mpath: Path) -> None:
    """Refuse a manifest listing one sample twice: the same counts file, or two files of identical content.

    Two rows of one sample under two patients would put its spots in both the training and the test
    fold of a patient split.
    """
    seen: dict[Path, SampleRef] = {}
    for r in refs:
        c = _counts_file(r)
        if c is None:
            continue
        key = c.resolve()
        if key in seen:
            o = seen[key]
            raise InputError(mpath, f"samples {o.sample_id!r} (patient {o.patient}) and {r.sample_id!r} (patient "
                             f"{r.patient}) are the same data ({c}): one sample listed twice would be tested on "
                             "its own training spots.", "list each sample once.")
        seen[key] = r
    by_size: dict[int, list[tuple[Path, SampleRef]]] = {}
    for c, r in seen.items():
        by_size.setdefault(c.stat().st_size, []).append((c, r))
    for group in by_size.values():
        if len(group) < 2:
            continue
        digests: dict[str, tuple[Path, SampleRef]] = {}
        for c, r in group:
            d = _digest(c)
            if d in digests:
                oc, o = digests[d]
                raise InputError(mpath, f"samples {o.sample_id!r} ({oc}) and {r.sample_id!r} ({c}) have identical "
                                 "counts files (same sha256): one sample listed twice would be tested on its "
                                 "own training spots.", "list each sample once (remove the copy).")
            digests[d] = (c, r)


def _manifest_rows(mpath: Path) -> list[dict[str, Any]]:
    if mpath.suffix.lower() in (".yaml", ".yml"):
        import yaml

        from stfeat._yaml import load_yaml

        data = load_yaml(mpath, what="manifest")
        if isinstance(data, dict):
            data = data.get("samples")
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise InputError(mpath, "the manifest must be a list of samples (or a 'samples:' list) of mappings.",
                             "write e.g. `samples: [{sample_id: A1, patient: A, path: data/A1}]`.")
        return data
    import pandas as pd

    import csv

    if mpath.stat().st_size == 0 or not mpath.read_bytes().strip():
        raise InputError(mpath, "the manifest is empty.", "write a CSV with a header row (sample_id,patient,path) "
                         "and one row per sample.")
    try:  # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name
        df = pd.read_csv(mpath, sep=None, engine="python", dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(mpath, f"the manifest cannot be parsed ({exc}).",
                         "write a UTF-8 CSV with a header row (sample_id,patient,path).") from None
    return df.to_dict("records")


def _default_id(p: Path) -> str:
    if p.is_dir() and p.name == "outs":
        return p.parent.name
    name = p.name
    for suf in (".h5ad", *L._COUNT_SUFFIXES):
        if name.endswith(suf):
            return name[: -len(suf)]
    return name


def _refs_in(p: Path, overrides: dict[str, Any]) -> list[SampleRef] | None:
    """Refs of a folder holding several samples, or None when ``p`` is one sample."""
    if L.is_her2st_root(p):
        refs = []
        for s in L.her2st_sections(p):
            loc = L.locate(p, s)
            refs.append(SampleRef(s, overrides.get("patient") or loc["patient"], p, {**overrides, "fmt": "legacy-st"}))  # type: ignore[arg-type]
        return refs
    if A.is_hest_root(p):
        refs = []
        for sid in A.hest_ids(p):
            meta, _ = A.hest_meta(p, sid)
            pat = overrides.get("patient") or A._str_or_none(meta.get("patient"))
            refs.append(SampleRef(sid, pat, p / "st" / f"{sid}.h5ad", {**overrides, "fmt": "hest"}))
        return refs
    secs = L.stutility_sections(p) if p.is_dir() else []
    if len(secs) > 1:
        return [SampleRef(s, overrides.get("patient"), p, {**overrides, "fmt": "legacy-st"}) for s in secs]
    return None


def resolve_samples(path_or_manifest: str | Path, **overrides: Any) -> list[SampleRef]:
    """SampleRefs for a manifest, a single sample, or a folder holding many samples.

    Parameters
    ----------
    path_or_manifest
        A manifest (.csv/.tsv/.yaml/.yml), one sample path, or a folder of samples (a HER2ST
        checkout gives one ref per section, a HEST-1k root one per ``st/*.h5ad``, any other folder
        one per sample sub-folder).
    **overrides
        :func:`read_sample` keyword arguments applied to every ref (e.g. ``um_per_px``).
    """
    p = Path(path_or_manifest).expanduser()
    if not p.exists():
        raise InputError(p, "the path does not exist.", "check the spelling, or that the data is mounted.")
    if is_manifest(p):
        refs = read_manifest(p)
        for r in refs:
            r.options.update({k: v for k, v in overrides.items() if k not in ("sample_id", "patient")})
            if overrides.get("patient"):
                r.patient = overrides["patient"]
        return refs
    if p.is_dir():
        refs = _refs_in(p, overrides)
        if refs is not None:
            return refs
        try:
            fmt = detect_format(p)
        except InputError:
            fmt = None
        if fmt is None:
            # a folder of sample folders
            refs = []
            for sub in sorted(q for q in p.iterdir() if q.is_dir() and not q.name.startswith(".")):
                inner = _refs_in(sub, overrides)
                if inner is not None:
                    refs.extend(inner)
                    continue
                try:
                    f = detect_format(sub)
                except InputError:
                    continue
                refs.append(_single(sub, f, overrides))
            if not refs:
                detect_format(p)  # raises the unknown-layout error naming the folder
            return refs
        return [_single(p, fmt, overrides)]
    return [_single(p, detect_format(p), overrides)]


def _single(p: Path, fmt: str, overrides: dict[str, Any]) -> SampleRef:
    sid = overrides.get("sample_id")
    patient = overrides.get("patient")
    if sid is None:
        if fmt == "spaceranger":
            outs = S.outs_dir(p if p.is_dir() else p.parent)
            sid = _default_id(outs) if outs is not None else _default_id(p)
        elif fmt in ("visium-hd", "xenium"):
            q = p.parent.parent.parent if p.parent.name == "binned_outputs" else (
                p.parent if p.name == "segmented_outputs" else p)
            sid = _default_id(q.parent if q.name == "outs" else q)
        elif fmt == "legacy-st":
            sid = str(L.locate(p, None)["section"])
        elif fmt == "anndata" and p.is_dir():
            h5 = A.single_h5ad(p)
            sid = h5.stem if h5 is not None else p.name
        else:
            sid = _default_id(p)
    if fmt == "legacy-st" and patient is None:
        patient = L.locate(p, L.section_for(p, sid))["patient"]  # type: ignore[assignment]
    if fmt == "hest" and patient is None and p.is_file():
        meta, _ = A.hest_meta(p.parent.parent, p.stem)
        patient = A._str_or_none(meta.get("patient"))
    opts = {k: v for k, v in overrides.items() if k not in ("sample_id", "patient")}
    opts.setdefault("fmt", fmt)
    return SampleRef(str(sid), patient, p, opts)
