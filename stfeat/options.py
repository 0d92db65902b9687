"""The options of ``stfeat extract``, ``fit`` and ``predict``: one schema for Python, the CLI and YAML.

Each command has a dataclass whose field names are THE option names: the keyword of the library
function (``extract_caches(..., scales_um=...)``), the YAML key (``scales_um:``) and, with dashes,
the CLI flag (``--scales-um``). The CLI is checked against these classes by a test and YAML configs
are validated against them by :mod:`stfeat.config`; nothing here imports click or the CLI.

Field metadata:

``help``        one line, shown by ``--help``
``positional``  a CLI argument rather than an option (``samples``, ``model_dir``, ``sample``)
``path``        ``True``: a path (made absolute against a config file's folder);
                ``"maybe"``: a name or a path (``encoder``: a registry name or a weights file)
``exists``      an input path that must exist
``choices``     the allowed values
``min``         the smallest allowed number (``positive``: strictly above 0)
``cli_only``    a CLI concern (``verbose``), not a library keyword
``shared``      ``False``: a config's shared top-level key does not set it (predict's ``encoder``
                overrides the model's, so the shared one, meant for extract and fit, stays out)
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from stfeat import _constants as K
from stfeat.errors import InputError

TRANSFORMS = ("log1p_cp10k", "cp10k", "log1p", "raw")
DTYPES = ("float16", "float32")


class OptionError(InputError):
    """A bad option value. ``name`` is the option; :mod:`stfeat.config` and the CLI add the file or flag."""

    def __init__(self, name: str, problem: str, fix: str) -> None:
        self.name = name
        super().__init__(None, problem, fix)


def _opt(default: Any = dataclasses.MISSING, help: str = "", **meta: Any) -> Any:  # noqa: A002 - "help" is the word
    meta["help"] = help
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(kw_only=True)
class ExtractOptions:
    """``stfeat extract`` / :func:`stfeat.extraction.extract_caches`."""

    samples: Path = _opt(help="A sample folder, a folder of samples, or a manifest (.csv/.yaml).",
                         positional=True, path=True, exists=True)
    encoder: str = _opt(help="Encoder name (see `stfeat encoders`), timm:NAME, hf-hub:ORG/NAME, or a weights file.",
                        path="maybe")
    weights: Optional[Path] = _opt(None, "Local weights file (safetensors or torch).", path=True, exists=True)
    scales_um: list[float] = _opt([112.0, 224.0, 448.0], "Fields of view in micrometres (a list, or "
                                  "comma-separated on the command line).", min="positive")
    cache_dir: Optional[Path] = _opt(None, f"Cache root; default ${K.ENV_CACHE_DIR} or ./stfeat_cache.", path=True)
    k_neighbors: int = _opt(8, "Spatial neighbours stored per spot (0: none).", min=0)
    batch_size: Optional[int] = _opt(None, "Spots per batch (x scales crops per forward); default 32 on CPU, "
                                     "probed on GPU.", min=1)
    num_workers: Optional[int] = _opt(None, "DataLoader decoding processes.", min=0)
    device: Optional[str] = _opt(None, "cpu, cuda or cuda:N; default CUDA when present.")
    overwrite: bool = _opt(False, "Recompute existing cache files.")
    shard: Optional[str] = _opt(None, "Process shard i of n (0-based, e.g. 0/4); default torchrun's "
                                "RANK/WORLD_SIZE.")
    dtype: str = _opt("float16", "Storage precision of the features.", choices=DTYPES)
    um_per_px: Optional[float] = _opt(None, "Micrometres per full-resolution pixel, overriding the samples' own.",
                                      min="positive")
    image: Optional[Path] = _opt(None, "H&E image of the one sample given (an .h5ad, Space Ranger outs/, ...), "
                                 "overriding the one found; several samples: a manifest's image column.",
                                 path=True, exists=True)
    pretrained: bool = _opt(True, "Pretrained weights; --no-pretrained gives random (seeded) ones, for "
                            "benchmarks only.")
    mode: str = _opt("auto", "crop: one forward per spot and field of view; dense: one per tissue tile, features "
                     "pooled from its token map; auto: dense for bins/cells (points < 50 um apart), crop for spots.",
                     choices=("auto", "crop", "dense"))
    stain_norm: str = _opt("none", "Stain normalisation of each crop before the encoder (torchstain): none, macenko "
                           "or reinhard; non-plain views go to the cache folder ENCODER+VIEWS (see stfeat.views).",
                           choices=("none", "macenko", "reinhard"))
    stain_reference: Optional[Path] = _opt(None, "RGB reference tile the stain normaliser is fitted to; default a "
                                           "fixed reference (torchstain's Macenko reference stains).", path=True,
                                           exists=True)
    tta: str = _opt("none", "Test-time augmentation: d8 embeds the 8 flips/rotations of each crop and stores their "
                    "mean (8x the encoder cost).", choices=("none", "d8"))
    tta_hed_jitter: float = _opt(0.0, "Sigma of a seeded HED stain jitter of each view (0: none).", min=0)
    background: str = _opt("keep", "fill: black and white background pixels become white (as the padding past the "
                           "image edge); keep: as scanned. The tissue fraction is stored either way.",
                           choices=("keep", "fill"))
    tokens: int = _opt(0, "Also store each crop's patch-token grid (ViT) or last feature map (CNN) pooled to G x G "
                       "(float16, /tokens/SCALE; crop mode; cache folder ENCODER+tokG) for AttentionHead("
                       "patch_tokens=True); 0: none.", min=0)
    verbose: bool = _opt(False, "Debug logging, and tracebacks of internal errors.", cli_only=True)


@dataclass(kw_only=True)
class FitOptions:
    """``stfeat fit`` / :func:`stfeat.fitting.fit_report`."""

    samples: Path = _opt(help="A sample folder, a folder of samples, or a manifest (.csv/.yaml).",
                         positional=True, path=True, exists=True)
    encoder: list[str] = _opt(help="Encoder name(s) of the caches (several give one comparison table).")
    cache_dir: Optional[Path] = _opt(None, f"Cache root of `stfeat extract`; default ${K.ENV_CACHE_DIR} or "
                                     "./stfeat_cache.", path=True)
    image: Optional[Path] = _opt(None, "H&E image of the one sample given, as given to `stfeat extract --image` "
                                 "(spots outside it are dropped); several samples: a manifest's image column.",
                                 path=True, exists=True)
    head: list[str] = _opt(["ridge"], "Head(s): ridge (default: best across patients, docs/results.md), hest-ridge, "
                           "lgbm, mlp, attention, ensemble, knn, ...")
    head_params: Optional[dict] = _opt(None, "Per head, its parameters: a mapping in YAML, JSON (or a JSON file) "
                                       "on the command line, e.g. '{\"lgbm\": {\"n_estimators\": 200}}'.")
    scales_um: Optional[list[float]] = _opt(None, "Fields of view (um) to use; default all cached.", min="positive")
    genes: str = _opt("hvg:50", "Target genes, chosen on each fold's training samples: hvg:K (top-K variance of "
                      "log1p cp10k), hex:K (top-K mean), file:PATH, common.")
    transform: str = _opt("log1p_cp10k", "Target transform; log1p_cp10k uses the library size over all genes.",
                          choices=TRANSFORMS)
    split: str = _opt("auto", "auto, lopo, group-kfold:K, loso (only without patient ids or with a single "
                      "patient) or block:K (spatial blocks within sections; auto with one sample).")
    k_neighbors: int = _opt(8, "Neighbour tokens per spot (attention) and for --neighbor-mean.", min=0)
    neighbor_mean: bool = _opt(False, "Append the neighbours' mean features to flat heads' input.")
    neighbor_scale: Optional[float] = _opt(None, "Field of view (um) of the neighbours' features; default the "
                                           "smallest.", min="positive")
    standardize: str = _opt("slide", "Per-slide feature standardisation: slide (default: best across patients, "
                            "docs/results.md) centres and scales each sample's features with its own statistics "
                            "(also at predict); none keeps them as cached.", choices=("none", "slide"))
    out_dir: Path = _opt(Path("stfeat_fit"), "Output directory.", path=True)
    seed: int = _opt(0, "random_state of the heads.")
    metric_top_k: int = _opt(10, "k of the extra top-k HVG / highly-expressed summaries.", min=1)
    save_fold_models: bool = _opt(False, "Also save each fold's model.")
    plots: bool = _opt(True, "Write PNG plots.")
    conformal: Optional[float] = _opt(0.9, "Nominal coverage of per-spot conformal intervals (refits each head on "
                                      "3 inner folds); 0 = off.", min=0)
    verbose: bool = _opt(False, "Debug logging, and tracebacks of internal errors.", cli_only=True)


@dataclass(kw_only=True)
class PredictOptions:
    """``stfeat predict`` / :func:`stfeat.prediction.predict`."""

    model_dir: Path = _opt(help="The --out-dir folder of `stfeat fit`, or one of its models/ENCODER__HEAD folders.",
                           positional=True, path=True)
    sample: Path = _opt(help="One sample (folder or file) to predict.", positional=True, path=True, exists=True)
    out: Optional[Path] = _opt(None, "Output .h5ad (a PNG map is written beside it); default "
                               "{sample}_predicted.h5ad.", path=True)
    grid_um: Optional[float] = _opt(None, "Predict on a grid with this step (um) over the tissue instead of at "
                                    "the measured spots.", min="positive")
    grid_max_points: Optional[int] = _opt(None, "Most grid points allowed; default 500000 for models of crop-mode "
                                          "features, 3000000 for dense-mode ones.", min=1)
    cache_dir: Optional[Path] = _opt(None, "Where the sample's cached features are; default the cache the model "
                                     "was fitted on.", path=True)
    head: Optional[str] = _opt(None, "Which head's model, when the fit output holds several.")
    encoder: Optional[str] = _opt(None, "Encoder to extract features with; default the model's.", path="maybe",
                                  shared=False)
    weights: Optional[Path] = _opt(None, "Encoder weights file, when features must be extracted.", path=True,
                                   exists=True)
    device: Optional[str] = _opt(None, "cpu, cuda or cuda:N for extraction.")
    batch_size: Optional[int] = _opt(None, "Points per extraction batch.", min=1)
    plot: bool = _opt(True, "Write a PNG map beside the .h5ad.")
    map_genes: Optional[list[str]] = _opt(None, "Genes mapped in the PNGs: a number K (the K of highest predicted "
                                          "variance; default 6), all, or gene names (comma-separated).")
    spatialdata: bool = _opt(False, 'Also write OUT.zarr, a SpatialData store (circles + table + H&E); needs pip '
                             'install "stfeat[spatialdata]".')
    allow_pickle: bool = _opt(False, "Load a head saved with pickle (a custom estimator): only for models you "
                              "trust.")
    image: Optional[Path] = _opt(None, "H&E image of the sample, overriding the one found (an .h5ad or Space "
                                 "Ranger outs/ without its full-resolution image).", path=True, exists=True,
                                 shared=False)
    verbose: bool = _opt(False, "Debug logging, and tracebacks of internal errors.", cli_only=True)


@dataclass(kw_only=True)
class CompareOptions:
    """``stfeat compare`` / :func:`stfeat.variants.compare`: feature variant x head, across and within patients."""

    samples: Path = _opt(help="A manifest (or folder) of samples of at least two patients.",
                         positional=True, path=True, exists=True)
    encoder: str = _opt(help="The base encoder (see `stfeat encoders`) or a weights file.", path="maybe")
    weights: Optional[Path] = _opt(None, "Local weights file (safetensors or torch).", path=True, exists=True)
    variant: list[str] = _opt(["plain"], "Feature variants: plain, macenko, reinhard, d8, bgfill, slide-std, or "
                              "+-joined ones (e.g. macenko+d8); see stfeat.variants.")
    head: list[str] = _opt(["ridge"], "Head(s): hest-ridge, ridge, lgbm, attention, ensemble, ...")
    head_params: Optional[dict] = _opt(None, "Per head, its parameters (as for fit).")
    cache_dir: Optional[Path] = _opt(None, f"Cache root; default ${K.ENV_CACHE_DIR} or ./stfeat_cache.", path=True)
    scales_um: Optional[list[float]] = _opt(None, "Fields of view (um); default 112, 224, 448 for extraction and "
                                            "all cached for the heads.", min="positive")
    genes: str = _opt("hvg:50", "Target genes, chosen on each fold's training samples (as for fit).")
    transform: str = _opt("log1p_cp10k", "Target transform.", choices=TRANSFORMS)
    within: bool = _opt(True, "Also leave one section out within each patient with several sections.")
    extract: bool = _opt(True, "Extract the variants' missing caches (--no-extract: they must exist).")
    device: Optional[str] = _opt(None, "cpu, cuda or cuda:N for extraction.")
    num_workers: Optional[int] = _opt(None, "DataLoader decoding processes.", min=0)
    batch_size: Optional[int] = _opt(None, "Spots per extraction batch.", min=1)
    seed: int = _opt(0, "random_state of the heads.")
    out_dir: Optional[Path] = _opt(None, "Write compare.csv/.md/.json here.", path=True)
    verbose: bool = _opt(False, "Debug logging, and tracebacks of internal errors.", cli_only=True)


@dataclass(kw_only=True)
class RunOptions:
    """``stfeat run`` / :func:`stfeat.config.run` (not a config section: it runs one)."""

    config_path: Path = _opt(help="YAML config with extract:, fit: and optionally predict: sections (see configs/).",
                             positional=True, path=True, exists=True)
    steps: Optional[list[str]] = _opt(None, "Steps to run (extract, fit, predict); default extract, fit "
                                      "(+ predict when configured).", choices=("extract", "fit", "predict"))
    dry_run: bool = _opt(False, "Validate the config and print the commands, run nothing.")
    verbose: bool = _opt(False, "Debug logging, and tracebacks of internal errors.", cli_only=True)


# The config sections: one per command that a config can set.
OPTIONS: dict[str, type] = {"extract": ExtractOptions, "fit": FitOptions, "predict": PredictOptions,
                            "compare": CompareOptions}

# Names used before issue 9, for the error message only (they are not accepted).
RENAMED = {
    "extract": {"scales": "scales_um", "workers": "num_workers", "random_weights": "pretrained",
                "data": "samples", "path": "samples", "manifest": "samples"},
    "fit": {"heads": "head", "scales": "scales_um", "out": "out_dir", "top_k": "metric_top_k",
            "data": "samples", "path": "samples", "manifest": "samples", "samples_or_manifest": "samples"},
    "predict": {"grid": "grid_um", "data": "sample"},
}


# --------------------------------------------------------------------------------------- schema


def fields_of(cls: type) -> dict[str, dataclasses.Field]:
    """``{name: Field}`` of an options class, in order."""
    return {f.name: f for f in dataclasses.fields(cls)}


def meta(cls: type, name: str, key: str, default: Any = None) -> Any:
    return fields_of(cls)[name].metadata.get(key, default)


def help_of(cls: type, name: str) -> str:
    """The one-line help of an option (the CLI uses it, so the text is written once)."""
    return str(meta(cls, name, "help", ""))


def flag(name: str) -> str:
    """The CLI flag of an option: ``scales_um`` -> ``--scales-um``."""
    return "--" + name.replace("_", "-")


def default_of(cls: type, name: str) -> Any:
    """The default value (``dataclasses.MISSING`` for a required option)."""
    f = fields_of(cls)[name]
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


def required(cls: type) -> list[str]:
    return [n for n in fields_of(cls) if default_of(cls, n) is dataclasses.MISSING]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """``Optional[X]`` -> ``(X, True)``."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def is_list(cls: type, name: str) -> bool:
    tp, _ = _unwrap(_hints(cls)[name])
    return typing.get_origin(tp) is list


def is_bool(cls: type, name: str) -> bool:
    return _unwrap(_hints(cls)[name])[0] is bool


# --------------------------------------------------------------------------------------- values


def _scalar(name: str, tp: Any, v: Any) -> Any:
    if tp is bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.strip().lower() in {"true", "false", "yes", "no", "1", "0"}:
            return v.strip().lower() in {"true", "yes", "1"}
        raise OptionError(name, f"{name} takes true or false, got {v!r}.", f"write {name}: true or {name}: false.")
    if tp is int:
        if isinstance(v, bool):
            raise OptionError(name, f"{name} takes a whole number, got {v!r}.", f"give e.g. {name}: 8.")
        try:
            f = float(v)
            if f != int(f):
                raise ValueError
            return int(f)
        except (TypeError, ValueError, OverflowError):
            raise OptionError(name, f"{name} takes a whole number, got {v!r}.", f"give e.g. {name}: 8.") from None
    if tp is float:
        if isinstance(v, bool):
            raise OptionError(name, f"{name} takes a number, got {v!r}.", f"give e.g. {name}: 112.")
        try:
            return float(v)
        except (TypeError, ValueError):
            raise OptionError(name, f"{name} takes a number, got {v!r}.", f"give e.g. {name}: 112.") from None
    if tp is Path:
        if not isinstance(v, (str, Path)) or not str(v):
            raise OptionError(name, f"{name} takes a path, got {v!r}.", "give the path as a string.")
        return Path(v)
    if tp is str:
        if isinstance(v, (str, int, float)) and not isinstance(v, bool):
            return str(v)
        raise OptionError(name, f"{name} takes one word, got {v!r}.", f"give a single value for {name}.")
    if tp is dict:
        return _mapping(name, v)
    raise TypeError(f"option {name}: unsupported type {tp!r}")  # a schema bug, not the user's


def _mapping(name: str, v: Any) -> dict:
    if isinstance(v, str):
        p = Path(v).expanduser()
        text = p.read_text() if len(v) < 4096 and not v.lstrip().startswith("{") and p.is_file() else v
        try:
            v = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OptionError(name, f"{name} is not valid JSON ({exc}).",
                              'write e.g. \'{"lgbm": {"n_estimators": 200}}\' (or a mapping in YAML).') from None
    if not isinstance(v, dict) or not all(isinstance(x, dict) for x in v.values()):
        raise OptionError(name, f"{name} must map head names to {{parameter: value}}, got {v!r}.",
                          'write e.g. {"lgbm": {"n_estimators": 200}}.')
    return {str(k): dict(x) for k, x in v.items()}


def _split_words(v: Any) -> list:
    items = v if isinstance(v, (list, tuple)) else [v]
    out: list = []
    for x in items:
        if isinstance(x, str):
            out += [w.strip() for w in x.split(",") if w.strip()]
        else:
            out.append(x)
    return out


def coerce(cls: type, name: str, value: Any) -> Any:
    """Convert one option value (from YAML or the command line) to its type and check it.

    Lists may be given as lists or comma-separated strings (``"112,224"``); ``None`` keeps an
    optional option unset. Raises :class:`OptionError` (an :class:`InputError`) naming the option.
    """
    tp, optional = _unwrap(_hints(cls)[name])
    if value is None:
        if optional:
            return None
        raise OptionError(name, f"{name} must be given.", f"set {name}.")
    if typing.get_origin(tp) is list:
        (inner,) = typing.get_args(tp)
        items = _split_words(value)
        if not items:
            raise OptionError(name, f"{name} is empty.", f"give at least one value for {name}.")
        out = [_scalar(name, inner, x) for x in items]
    else:
        if isinstance(value, (list, tuple)):
            raise OptionError(name, f"{name} takes one value, got a list {list(value)!r}.", "give a single value.")
        out = _scalar(name, tp, value)
    _check(cls, name, out)
    return out


def _check(cls: type, name: str, value: Any) -> None:
    vals = value if isinstance(value, list) else [value]
    choices = meta(cls, name, "choices")
    if choices is not None:
        for v in vals:
            if v not in choices:
                raise OptionError(name, f"{name} has value {v!r}, which is not allowed.",
                                  f"use one of: {', '.join(choices)}.")
    lo = meta(cls, name, "min")
    if lo == "positive":
        for v in vals:
            if not v > 0:
                raise OptionError(name, f"{name} must be positive, got {v!r}.", "give numbers above 0.")
    elif lo is not None:
        for v in vals:
            if v < lo:
                raise OptionError(name, f"{name} must be at least {lo}, got {v!r}.", f"give {name} >= {lo}.")
    check = _CHECKS.get((cls.__name__, name)) or _CHECKS.get(("*", name))
    if check is not None:
        check(name, value)


def _parsed_by(module: str, attr: str):
    """A check that runs the library's own parser of an option (one parser per option) and names the option."""
    def check(name: str, text: Any) -> None:
        import importlib

        fn: Any = importlib.import_module(module)
        for part in attr.split("."):
            fn = getattr(fn, part)
        try:
            fn(text)
        except InputError as exc:
            raise OptionError(name, exc.problem, exc.fix) from None
    return check


_check_shard = _parsed_by("stfeat._plan", "parse_shard")  # "i/n"
_check_split = _parsed_by("stfeat.evaluate", "parse_split")
_check_genes = _parsed_by("stfeat.targets", "GeneRule.parse")


def _check_heads(name: str, heads: list[str]) -> None:
    from stfeat.heads import HEADS

    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        raise OptionError(name, f"unknown head(s) {unknown}.", f"choose from {', '.join(sorted(HEADS))}.")


def _check_one_encoder(name: str, text: str) -> None:
    if "," in text:
        raise OptionError(name, f"extract takes one encoder, got {text!r}.",
                          "give one (`stfeat run` extracts once per encoder of a config's list).")


def _check_conformal(name: str, value: float | None) -> None:
    if value is not None and not 0 <= value < 1:
        raise OptionError(name, f"{name} {value!r} is not a coverage below 1.", "give e.g. 0.9, or 0 to turn it off.")


_CHECKS = {("*", "conformal"): _check_conformal, ("*", "shard"): _check_shard, ("*", "split"): _check_split, ("*", "genes"): _check_genes,
           ("FitOptions", "head"): _check_heads, ("CompareOptions", "head"): _check_heads, ("ExtractOptions", "encoder"): _check_one_encoder}


def check_head_params(params: dict | None, heads: list[str]) -> None:
    """Parameters for a head that is not fitted are a mistake (a typo in a head's name)."""
    unknown = sorted(set(params or {}) - set(heads))
    if unknown:
        raise OptionError("head_params", f"head_params for heads {unknown} that are not in head {heads}.",
                          "name heads that are fitted, or add them to head.")


def default_cache_dir() -> Path:
    """``$STFEAT_CACHE_DIR`` or ``./stfeat_cache``."""
    return Path(os.environ.get(K.ENV_CACHE_DIR, "stfeat_cache"))


# --------------------------------------------------------------------------------------- objects


def build(cls: type, values: dict[str, Any]) -> Any:
    """An options object from ``values`` (coerced and checked; unknown keys and missing required
    ones raise :class:`OptionError`)."""
    names = fields_of(cls)
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise OptionError(unknown[0], f"unknown option(s) {unknown}.", f"use some of: {', '.join(names)}.")
    # The CLI gives an unset list option as an empty tuple: that is "not given".
    values = {k: None if isinstance(v, (list, tuple)) and not v and is_list(cls, k) else v for k, v in values.items()}
    values = {k: v for k, v in values.items() if v is not None or _unwrap(_hints(cls)[k])[1]}
    missing = [n for n in required(cls) if values.get(n) is None]
    if missing:
        raise OptionError(missing[0], f"{', '.join(missing)} must be given.", f"set {missing[0]}.")
    obj = cls(**{k: coerce(cls, k, v) for k, v in values.items()})
    if cls in (FitOptions, CompareOptions):
        check_head_params(obj.head_params, obj.head)
    return obj


def positional_args(opts: Any) -> list[Any]:
    """The values of the positional options, in order (``extract_caches(samples, ...)``)."""
    return [getattr(opts, n) for n, f in fields_of(type(opts)).items() if f.metadata.get("positional")]


def library_kwargs(opts: Any) -> dict[str, Any]:
    """Keyword arguments of the library function: every field but the positional and CLI-only ones."""
    out = {n: getattr(opts, n) for n, f in fields_of(type(opts)).items()
           if not f.metadata.get("positional") and not f.metadata.get("cli_only")}
    if isinstance(opts, (FitOptions, CompareOptions)) and out["cache_dir"] is None:
        out["cache_dir"] = default_cache_dir()  # fit has no default of its own
    return out


def as_plain(value: Any) -> Any:
    """YAML-friendly form of an option value (paths as strings, lists as lists)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [as_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): as_plain(v) for k, v in value.items()}
    return value


def as_dict(opts: Any) -> dict[str, Any]:
    """``{field: plain value}`` of an options object (what ``resolved_config.yaml`` records)."""
    return {n: as_plain(getattr(opts, n)) for n in fields_of(type(opts))}


__all__ = ["CompareOptions", "DTYPES", "ExtractOptions", "FitOptions", "OPTIONS", "OptionError", "PredictOptions", "RENAMED", "RunOptions",
           "TRANSFORMS", "as_dict", "build", "coerce", "default_cache_dir", "default_of", "fields_of", "flag",
           "help_of", "library_kwargs", "positional_args", "required"]
