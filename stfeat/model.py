"""The saved model: a fitted head + its gene list, target transform, encoder identity and input layout.

:class:`Model` is the one place the model format is written (:meth:`Model.save`) and read
(:meth:`Model.load`). A model folder holds::

    model.json     format, genes, gene rule, transform, encoder identity, layout (scales, neighbours), provenance
    head/          an stfeat head, saved without pickle (JSON + safetensors + text; stfeat.heads.save_head)
    head.skops     or: a foreign scikit-learn estimator, through skops (only trusted types load)

Model folders are what labs share, so loading never unpickles: a legacy ``head.joblib`` is refused unless
the caller passes ``allow_pickle=True`` (CLI ``stfeat predict --allow-pickle``), and skops files load only when every
type in them is one skops trusts (scikit-learn, numpy, scipy).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stfeat.errors import InputError

log = logging.getLogger(__name__)

MODEL_FORMAT = "stfeat-model"
MODEL_FORMAT_VERSION = 1
PICKLE_WARNING = ("unpickling runs arbitrary code from the file: a crafted head.joblib can execute commands as "
                  "you. Only load pickled models you made yourself")
SAVE_FIX = ("free disk space (or raise the file-size limit: `ulimit -f unlimited`) and save the model again (rerun "
            "`stfeat fit`); a model folder already there was left as it was (nothing half-written is kept).")


def _json_default(o: Any):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


@dataclass
class Model:
    """A fitted head ready to predict new slides (from :func:`stfeat.fitting.fit`, or :meth:`Model.load`).

    Attributes
    ----------
    estimator
        The fitted head (a scikit-learn regressor).
    genes, gene_rule, transform
        What it predicts: the gene list (chosen on its training samples), the rule that chose it, and the
        target transform its outputs are in (e.g. ``log1p_cp10k``).
    encoder, encoder_attrs
        The features it needs: encoder name and identity (weights id, config hash, dtype, patch px).
    layout
        How the head is fed (flat or tokens, scales in um, neighbours, per-slide ``standardize``); predict builds
        the same inputs (under ``standardize="slide"`` with the NEW sample's own feature statistics).
    """

    estimator: Any
    head: str
    genes: list[str]
    transform: str
    layout: dict
    encoder: str
    encoder_attrs: dict = field(default_factory=dict)
    gene_rule: str = ""
    gene_rule_description: str = ""
    cache_dir: str | None = None
    train_samples: list[str] = field(default_factory=list)
    split: str = ""
    seed: int = 0
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def scales_um(self) -> list[float]:
        return [float(s) for s in self.layout["scales"]]

    def __repr__(self) -> str:
        return (f"Model(head={self.head!r}, encoder={self.encoder!r}, {len(self.genes)} genes, transform="
                f"{self.transform!r}, scales_um={self.scales_um}, trained on {len(self.train_samples)} samples)")

    # ------------------------------------------------------------------ format
    def manifest(self) -> dict:
        from stfeat import __version__

        est = self.estimator
        return {
            "format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "stfeat_version": __version__,
            "encoder": self.encoder, "encoder_attrs": dict(self.encoder_attrs), "cache_dir": self.cache_dir,
            "layout": self.layout, "standardize": self.layout.get("standardize", "none"), "head": self.head, "head_class": f"{type(est).__module__}.{type(est).__name__}",
            "head_params": json.loads(json.dumps(est.get_params(), default=str)), "genes": list(self.genes),
            "gene_rule": self.gene_rule, "gene_rule_description": self.gene_rule_description,
            "transform": self.transform, "train_samples": list(self.train_samples), "split": self.split,
            "seed": self.seed, "notes": list(self.notes), **self.extra,
        }

    def save(self, path: str | Path, *, head: bool = True) -> Path:
        """Write the model folder atomically (a fresh temporary folder of ours, renamed into place).

        Raises :class:`UnsafeEstimatorError` for an estimator that cannot be saved without pickle (a custom
        class); ``head=False`` writes only ``model.json`` (genes, layout, provenance), marked unusable.
        A full disk or a file-size limit is a :class:`~stfeat.errors.ResourceError` naming the file; the
        temporary folder is removed and a model folder already at ``path`` is left as it was.
        """
        from stfeat._faults import named_write_errors
        from stfeat._safe_write import atomic_path
        from stfeat.heads import save_head
        from stfeat.heads._base import BaseHead

        path = Path(path)
        manifest = self.manifest()
        with named_write_errors(path, what="the model folder", fix=SAVE_FIX), atomic_path(path, folder=True) as tmp:
            if not head:
                manifest["head_format"] = "none"
            elif isinstance(self.estimator, BaseHead):
                save_head(self.estimator, tmp / "head")
                manifest["head_format"] = "stfeat-head"
            else:
                with named_write_errors(tmp / "head.skops", what="the model's head", fix=SAVE_FIX):
                    _save_skops(self.estimator, tmp / "head.skops")
                manifest["head_format"] = "skops"
            with named_write_errors(tmp / "model.json", what="the model manifest", fix=SAVE_FIX):
                (tmp / "model.json").write_text(json.dumps(manifest, indent=2, default=_json_default))
            folds = path / "folds"
            if not path.is_symlink() and folds.is_dir() and not folds.is_symlink():
                os.replace(folds, tmp / "folds")  # per-fold models saved earlier stay with the final model
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path, head: str | None = None, *, allow_pickle: bool = False) -> "Model":
        """Read a model folder (or pick ``head`` among the ``models/*`` of a ``stfeat fit`` output).

        ``allow_pickle=True`` (CLI ``stfeat predict --allow-pickle``) is needed for legacy ``head.joblib`` files;
        see :data:`PICKLE_WARNING`.
        """
        d = find_model_dir(path, head)
        mfile = d / "model.json"
        try:
            m = json.loads(mfile.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(mfile, f"cannot be read ({exc}).", "re-run `stfeat fit`.") from None
        if not isinstance(m, dict) or m.get("format") != MODEL_FORMAT:
            raise InputError(mfile, "is not an stfeat model manifest.", "give a folder written by `stfeat fit`.")
        if int(m.get("format_version", 0)) > MODEL_FORMAT_VERSION:
            raise InputError(d, f"model format {m['format_version']} is newer than this stfeat understands.",
                             "upgrade stfeat.")
        missing = [k for k in ("genes", "transform", "layout", "encoder", "head") if k not in m]
        if missing:
            raise InputError(mfile, f"lacks {missing}.", "re-run `stfeat fit` to write a complete model.")
        fmt = m.get("head_format")
        if fmt == "stfeat-head":
            from stfeat.heads import load_head

            est = load_head(d / "head")
        elif fmt == "skops":
            est = _load_skops(d / "head.skops")
        elif fmt == "none":
            raise InputError(d, "holds no fitted head: its estimator could not be saved without pickle.",
                             "refit with an stfeat head or a plain scikit-learn estimator to get a usable model.")
        elif fmt == "joblib":
            f = d / "head.joblib"
            if not allow_pickle:
                raise InputError(f, "is a pickled estimator, and loading it would run any code it contains.",
                                 "load it only if you made it yourself: pass allow_pickle=True (CLI "
                                 "--allow-pickle), or refit the model with this stfeat (no pickle).")
            import joblib

            log.warning("%s: %s", f, PICKLE_WARNING)
            est = joblib.load(f)
        else:
            raise InputError(mfile, f"unknown head_format {fmt!r}.", "re-run `stfeat fit`.")
        known = {"format", "format_version", "stfeat_version", "encoder", "encoder_attrs", "cache_dir", "layout",
                 "standardize",
                 "head", "head_class", "head_params", "genes", "gene_rule", "gene_rule_description", "transform",
                 "train_samples", "split", "seed", "notes", "head_format"}
        return cls(estimator=est, head=str(m["head"]), genes=[str(g) for g in m["genes"]],
                   transform=str(m["transform"]), layout=dict(m["layout"]), encoder=str(m["encoder"]),
                   encoder_attrs=dict(m.get("encoder_attrs") or {}), gene_rule=str(m.get("gene_rule", "")),
                   gene_rule_description=str(m.get("gene_rule_description", "")), cache_dir=m.get("cache_dir"),
                   train_samples=list(m.get("train_samples", [])), split=str(m.get("split", "")),
                   seed=int(m.get("seed", 0)), notes=list(m.get("notes", [])),
                   extra={k: v for k, v in m.items() if k not in known}, path=d)

    # ------------------------------------------------------------------ predict
    def predict_features(self, sf: Any) -> np.ndarray:
        """Predictions (spots x genes, in the model's transform, >= 0) for one sample's features
        (a :class:`stfeat.features.SampleFeatures`), standardised per slide when the model was fitted so.
        Lazy features (a sample over the size threshold) are predicted in row chunks
        (:func:`stfeat.suffstats_cache.predict_sample`, float32 products: equal to the in-memory float64
        path to ~1e-6 relative)."""
        from stfeat.estimators import predict_estimator, sample_inputs

        lay = self.layout
        if getattr(sf, "is_lazy", False) and not lay.get("neighbor_mean") and not lay.get("patch_tokens"):
            # a large sample (features on disk): row chunks of its inputs, never the whole matrix or tokens
            from stfeat.suffstats_cache import predict_sample

            # float32 products (predictions are float32): ~3x faster than float64, equal to ~1e-6 relative
            P = predict_sample(self.estimator, sf, lay, precision="float32")
        else:
            P = predict_estimator(self.estimator, sample_inputs(sf, lay))
        # every transform stfeat offers is of non-negative counts: a negative prediction means "none"
        return np.maximum(P, 0.0, out=P)

    def predict(self, samples: Any, **kwargs: Any):
        """Predict the spots of a sample (or a dense grid over it, ``grid_um=``): an AnnData.

        ``samples`` is one sample (path, SampleRef or Sample); keyword arguments are those of
        :func:`stfeat.prediction.predict` (``cache_dir``, ``grid_um``, ``out``, ``weights``, ...).
        """
        from stfeat.prediction import predict

        return predict(self, samples, **kwargs)


def find_model_dir(model_dir: str | Path, head: str | None = None) -> Path:
    """The model folder: ``model_dir`` itself, or one of ``model_dir/models/*`` (a ``stfeat fit`` output).

    With several models and no ``head``, the best head by cross-validation (``best_model`` in the
    output's ``metrics.json``) is used.
    """
    d = Path(model_dir)
    if (d / "model.json").is_file() and head is None:
        return d
    sub = d / "models"
    cands = sorted(p for p in sub.iterdir() if (p / "model.json").is_file()) if sub.is_dir() else []
    if not cands:
        raise InputError(d, "holds no fitted model (no model.json here or under models/).",
                         "give the --out-dir folder of `stfeat fit` or one of its models/ENCODER__HEAD folders.")
    names = ", ".join(p.name for p in cands)
    if head is not None:
        cands = [p for p in cands if p.name == head or p.name.endswith(f"__{head}")]
    elif len(cands) > 1:
        best = _best_model(d)
        if best is not None and (sub / best / "model.json").is_file():
            log.info("%s holds several models; using %s, the best by cross-validation", d, best)
            return sub / best
    if len(cands) != 1:
        raise InputError(d, f"holds {'several models' if len(cands) > 1 else 'no model for head ' + repr(head)} "
                         f"({names}).", f"pick one: {sub / '<name>'} or --head NAME.")
    return cands[0]


def _best_model(d: Path) -> str | None:
    try:
        return json.loads((d / "metrics.json").read_text()).get("best_model")
    except (OSError, json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return None


class UnsafeEstimatorError(InputError):
    """An estimator holds types that skops does not trust (custom classes): it cannot be saved without pickle."""


def _save_skops(est: Any, path: Path) -> None:
    import skops.io as sio

    sio.dump(est, path)
    bad = sio.get_untrusted_types(file=path)
    if bad:
        path.unlink()
        raise UnsafeEstimatorError(None, f"the estimator {type(est).__name__} holds types that cannot be saved safely: {bad}.",
                         "use an stfeat head or a plain scikit-learn estimator (no custom classes or functions).")


def _load_skops(path: Path) -> Any:
    import skops.io as sio

    if not path.is_file():
        raise InputError(path, "is missing (incomplete model folder).", "re-run `stfeat fit`.")
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # noqa: BLE001 - any failure to parse the archive is a bad file
        raise InputError(path, f"is not a readable skops file ({type(exc).__name__}: {exc}).",
                         "re-run `stfeat fit`.") from None
    if untrusted:
        raise InputError(path, f"holds types that are not trusted: {untrusted}; loading could run their code.",
                         "refit the model with this stfeat, or inspect the file with skops and load it yourself.")
    return sio.load(path)
