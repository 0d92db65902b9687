"""YAML configs for the CLI: command line > config file > defaults, resolved in one place.

A config is a YAML mapping with one section per command and optional shared top-level keys::

    encoder: classical                 # shared: applies to every command that has an `encoder` option
    cache_dir: cache                   # paths are relative to this file
    extract:
      data: ../../shared/data/her2st
      scales_um: [112, 224, 448]
    fit:
      heads: [hest-ridge, lgbm]
      out: runs/her2st

``stfeat --config FILE COMMAND`` loads it (:func:`apply_config`) into click's ``ctx.default_map``,
so click itself applies the precedence: an option given on the command line wins over the config,
which wins over the option's default. Keys are checked against each command's real parameters
(unknown key or bad choice -> :class:`~stfeat.errors.InputError` naming the key, the file and what
is allowed), and path-valued options are resolved relative to the config file.

Every command writes what it ran with, and where each value came from, by calling
:func:`save_resolved_config` (``resolved_config.yaml`` next to its outputs); that file is itself a
valid config, so ``stfeat --config out/resolved_config.yaml fit`` reruns the same thing.
"""

from __future__ import annotations

import difflib
import enum
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from stfeat.errors import InputError

log = logging.getLogger(__name__)

RESOLVED_CONFIG_NAME = "resolved_config.yaml"
# Top-level keys that carry documentation or provenance, never options.
META_KEYS = frozenset({"name", "description", "notes", "sources", "stfeat_version", "command", "config_file"})
# Options whose values are paths even when a command types them as plain strings.
PATH_KEYS = frozenset(
    {"data", "cache_dir", "out", "out_dir", "model_dir", "manifest", "weights", "image", "sample", "model", "encoder"}
)
# A config may say `data:` for whatever a command calls its input (extract's PATH argument, ...).
KEY_ALIASES = {
    "data": ("data", "path", "samples", "samples_or_manifest", "manifest"),
    "heads": ("head", "heads"),
    "scales_um": ("scales", "scales_um"),
}
_SOURCE_NAMES = {"COMMANDLINE": "cli", "ENVIRONMENT": "env", "DEFAULT_MAP": "config", "DEFAULT": "default", "PROMPT": "prompt"}


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

    def for_command(self, command: str) -> dict[str, Any]:
        """Shared keys overlaid by the command's own section (raw values, not yet resolved)."""
        return {**self.shared, **self.sections.get(command, {})}


def _norm_key(key: Any) -> str:
    return str(key).strip().replace("-", "_")


def load_config(path: str | Path, *, commands: Iterable[str] | None = None) -> Config:
    """Read a YAML config with ``yaml.safe_load`` and split it into shared keys and command sections.

    Parameters
    ----------
    path
        The YAML file.
    commands
        Names of the commands that may have a section. When ``None`` the names of the ``stfeat``
        CLI are used. A top-level key whose value is a mapping and names a command is a section;
        any other top-level key is a shared option.

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
    names = set(commands) if commands is not None else set(cli_command_names())
    cfg = Config(path=path.resolve())
    for key, value in raw.items():
        k = _norm_key(key)
        if k in META_KEYS:
            cfg.meta[k] = value
        elif k in names:
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise InputError(path, f"section {k!r} must be a mapping of options, got {value!r}.",
                                 f"write the options of `stfeat {k}` indented under `{k}:`.")
            cfg.sections[k] = {_norm_key(kk): vv for kk, vv in value.items()}
        else:
            cfg.shared[k] = value
    return cfg


def cli_command_names() -> list[str]:
    """Names of the ``stfeat`` subcommands (imports the CLI, which is light)."""
    return sorted(_root_group().commands)


def _root_group() -> Any:
    import typer.main

    from stfeat.cli import app

    return typer.main.get_command(app)  # type: ignore[return-value]


def _param_key(p: Any) -> str:
    return str(p.name)


def command_options(cmd: Any) -> dict[str, Any]:
    """The config keys a command accepts: its parameter names (``--cache-dir`` -> ``cache_dir``)."""
    return {
        _param_key(p): p
        for p in cmd.params
        if p.name and p.expose_value and p.name not in {"help", "config"}
    }


def _descriptor(p: Any) -> Any:
    """typer (>= 0.29, its own click fork) describes a parameter's type in ``type_descriptor``."""
    return getattr(p, "type_descriptor", None)


def _choices(p: Any) -> list[str] | None:
    desc = _descriptor(p)
    if desc is not None:
        ch = desc.choices
        return None if ch is None else [str(_plain(c)) for c in ch]
    ch = getattr(getattr(p, "type", None), "choices", None)  # plain click.Choice
    return None if ch is None else [str(c) for c in ch]


def _is_typed_path(p: Any) -> bool:
    desc = _descriptor(p)
    if desc is not None and (desc.is_path or desc.is_file):
        return True
    return type(getattr(p, "type", None)).__name__ in {"Path", "File"}


def _is_path_param(key: str, p: Any) -> bool:
    return _is_typed_path(p) or key in PATH_KEYS


def _must_exist(p: Any) -> bool:
    desc = _descriptor(p)
    if desc is not None:
        return bool(desc.is_path and getattr(desc.parameter_info, "exists", False))
    return bool(getattr(getattr(p, "type", None), "exists", False))


def _is_str(p: Any) -> bool:
    desc = _descriptor(p)
    return desc is not None and desc.annotation is str


def _to_cli_form(value: Any, p: Any) -> Any:
    """YAML conveniences for options the CLI types as one string: lists become ``a,b,c`` and
    mappings become JSON (``head_params``)."""
    import json

    if _is_str(p) and not _is_multi(p):
        if isinstance(value, (list, tuple)):
            return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        if isinstance(value, dict):
            return json.dumps(value)
    return value


def _is_multi(p: Any) -> bool:
    return bool(getattr(p, "multiple", False)) or getattr(p, "nargs", 1) != 1


def _resolve_path_value(value: Any, base: Path, *, always: bool = True) -> Any:
    """Expand ``~`` and ``$VARS`` and make relative paths absolute against ``base`` (lists too).

    With ``always=False`` (options typed as strings that may hold a name or a path, like
    ``encoder``) a bare word is kept unless such a file exists next to the config.
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
        # A bare name that is not a file next to the config (e.g. a registry name) stays as written.
        if always or any(sep in s for sep in ("/", os.sep)) or s.startswith(".") or candidate.exists():
            return str(candidate)
        return s
    return str(p)


def _plain(value: Any) -> Any:
    """YAML-friendly form of a resolved click value."""
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    try:  # numpy scalars
        return value.item()
    except AttributeError:
        return str(value)


def _check_value(cfg: Config, section: str, key: str, p: Any, value: Any, cmd: Any) -> None:
    """Let the CLI's own type conversion run now, so a bad value fails before any work starts."""
    where = f"key {key!r}" + (f" in section {section!r}" if section else " (shared)")
    if value is None:
        return
    multi = _is_multi(p)
    if isinstance(value, (list, tuple)) and not multi:
        raise InputError(cfg.path, f"{where} takes one value, got a list {value!r}.", "give a single value.")
    vals = list(value) if isinstance(value, (list, tuple)) else [value]
    allowed = _choices(p)
    if allowed is not None:
        low = [a.lower() for a in allowed]
        for v in vals:
            sv = str(_plain(v))
            if sv not in allowed and sv.lower() not in low:
                raise InputError(cfg.path, f"{where} has value {sv!r}, which is not allowed.",
                                 f"use one of: {', '.join(allowed)}.")
        return
    if _is_path_param(key, p):
        if _must_exist(p):
            for v in vals:
                if not Path(str(v)).exists():
                    raise InputError(cfg.path, f"{where} points to {v}, which does not exist.",
                                     "fix the path (relative paths are relative to the config file).")
        return
    runtime = getattr(p, "get_runtime_param", None)
    if runtime is None:
        return  # plain click: it converts (and reports) at run time
    from typer._click.core import Context

    try:
        runtime().coerce(vals if multi else vals[0], param=p, ctx=Context(cmd))
    except Exception as exc:  # noqa: BLE001 - typer raises its UsageError family; we only re-word it
        msg = getattr(exc, "message", None) or str(exc)
        raise InputError(cfg.path, f"{where} has a bad value {value!r}: {msg}",
                         f"see `stfeat {cmd.name} --help` for what it takes.") from None


def _target_key(key: str, allowed: dict[str, Any]) -> str | None:
    """The parameter a config key sets in one command (``None`` when the command lacks it)."""
    if key in allowed:
        return key
    for alias in KEY_ALIASES.get(key, ()):
        if alias in allowed:
            return alias
    return None


def build_default_map(cfg: Config, group: Any = None) -> dict[str, dict[str, Any]]:
    """Validate ``cfg`` against the CLI and return click's ``default_map`` (``{command: {param: value}}``).

    Raises
    ------
    InputError
        Unknown key (naming the key, the file and the allowed keys), bad choice, a path marked as
        required to exist that does not, or a section for a command that does not exist.
    """
    group = group if group is not None else _root_group()
    commands = dict(group.commands)
    for section in cfg.sections:
        if section not in commands:
            raise InputError(cfg.path, f"section {section!r} is not an stfeat command.",
                             f"use sections named after commands: {', '.join(sorted(commands))}.")
    options = {name: command_options(cmd) for name, cmd in commands.items()}
    all_keys = sorted(set().union(*[set(o) for o in options.values()])) if options else []
    for key in cfg.shared:
        if not any(_target_key(key, o) for o in options.values()):
            if isinstance(cfg.shared[key], dict):
                raise InputError(cfg.path, f"section {key!r} is not an stfeat command.",
                                 f"use sections named after commands: {', '.join(sorted(commands))}.")
            close = difflib.get_close_matches(key, all_keys + sorted(commands), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise InputError(cfg.path, f"unknown top-level key {key!r}: no stfeat command has this option.{hint}",
                             f"use a command section ({', '.join(sorted(commands))}) or a shared option "
                             f"({', '.join(all_keys)}).")
    for section, values in cfg.sections.items():
        allowed = options[section]
        for key in values:
            if _target_key(key, allowed) is None:
                close = difflib.get_close_matches(key, list(allowed), n=3)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                raise InputError(cfg.path, f"unknown key {key!r} in section {section!r}.{hint}",
                                 f"allowed keys for `stfeat {section}`: {', '.join(sorted(allowed))}.")
    default_map: dict[str, dict[str, Any]] = {}
    for name, allowed in options.items():
        section = cfg.sections.get(name, {})
        merged = {}
        origin = {}
        for src, items in (("", cfg.shared), (name, section)):
            for k, v in items.items():
                t = _target_key(k, allowed)
                if t is not None:
                    merged[t], origin[t] = v, src
        out = {}
        for key, value in merged.items():
            p = allowed[key]
            value = _to_cli_form(value, p)
            if _is_path_param(key, p) and value is not None:
                value = _resolve_path_value(value, cfg.base_dir, always=_is_typed_path(p))
            _check_value(cfg, origin[key], key, p, value, commands[name])
            out[key] = value
        if out:
            default_map[name] = out
    return default_map


def apply_config(ctx: Any, path: str | Path) -> Config:
    """Load ``path`` into ``ctx.default_map`` (called by the root ``--config`` option).

    Values already in a default map (an outer config) are kept unless this config sets them.
    """
    group = ctx.command
    if not hasattr(group, "commands"):  # pragma: no cover - the root is always a group
        raise TypeError("apply_config needs the root group's context")
    cfg = load_config(path, commands=group.commands)
    dm = build_default_map(cfg, group)
    merged = dict(ctx.default_map or {})
    for name, values in dm.items():
        merged[name] = {**merged.get(name, {}), **values}
    ctx.default_map = merged
    ctx.meta["stfeat.config"] = cfg
    log.debug("config %s -> %s", path, dm)
    return cfg


def resolved_params(ctx: Any) -> dict[str, dict[str, Any]]:
    """Every parameter of the running command: ``{name: {"value": v, "source": "cli"|"config"|"default"|"env"}}``."""
    out = {}
    for p in ctx.command.params:
        if not p.name or not p.expose_value or p.name == "help":
            continue
        src = ctx.get_parameter_source(p.name)
        source = _SOURCE_NAMES.get(src.name, src.name.lower()) if src is not None else "default"
        out[p.name] = {"value": _plain(ctx.params.get(p.name)), "source": source}
    return out


def _current_context() -> Any:
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # typer < 0.29 runs on click itself
        from click import get_current_context
    return get_current_context(silent=True)


def save_resolved_config(ctx: Any, out_dir: str | Path, *, extra: dict[str, Any] | None = None) -> Path | None:
    """Write ``resolved_config.yaml`` into ``out_dir``: the command's resolved options and their sources.

    The file is a valid config (a section named after the command) plus a ``sources`` section that
    says where each value came from (``cli``, ``config``, ``default`` or ``env``), so
    ``stfeat --config out_dir/resolved_config.yaml COMMAND`` reruns the same thing.

    Parameters
    ----------
    ctx
        The command's click context; ``None`` takes the current one (returns ``None`` outside a CLI call).
    out_dir
        Folder (created if needed) next to the command's outputs.
    extra
        More provenance to record (e.g. the encoder's weights id).

    Returns
    -------
    Path or None
        The file written.
    """
    import yaml

    from stfeat import __version__

    if ctx is None:
        ctx = _current_context()
        if ctx is None:
            return None
    name = ctx.info_name or ctx.command.name or "command"
    params = resolved_params(ctx)
    cfg = None
    c = ctx
    while c is not None and cfg is None:
        cfg = c.meta.get("stfeat.config")
        c = c.parent
    doc = {
        "stfeat_version": __version__,
        "command": name,
        "config_file": str(cfg.path) if cfg is not None and cfg.path is not None else None,
        name: {k: v["value"] for k, v in params.items()},
        "sources": {name: {k: v["source"] for k, v in params.items()}},
    }
    if extra:
        doc["notes"] = _plain(extra)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESOLVED_CONFIG_NAME
    header = (f"# Resolved options of `stfeat {name}` (stfeat {__version__}).\n"
              f"# Rerun with: stfeat --config {path.name} {name}\n")
    from stfeat._safe_write import write_text

    write_text(path, header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None), root=out_dir)
    return path


__all__ = [
    "Config",
    "RESOLVED_CONFIG_NAME",
    "apply_config",
    "build_default_map",
    "cli_command_names",
    "command_options",
    "load_config",
    "resolved_params",
    "save_resolved_config",
]
