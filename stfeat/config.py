"""YAML configs: validated against :mod:`stfeat.options`, run by :func:`run` or used as CLI defaults.

A config is a YAML mapping with one section per command and optional shared top-level keys::

    encoder: classical                 # shared: applies to every command that has an `encoder` option
    cache_dir: cache                   # paths are relative to this file
    extract:
      samples: ../../shared/data/her2st
      scales_um: [112, 224, 448]
    fit:
      head: [hest-ridge, lgbm]
      out_dir: runs/her2st

Keys are the option names of :class:`~stfeat.options.ExtractOptions`, :class:`~stfeat.options.FitOptions`
and :class:`~stfeat.options.PredictOptions` (the library's keyword names; ``--scales-um`` on the command
line). An unknown key, a name used before issue 9 (``scales:``, ``heads:``, ``out:`` in ``fit``), a bad
value or an input path that does not exist is an :class:`~stfeat.errors.InputError` naming the key,
the file and what is allowed. Relative paths are relative to the config file.

:func:`run` runs extract -> fit -> predict from one config in Python (``stfeat run CONFIG`` is a thin
call of it). ``stfeat --config FILE COMMAND`` uses :func:`apply_config`, which turns the validated
values into click's ``default_map``: an option given on the command line wins over the config, which
wins over the option's default. Every step writes ``resolved_config.yaml``
(:func:`stfeat.resolved_config.save_resolved_config`) next to its outputs; that file is itself a valid config.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from stfeat import options as O
from stfeat.errors import InputError
from stfeat.resolved_config import save_resolved_config

log = logging.getLogger(__name__)

# Top-level keys that carry documentation or provenance, never options.
META_KEYS = frozenset({"name", "description", "notes", "sources", "stfeat_version", "command", "config_file"})
STEPS = ("extract", "fit", "predict")


@dataclass
class Config:
    """A parsed config file.

    Attributes
    ----------
    path
        The file it came from (``None`` for configs built in code).
    shared
        Top-level option keys that apply to every command having that option.
    sections
        ``{command_name: {key: value}}`` as written (keys normalised to underscores).
    meta
        Documentation / provenance keys (``name``, ``description``, ...), not options.
    """

    path: Path | None
    shared: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        """Relative paths in the config are relative to this folder."""
        return self.path.parent if self.path is not None else Path.cwd()


def _norm_key(key: Any) -> str:
    return str(key).strip().replace("-", "_")


def load_config(path: str | Path) -> Config:
    """Read a YAML config with ``yaml.safe_load`` and split it into shared keys and command sections.

    A top-level key named after a command (``extract``, ``fit``, ``predict``) is that command's
    section; any other top-level key is a shared option (checked by :func:`validate`).

    Raises
    ------
    InputError
        Missing file, YAML syntax error, or a structure that is not a mapping of mappings.
    """
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(path, "config file not found.", "check the path (configs/ holds examples).")
    from stfeat._yaml import read_yaml_text

    text = read_yaml_text(path, what="config")  # UTF-8, and refused past a sane nesting depth
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InputError(path, f"is not valid YAML{where}: {getattr(exc, 'problem', exc)}.",
                         "fix the syntax (indent with spaces; quote values containing ':').") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(path, f"must be a YAML mapping of keys to values, got a {type(raw).__name__}.",
                         "write `key: value` lines, with one section per command (extract:, fit:, ...).")
    cfg = Config(path=path.resolve())
    for key, value in raw.items():
        k = _norm_key(key)
        if k in META_KEYS:
            cfg.meta[k] = value
        elif k in O.OPTIONS:
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise InputError(path, f"section {k!r} must be a mapping of options, got {value!r}.",
                                 f"write the options of `stfeat {k}` indented under `{k}:`.")
            cfg.sections[k] = {_norm_key(kk): vv for kk, vv in value.items()}
        else:
            cfg.shared[k] = value
    return cfg


# ----------------------------------------------------------------------------------- validation


def _resolve_path_value(value: Any, base: Path, *, always: bool = True) -> Any:
    """Expand ``~`` and ``$VARS`` and make relative paths absolute against ``base`` (lists too).

    With ``always=False`` (options that hold a name or a path, like ``encoder``) a bare word is
    kept unless such a file exists next to the config.
    """
    if isinstance(value, (list, tuple)):
        return [_resolve_path_value(v, base, always=always) for v in value]
    if not isinstance(value, (str, Path)):
        return value
    s = os.path.expandvars(os.path.expanduser(str(value)))
    if "://" in s or s.startswith(("hf-hub:", "timm:")):
        return s  # a URL or hub reference, not a file
    p = Path(s)
    if not p.is_absolute():
        candidate = (base / p).resolve()
        if always or any(sep in s for sep in ("/", os.sep)) or s.startswith(".") or candidate.exists():
            return str(candidate)
        return s
    return str(p)


def _where(section: str, key: str) -> str:
    return f"key {key!r}" + (f" in section {section!r}" if section else " (shared)")


def _unknown_key(cfg: Config, section: str, key: str) -> InputError:
    if section:
        renamed = O.RENAMED.get(section, {}).get(key)
        allowed = list(O.fields_of(O.OPTIONS[section]))
    else:
        renamed = next((r[key] for r in O.RENAMED.values() if key in r), None)
        allowed = sorted({k for cls in O.OPTIONS.values() for k in O.fields_of(cls)})
    where = f"in section {section!r}" if section else "at the top level"
    if renamed is not None:
        note = " (inverted: pretrained: false)" if key == "random_weights" else ""
        return InputError(cfg.path, f"key {key!r} {where} is now called {renamed!r}.",
                          f"rename it to {renamed}{note}; option names are the same in Python, YAML and "
                          f"the CLI (--{renamed.replace('_', '-')}).")
    close = difflib.get_close_matches(key, allowed, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    if section:
        return InputError(cfg.path, f"unknown key {key!r} in section {section!r}.{hint}",
                          f"allowed keys for `stfeat {section}`: {', '.join(sorted(allowed))}.")
    if isinstance(cfg.shared.get(key), dict):
        return InputError(cfg.path, f"section {key!r} is not an stfeat command.",
                          f"use sections named after commands: {', '.join(O.OPTIONS)}.")
    return InputError(cfg.path, f"unknown top-level key {key!r}: no stfeat command has this option.{hint}",
                      f"use a command section ({', '.join(O.OPTIONS)}) or a shared option ({', '.join(allowed)}).")


def _value(cfg: Config, cls: type, section: str, key: str, value: Any, *, check_paths: bool) -> Any:
    """One config value: paths resolved against the config's folder, coerced and checked."""
    kind = O.meta(cls, key, "path")
    if kind and value is not None:
        value = _resolve_path_value(value, cfg.base_dir, always=kind is True)
    try:
        out = O.coerce(cls, key, value)
    except InputError as exc:
        raise InputError(cfg.path, f"{_where(section, key)} has a bad value {value!r}: {exc.problem}",
                         exc.fix) from None
    if check_paths and O.meta(cls, key, "exists") and out is not None and not Path(out).exists():
        raise InputError(cfg.path, f"{_where(section, key)} points to {out}, which does not exist.",
                         "fix the path (relative paths are relative to the config file).")
    return out


@dataclass
class Resolved:
    """The validated values of a config: ``values[command][key]`` and where each came from."""

    config: Config
    values: dict[str, dict[str, Any]]
    origin: dict[str, dict[str, str]]


def validate(cfg: Config, *, check_paths: bool | Iterable[str] = True) -> Resolved:
    """Check every key and value of ``cfg`` against the options schema.

    Shared keys apply to every command that has the option; a command's own section wins. A shared
    list given for an option that takes one value is not applied to that command (``encoder: [a, b]``
    is for ``fit``'s comparison; ``run`` extracts once per encoder), except ``extract``'s encoder,
    which :func:`run` expands.

    Parameters
    ----------
    check_paths
        Check that input paths (``samples``, ``sample``, ``weights``) exist: ``True`` for every
        command, or the names of the commands to check.

    Raises
    ------
    InputError
        Naming the key, the file and what is allowed.
    """
    for key in cfg.shared:
        if not any(key in O.fields_of(cls) for cls in O.OPTIONS.values()):
            raise _unknown_key(cfg, "", key)
    for section, items in cfg.sections.items():
        for key in items:
            if key not in O.fields_of(O.OPTIONS[section]):
                raise _unknown_key(cfg, section, key)
    checked = set(O.OPTIONS) if check_paths is True else set(check_paths or ())
    values: dict[str, dict[str, Any]] = {}
    origin: dict[str, dict[str, str]] = {}
    for name, cls in O.OPTIONS.items():
        names = O.fields_of(cls)
        vals, orig = {}, {}
        for key, raw in cfg.shared.items():
            if key not in names or key in cfg.sections.get(name, {}) or O.meta(cls, key, "shared") is False:
                continue
            if isinstance(raw, (list, tuple)) and not O.is_list(cls, key):
                if (name, key) == ("extract", "encoder"):
                    vals[key] = [_value(cfg, cls, "", key, v, check_paths=False) for v in raw]
                    orig[key] = "config"
                continue
            vals[key] = _value(cfg, cls, "", key, raw, check_paths=name in checked)
            orig[key] = "config"
        for key, raw in cfg.sections.get(name, {}).items():
            if (name, key) == ("extract", "encoder") and isinstance(raw, (list, tuple)):
                vals[key] = [_value(cfg, cls, name, key, v, check_paths=False) for v in raw]
            else:
                vals[key] = _value(cfg, cls, name, key, raw, check_paths=name in checked)
            orig[key] = "config"
        values[name], origin[name] = vals, orig
    return Resolved(cfg, values, origin)


# ----------------------------------------------------------------------------------- CLI defaults


def _cli_value(cls: type, key: str, value: Any) -> Any:
    """A validated value in the form the CLI parameter takes (lists of words, JSON for mappings)."""
    if value is None:
        return None
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, list):
        words = [f"{v:g}" if isinstance(v, float) else str(v) for v in value]
        return words if O.is_list(cls, key) else ",".join(words)  # extract's encoder list: rejected by the CLI
    if isinstance(value, Path):
        return str(value)
    return value


def default_map(resolved: Resolved) -> dict[str, dict[str, Any]]:
    """click's ``default_map`` (``{command: {param: value}}``) from validated values."""
    dm = {}
    for name, vals in resolved.values.items():
        cls = O.OPTIONS[name]
        out = {k: _cli_value(cls, k, v) for k, v in vals.items() if v is not None}
        if out:
            dm[name] = out
    return dm


def apply_config(ctx: Any, path: str | Path) -> Config:
    """Load ``path`` into ``ctx.default_map`` (called by the root ``--config`` option).

    Input paths are checked for the command being invoked. Values already in a default map (an
    outer config) are kept unless this config sets them.
    """
    cfg = load_config(path)
    sub = getattr(ctx, "invoked_subcommand", None)
    resolved = validate(cfg, check_paths=[sub] if sub else [])
    merged = dict(ctx.default_map or {})
    for name, values in default_map(resolved).items():
        merged[name] = {**merged.get(name, {}), **values}
    ctx.default_map = merged
    ctx.meta["stfeat.config"] = cfg
    log.debug("config %s -> %s", path, merged)
    return cfg


# ----------------------------------------------------------------------------------- library calls


def call(command: str, opts: Any, **extra: Any) -> Any:
    """Run the library function of ``command`` with an options object (+ programmatic ``extra``
    keywords such as ``on_sample``). The CLI commands and :func:`run` both go through here."""
    if command == "extract":
        from stfeat.extraction import extract_caches as fn
    elif command == "fit":
        from stfeat.fitting import fit_report as fn
    elif command == "predict":
        from stfeat.prediction import predict as fn
    elif command == "compare":
        from stfeat.variants import compare as fn
    else:
        raise KeyError(command)
    return fn(*O.positional_args(opts), **O.library_kwargs(opts), **extra)


def predict_out(opts: Any) -> Path:
    """Where ``stfeat predict`` writes when ``out`` is not given: ``{sample}_predicted[_grid].h5ad``."""
    if opts.out is not None:
        return Path(opts.out)
    return Path(f"{Path(opts.sample).name.split('.')[0]}_predicted{'_grid' if opts.grid_um else ''}.h5ad")


def fit_summary(res: Any) -> list[str]:
    """The lines ``stfeat fit`` prints after a fit: the split, genes, the comparison table, and which heads
    with a ridge skip path (attention, slide-transformer) were reduced to it in some folds."""
    from stfeat.crossval import skip_path_note

    split_info = res.metrics["split"]
    mode = split_info["mode"]
    over = ("sections" if mode == "loso" else "spots within sections (does NOT measure generalisation to new "
            "patients)" if mode.startswith("block") else split_info["group_kind"] + "s")
    lines = [f"split: {mode} over {over}; genes: {res.metrics['genes']['description']}; "
             f"transform: {res.metrics['transform']}",
             "mean Pearson r per held-out sample (columns) and mean over folds:",
             res.comparison.to_string(index=False, float_format=lambda v: f"{v:.3f}")]
    from stfeat.report import evaluation_lines

    skip = [n for n in map(skip_path_note, getattr(res, "cv", {}).values()) if n]
    return lines + skip + evaluation_lines(res.metrics.get("evaluation") or {})


def command_line(opts: Any, keys: Iterable[str] = ()) -> str:
    """The ``stfeat COMMAND ...`` line equivalent to an options object: the options in ``keys``
    (those a config set) and any other that differs from its default."""
    cls = type(opts)
    name = next(n for n, c in O.OPTIONS.items() if c is cls)
    words = ["stfeat", name]
    flags: list[str] = []
    for key, f in O.fields_of(cls).items():
        v = getattr(opts, key)
        if f.metadata.get("positional"):
            words.append(str(v))
            continue
        if f.metadata.get("cli_only") or (v == O.default_of(cls, key) and key not in keys):
            continue
        if isinstance(v, bool):
            flags.append(O.flag(key) if v else "--no-" + key.replace("_", "-"))
        elif v is not None:
            flags += [O.flag(key), _cli_word(v)]
    return " ".join(shlex.quote(w) for w in words + flags)


def _cli_word(v: Any) -> str:
    if isinstance(v, dict):
        return json.dumps(v, separators=(",", ":"))
    if isinstance(v, list):
        return ",".join(_cli_word(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


@dataclass
class Step:
    """One command of a config run: its options, the equivalent command line and its result."""

    command: str
    options: Any
    command_line: str
    sources: dict[str, str]
    result: Any = None


def plan(config_path: str | Path, *, steps: Sequence[str] | None = None) -> tuple[Config, list[Step]]:
    """Validate a config and list the commands :func:`run` would run (nothing runs).

    ``steps`` default: extract and fit, plus predict when the config has a ``predict:`` section.
    ``predict`` takes the model ``fit`` writes and the cache ``extract`` writes unless it names its own.
    """
    cfg = load_config(config_path)
    if steps is None or isinstance(steps, str):
        steps = [s.strip() for s in steps.split(",") if s.strip()] if steps else None
    bad = [s for s in steps or () if s not in STEPS]
    if bad:
        raise O.OptionError("steps", f"unknown step(s) {bad}.", f"use some of {', '.join(STEPS)}.")
    wanted = list(steps) if steps else ["extract", "fit"] + (["predict"] if "predict" in cfg.sections else [])
    resolved = validate(cfg, check_paths=wanted)
    values = {k: dict(v) for k, v in resolved.values.items()}
    origin = {k: dict(v) for k, v in resolved.origin.items()}
    pred = values["predict"]
    if "model_dir" not in pred:
        pred["model_dir"] = values["fit"].get("out_dir", O.default_of(O.FitOptions, "out_dir"))
        origin["predict"]["model_dir"] = "config"
    if "cache_dir" not in pred and values["extract"].get("cache_dir") is not None:
        pred["cache_dir"], origin["predict"]["cache_dir"] = values["extract"]["cache_dir"], "config"
    out: list[Step] = []
    for name in wanted:
        cls = O.OPTIONS[name]
        vals = values[name]
        runs = [{**vals, "encoder": e} for e in vals["encoder"]] if isinstance(vals.get("encoder"), list) and \
            not O.is_list(cls, "encoder") else [vals]
        for v in runs:
            missing = [k for k in O.required(cls) if v.get(k) is None]
            if missing:
                raise InputError(cfg.path, f"section {name!r} lacks {', '.join(repr(m) for m in missing)}, which "
                                 f"`stfeat {name}` requires.", f"add {missing[0]}: ... under {name}: (or as a "
                                 "shared top-level key).")
            try:
                opts = O.build(cls, v)
            except InputError as exc:
                raise InputError(cfg.path, f"section {name!r}: {exc.problem}", exc.fix) from None
            srcs = {k: origin[name].get(k, "default") for k in O.fields_of(cls) if not O.meta(cls, k, "cli_only")}
            out.append(Step(name, opts, command_line(opts, [k for k, s in srcs.items() if s == "config"]), srcs))
    return cfg, out


def run(config_path: str | Path, *, steps: Sequence[str] | str | None = None, dry_run: bool = False,
        echo: Callable[[str], Any] | None = print) -> list[Step]:
    """Run extract -> fit -> predict from one YAML config, the same as ``stfeat run CONFIG``.

    Parameters
    ----------
    config_path
        The YAML file (see configs/). Paths in it are relative to it.
    steps
        Which of ``extract``, ``fit``, ``predict`` to run; default extract and fit, plus predict
        when the config has a ``predict:`` section. A list of encoders is extracted once per encoder.
    dry_run
        Validate and return the steps (with their equivalent command lines), run nothing.
    echo
        Where progress lines go (``None``: nowhere).

    Returns
    -------
    list[Step]
        One per command, with ``result``: the cache paths (extract), the fit result (fit) or the
        predicted AnnData (predict). Each step also writes ``resolved_config.yaml`` next to its outputs.
    """
    say = echo or (lambda _s: None)
    cfg, todo = plan(config_path, steps=steps)
    for i, step in enumerate(todo, start=1):
        say(f"[{i}/{len(todo)}] {step.command_line}")
        if dry_run:
            continue
        opts = step.options
        prov = dict(sources=step.sources, config_file=cfg.path, command=step.command)
        if step.command == "extract":
            step.result = call("extract", opts, on_sample=lambda r: say(r.line()))
            for folder in sorted({Path(p).parent for p in step.result}):
                save_resolved_config(None, folder, options=opts, **prov)
        elif step.command == "fit":
            step.result = call("fit", opts)
            save_resolved_config(None, opts.out_dir, options=opts, **prov)
            for note in step.result.notes:
                say(f"NOTE: {note}")
            for line in fit_summary(step.result):
                say(line)
        else:
            opts.out = predict_out(opts)
            step.result = call("predict", opts)
            save_resolved_config(None, Path(opts.out).parent, options=opts, **prov)
            say(f"predicted {step.result.n_vars} genes at {step.result.n_obs} points -> {opts.out}")
    return todo


__all__ = [
    "Config",
    "Resolved",
    "STEPS",
    "Step",
    "apply_config",
    "call",
    "command_line",
    "default_map",
    "fit_summary",
    "load_config",
    "plan",
    "predict_out",
    "run",
    "validate",
]
