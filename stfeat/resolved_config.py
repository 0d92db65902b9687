"""``resolved_config.yaml``: what a command ran with and where each value came from.

Written next to every command's outputs (by the CLI commands and :func:`stfeat.config.run`); the
file is itself a config, so ``stfeat --config OUT/resolved_config.yaml COMMAND`` reruns the same.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from stfeat import options as O

RESOLVED_CONFIG_NAME = "resolved_config.yaml"


def _sources_from_ctx(ctx: Any, names: Iterable[str]) -> dict[str, str]:
    names_of = {"COMMANDLINE": "cli", "ENVIRONMENT": "env", "DEFAULT_MAP": "config", "DEFAULT": "default",
                "PROMPT": "prompt"}
    out = {}
    for n in names:
        src = ctx.get_parameter_source(n)
        out[n] = names_of.get(src.name, src.name.lower()) if src is not None else "default"
    return out


def _config_of(ctx: Any) -> Any:
    c = ctx
    while c is not None:
        cfg = c.meta.get("stfeat.config")
        if cfg is not None:
            return cfg
        c = c.parent
    return None


def save_resolved_config(ctx: Any, out_dir: str | Path, *, options: Any = None, command: str | None = None,
                         sources: dict[str, str] | None = None, config_file: str | Path | None = None,
                         extra: dict[str, Any] | None = None) -> Path | None:
    """Write ``resolved_config.yaml`` into ``out_dir``: a command's options and where each came from.

    The file is a valid config (a section named after the command) plus a ``sources`` section
    (``cli``, ``config``, ``default`` or ``env`` per option), so ``stfeat --config
    out_dir/resolved_config.yaml COMMAND`` reruns the same thing.

    Parameters
    ----------
    ctx
        The command's click context (its values and sources), or ``None`` with ``options``.
    options
        An options object (:mod:`stfeat.options`): the values recorded. Without it, the context's.
    command, sources, config_file
        Used without a context (``sources`` default: ``default`` for every option).
    extra
        More provenance to record under ``notes``.

    Returns
    -------
    Path or None
        The file written; ``None`` when there is neither a context nor options.
    """
    import yaml

    from stfeat import __version__

    if ctx is None and options is None:
        return None
    if options is not None:
        cls = type(options)
        values = {k: v for k, v in O.as_dict(options).items() if not O.meta(cls, k, "cli_only")}
        name = command or next(n for n, c in O.OPTIONS.items() if c is cls)
    else:
        values = {k: O.as_plain(getattr(v, "value", v)) for k, v in ctx.params.items()}
        name = command or ctx.info_name or ctx.command.name or "command"
    if ctx is not None:
        srcs = _sources_from_ctx(ctx, values)
        cfg = _config_of(ctx)
        config_file = cfg.path if cfg is not None else config_file
    else:
        srcs = {k: (sources or {}).get(k, "default") for k in values}
    doc = {
        "stfeat_version": __version__,
        "command": name,
        "config_file": None if config_file is None else str(config_file),
        name: values,
        "sources": {name: srcs},
    }
    if extra:
        doc["notes"] = O.as_plain(extra)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESOLVED_CONFIG_NAME
    _keep_other_commands(path, doc, name)
    header = (f"# Resolved options of `stfeat {name}` (stfeat {__version__}).\n"
              f"# Rerun with: stfeat --config {path.name} {name}\n")
    from stfeat._safe_write import write_text

    # a fresh temporary file (never a planted link), renamed into place inside out_dir
    write_text(path, header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None), root=out_dir)
    return path


def _keep_other_commands(path: Path, doc: dict, name: str) -> None:
    """Two commands writing into one folder (fit's out_dir and a prediction saved in it) both stay
    in its ``resolved_config.yaml``: the sections of the other commands are kept."""
    from stfeat._yaml import load_yaml
    from stfeat.errors import InputError

    try:  # safe_load behind the nesting-depth guard (a deeply nested file would end in a RecursionError)
        old = load_yaml(path, what="resolved config") if path.is_file() else None
    except InputError:  # unreadable, not YAML or nested too deeply: replaced by the new file
        return
    if not isinstance(old, dict) or "stfeat_version" not in old:
        return
    for other in O.OPTIONS:
        if other != name and isinstance(old.get(other), dict):
            doc[other] = old[other]
            doc["sources"][other] = (old.get("sources") or {}).get(other, {})


__all__ = ["RESOLVED_CONFIG_NAME", "save_resolved_config"]
