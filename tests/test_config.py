"""Configs: CLI > config > defaults resolved by click's default_map; clear errors; resolved_config.yaml."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, List, Optional

import pytest
import typer
import yaml
from typer.testing import CliRunner

from stfeat.config import (
    RESOLVED_CONFIG_NAME,
    apply_config,
    build_default_map,
    load_config,
    save_resolved_config,
)
from stfeat.errors import InputError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


class Head(str, enum.Enum):
    ridge = "ridge"
    lgbm = "lgbm"


def _toy_app() -> typer.Typer:
    """Two commands shaped like stfeat's, behind the same root `--config` mechanism."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.callback()
    def root(ctx: typer.Context, config: Annotated[Optional[Path], typer.Option("--config")] = None) -> None:
        if config is not None:
            apply_config(ctx, config)

    @app.command("fit")
    def fit(
        ctx: typer.Context,
        heads: Annotated[List[Head], typer.Option("--head")] = [Head.ridge],  # noqa: B006
        alpha: Annotated[float, typer.Option()] = 1.0,
        cache_dir: Annotated[Path, typer.Option()] = Path("cache"),
        out: Annotated[Path, typer.Option()] = Path("out"),
        verbose: Annotated[bool, typer.Option("--verbose")] = False,
    ) -> None:
        path = save_resolved_config(ctx, out)
        typer.echo(f"heads={[h.value for h in heads]} alpha={alpha} cache_dir={cache_dir} wrote={path}")

    @app.command("extract")
    def extract(
        path: Annotated[Path, typer.Argument()],
        encoder: Annotated[str, typer.Option()] = "uni",
        cache_dir: Annotated[Path, typer.Option()] = Path("cache"),
    ) -> None:
        typer.echo(f"path={path} encoder={encoder} cache_dir={cache_dir}")

    return app


def _group(app: typer.Typer):
    return typer.main.get_command(app)


def _write(p: Path, doc: dict | str) -> Path:
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return p


def test_precedence_cli_over_config_over_default(tmp_path):
    app = _toy_app()
    cfg = _write(tmp_path / "exp.yaml", {"cache_dir": "feats", "fit": {"alpha": 10.0, "heads": ["lgbm", "ridge"],
                                                                       "out": "runs/a"}})
    r = CliRunner().invoke(app, ["--config", str(cfg), "fit"])
    assert r.exit_code == 0, r.output
    assert "heads=['lgbm', 'ridge'] alpha=10.0" in r.output
    assert f"cache_dir={tmp_path / 'feats'}" in r.output  # shared key, relative to the config file
    r = CliRunner().invoke(app, ["--config", str(cfg), "fit", "--alpha", "3"])
    assert "alpha=3.0" in r.output
    resolved = yaml.safe_load((tmp_path / "runs" / "a" / RESOLVED_CONFIG_NAME).read_text())
    assert resolved["fit"]["alpha"] == 3.0
    assert resolved["fit"]["heads"] == ["lgbm", "ridge"]
    assert resolved["sources"]["fit"] == {"heads": "config", "alpha": "cli", "cache_dir": "config",
                                          "out": "config", "verbose": "default"}
    assert resolved["config_file"] == str(cfg.resolve())
    # Without a config, defaults apply.
    r = CliRunner().invoke(app, ["fit", "--out", str(tmp_path / "b")])
    assert "heads=['ridge'] alpha=1.0 cache_dir=cache" in r.output


def test_resolved_config_reruns_the_same(tmp_path):
    app = _toy_app()
    out = tmp_path / "run1"
    r = CliRunner().invoke(app, ["fit", "--alpha", "7", "--head", "lgbm", "--out", str(out)])
    assert r.exit_code == 0, r.output
    r2 = CliRunner().invoke(app, ["--config", str(out / RESOLVED_CONFIG_NAME), "fit"])
    assert r2.exit_code == 0, r2.output
    assert "heads=['lgbm'] alpha=7.0" in r2.output
    again = yaml.safe_load((out / RESOLVED_CONFIG_NAME).read_text())
    assert again["sources"]["fit"]["alpha"] == "config"


def test_config_fills_a_required_argument_via_data_alias(tmp_path):
    app = _toy_app()
    (tmp_path / "slides").mkdir()
    cfg = _write(tmp_path / "c.yaml", {"data": "slides", "encoder": "classical"})
    r = CliRunner().invoke(app, ["--config", str(cfg), "extract"])
    assert r.exit_code == 0, r.output
    assert f"path={tmp_path / 'slides'} encoder=classical" in r.output
    r = CliRunner().invoke(app, ["--config", str(cfg), "extract", "elsewhere", "--encoder", "uni"])
    assert "path=elsewhere encoder=uni" in r.output


@pytest.mark.parametrize(
    "doc, match",
    [
        ({"fit": {"alpah": 2}}, r"unknown key 'alpah' in section 'fit'\. Did you mean alpha\?.*allowed keys for "
                                r"`stfeat fit`: alpha, cache_dir, heads, out, verbose"),
        ({"fit": {"heads": ["ridge", "xgboost"]}}, r"'xgboost', which is not allowed.*one of: ridge, lgbm"),
        ({"predict": {"out": "x"}}, r"section 'predict' is not an stfeat command.*extract, fit"),
        ({"colour": "red"}, r"unknown top-level key 'colour'"),
        ({"fit": {"alpha": "big"}}, r"key 'alpha' in section 'fit' has a bad value 'big'"),
        ({"fit": {"alpha": [1, 2]}}, r"takes one value"),
        ({"fit": ["alpha", 1]}, r"section 'fit' must be a mapping"),
    ],
)
def test_bad_configs_name_key_file_and_fix(tmp_path, doc, match):
    cfg = _write(tmp_path / "bad.yaml", doc)
    group = _group(_toy_app())
    with pytest.raises(InputError, match=match) as err:
        build_default_map(load_config(cfg, commands=group.commands), group)
    assert err.value.path == cfg.resolve() or err.value.path == cfg
    assert "bad.yaml" in str(err.value)


def test_yaml_syntax_and_shape_errors(tmp_path):
    bad = _write(tmp_path / "s.yaml", "fit:\n  alpha: 1\n   heads: [x\n")
    with pytest.raises(InputError, match=r"s.yaml: is not valid YAML at line \d+"):
        load_config(bad, commands=["fit"])
    with pytest.raises(InputError, match="must be a YAML mapping"):
        load_config(_write(tmp_path / "l.yaml", "- a\n- b\n"), commands=["fit"])
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_paths_resolve_relative_to_the_config_not_the_cwd(tmp_path, monkeypatch):
    sub = tmp_path / "configs"
    sub.mkdir()
    cfg = _write(sub / "c.yaml", {"extract": {"path": "../data/x", "encoder": "classical"}})
    monkeypatch.chdir(tmp_path.parent)
    group = _group(_toy_app())
    dm = build_default_map(load_config(cfg, commands=group.commands), group)
    assert dm["extract"]["path"] == str((tmp_path / "data" / "x").resolve())
    assert dm["extract"]["encoder"] == "classical"  # a registry name, not a path


def test_real_cli_reports_config_errors_cleanly(tmp_path):
    from stfeat.cli import app

    cfg = _write(tmp_path / "oops.yaml", {"extract": {"encoderr": "classical"}})
    r = CliRunner().invoke(app, ["--config", str(cfg), "extract", "--help"])
    assert r.exit_code == 1
    assert "oops.yaml" in r.output and "unknown key 'encoderr'" in r.output and "Traceback" not in r.output


def test_save_resolved_config_outside_cli_is_a_no_op(tmp_path):
    assert save_resolved_config(None, tmp_path) is None
    assert not (tmp_path / RESOLVED_CONFIG_NAME).exists()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate_against_the_real_cli(path):
    from stfeat.cli import app

    group = _group(app)
    cfg = load_config(path, commands=group.commands)
    assert cfg.meta.get("description"), f"{path.name} should say what it is for"
    dm = build_default_map(cfg, group)
    assert dm, f"{path.name} sets nothing"


def test_run_dry_run_and_missing_required_key(tmp_path):
    from stfeat.cli import app

    r = CliRunner().invoke(app, ["run", str(REPO / "configs" / "hest_benchmark.yaml"), "--dry-run"])
    assert r.exit_code == 0, r.output
    # One extract per listed encoder, then one fit comparing them all.
    assert r.output.count("stfeat extract") == 7 and r.output.count("stfeat fit") == 1
    assert "--encoder uni --scales 112" in r.output and "--head hest-ridge" in r.output
    assert "--split lopo" in r.output and "valid; 8 command(s)" in r.output
    cfg = _write(tmp_path / "partial.yaml", {"description": "no data", "encoder": "classical"})
    r = CliRunner().invoke(app, ["run", str(cfg), "--dry-run"])
    assert r.exit_code == 1 and "section 'extract' lacks 'path'" in r.output and "partial.yaml" in r.output
    r = CliRunner().invoke(app, ["run", str(cfg), "--steps", "extract,train"])
    assert r.exit_code == 2 and "train" in r.output


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_head_params_are_valid(path):
    from stfeat.heads import make_head

    params = (yaml.safe_load(path.read_text()).get("fit") or {}).get("head_params") or {}
    for head, kw in params.items():
        make_head(head, **kw)  # raises on an unknown head or parameter


@pytest.mark.realdata
def test_her2st_config_runs_on_shared_data(her2st, shared_weights, tmp_path):
    """configs/her2st.yaml, unchanged, on a cut-down view of ../shared/data/her2st (2 sections x 12 spots)."""
    import shutil

    from test_readme import make_mini_her2st

    from stfeat.cli import app

    # Same relative layout as the repository: <root>/main/configs/her2st.yaml -> ../../shared/...
    (tmp_path / "main" / "configs").mkdir(parents=True)
    cfg = tmp_path / "main" / "configs" / "her2st.yaml"
    shutil.copy(REPO / "configs" / "her2st.yaml", cfg)
    make_mini_her2st(her2st, tmp_path / "shared" / "data" / "her2st", n_spots=12)
    (tmp_path / "shared" / "weights").symlink_to(shared_weights)
    r = CliRunner().invoke(app, ["run", str(cfg)])
    assert r.exit_code == 0, r.output
    out = tmp_path / "main" / "runs" / "her2st_densenet121"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"]["mode"] == "loso"  # one patient: leave one section out, with a note
    assert list(metrics["encoders"]) == ["densenet121"] and len(metrics["split"]["folds"]) == 2
    assert sorted(p.name for p in (tmp_path / "main" / "stfeat_cache" / "densenet121").glob("*.h5")) == [
        "C2.h5", "C3.h5"]
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text())
    assert resolved["config_file"] == str(cfg.resolve())
    assert resolved["sources"]["fit"]["head"] == "config"
