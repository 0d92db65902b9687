"""``stfeat run CONFIG``: extract, then fit (then predict) from one YAML config.

Each step runs the real command (``stfeat extract``, ``stfeat fit``, ``stfeat predict``) with the
config's section as its defaults, so a config run and the same options typed by hand are one code
path, and every step writes its own ``resolved_config.yaml``.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from stfeat.cli import app
from stfeat.cli._common import user_errors

STEPS = ("extract", "fit", "predict")


def command_line(cmd: Any, name: str, values: dict[str, Any]) -> str:
    """The ``stfeat NAME ...`` line equivalent to running ``cmd`` with ``values`` as its defaults."""
    words = ["stfeat", name]
    for p in cmd.params:
        if p.name not in values or not getattr(p, "expose_value", True):
            continue
        v = values[p.name]
        opts = list(getattr(p, "opts", []) or [])
        if type(p).__name__.endswith("Argument"):
            words.append(str(v))
        elif isinstance(v, bool):
            secondary = list(getattr(p, "secondary_opts", []) or [])
            if v and opts:
                words.append(max(opts, key=len))
            elif not v and secondary:
                words.append(max(secondary, key=len))
        elif v is not None and opts:
            words += [max(opts, key=len), str(v)]
    return " ".join(shlex.quote(w) for w in words)


def plan_steps(sections: dict[str, Any], steps: list[str] | None) -> list[str]:
    """Which steps to run: the requested ones, else extract and fit, plus predict if the config has a
    ``predict:`` section."""
    if steps:
        return steps
    out = ["extract", "fit"]
    if "predict" in sections:
        out.append("predict")
    return out


def expand_encoders(name: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    """``extract`` takes one encoder: a config listing several extracts once per encoder."""
    enc = values.get("encoder")
    if name != "extract" or not isinstance(enc, str) or "," not in enc:
        return [values]
    return [{**values, "encoder": e.strip()} for e in enc.split(",") if e.strip()]


@app.command("run")
@user_errors
def run_cmd(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="YAML config with extract:, fit: and optionally predict: "
                                           "sections (see configs/).")],
    steps: Annotated[Optional[str], typer.Option(help="Steps to run, comma-separated (extract, fit, predict); "
                                                 "default extract,fit (+ predict when configured).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate the config and print the commands, "
                                          "run nothing.")] = False,
) -> None:
    """Run stage one and stage two from one config: extract, then fit, then (optionally) predict.

    Paths in the config are relative to the config file. Each step prints the equivalent
    `stfeat ...` command line and writes resolved_config.yaml next to its outputs.
    """
    from stfeat.config import build_default_map, load_config
    from stfeat.errors import InputError

    root = ctx.find_root()
    group = root.command
    cfg = load_config(config, commands=group.commands)
    dm = build_default_map(cfg, group)
    wanted = None
    if steps:
        wanted = [s.strip() for s in steps.split(",") if s.strip()]
        bad = [s for s in wanted if s not in STEPS]
        if bad:
            raise typer.BadParameter(f"unknown step(s) {bad}; use some of {', '.join(STEPS)}", param_hint="--steps")
    plan = plan_steps(cfg.sections, wanted)
    if "predict" in plan:
        pred = dm.setdefault("predict", {})
        fit_out = dm.get("fit", {}).get("out")
        if "model_dir" not in pred and fit_out is not None:
            pred["model_dir"] = fit_out  # predict with the model this config just fitted
        if "cache_dir" not in pred and "cache_dir" in dm.get("extract", {}):
            pred["cache_dir"] = dm["extract"]["cache_dir"]
    ctx.meta["stfeat.config"] = cfg
    runs = [(name, v) for name in plan for v in expand_encoders(name, dm.get(name, {}))]
    for name, values in runs:
        cmd = group.commands[name]
        missing = [p.name for p in cmd.params if getattr(p, "required", False) and p.name not in values]
        if missing:
            raise InputError(cfg.path, f"section {name!r} lacks {', '.join(repr(m) for m in missing)}, which "
                             f"`stfeat {name}` requires.", f"add {missing[0]}: ... under {name}: (or as a shared "
                             "top-level key).")
    for i, (name, values) in enumerate(runs, start=1):
        cmd = group.commands[name]
        typer.secho(f"[{i}/{len(runs)}] {command_line(cmd, name, values)}", bold=True)
        if dry_run:
            continue
        sub = cmd.make_context(name, [], parent=root, default_map=values)
        with sub:
            cmd.invoke(sub)
    if dry_run:
        typer.echo(f"{config}: valid; {len(runs)} command(s) would run.")
