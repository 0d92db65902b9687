"""Configs: validated against stfeat.options; CLI > config > defaults; clear errors; resolved_config.yaml;
``stfeat.config.run`` on the synthetic demo data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import stfeat.config as C
from stfeat.cli import app
from stfeat.config import load_config, validate
from stfeat.errors import InputError
from stfeat.options import ExtractOptions, FitOptions
from stfeat.resolved_config import RESOLVED_CONFIG_NAME, save_resolved_config
from test_demo import demo_workspace  # noqa: F401  (session fixture shared with tests/test_demo.py)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def _write(p: Path, doc: dict | str) -> Path:
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return p


@pytest.fixture
def calls(monkeypatch, tmp_path):
    """Capture the options objects the CLI commands hand to the library (nothing runs)."""
    seen: list = []

    def fake(command, opts, **extra):
        seen.append(opts)
        if command == "extract":
            root = opts.cache_dir or tmp_path / "default_cache"
            return [Path(root) / opts.encoder / "S1.h5"]
        raise AssertionError(command)

    monkeypatch.setattr(C, "call", fake)
    return seen


def test_precedence_cli_over_config_over_default(tmp_path, calls):
    (tmp_path / "slides").mkdir()
    cfg = _write(tmp_path / "exp.yaml", {"samples": "slides", "cache_dir": "feats", "encoder": "classical",
                                         "extract": {"scales_um": [56, 112], "k_neighbors": 4}})
    r = CliRunner().invoke(app, ["--config", str(cfg), "extract"])
    assert r.exit_code == 0, r.output
    opts = calls[-1]
    assert isinstance(opts, ExtractOptions)
    assert opts.samples == tmp_path / "slides" and opts.cache_dir == tmp_path / "feats"  # relative to the file
    assert opts.scales_um == [56.0, 112.0] and opts.k_neighbors == 4 and opts.encoder == "classical"
    assert opts.dtype == "float16"  # default
    r = CliRunner().invoke(app, ["--config", str(cfg), "extract", "--k-neighbors", "2", "--scales-um", "224"])
    assert r.exit_code == 0, r.output
    assert calls[-1].k_neighbors == 2 and calls[-1].scales_um == [224.0]
    resolved = yaml.safe_load((tmp_path / "feats" / "classical" / RESOLVED_CONFIG_NAME).read_text())
    assert resolved["extract"]["k_neighbors"] == 2 and resolved["extract"]["scales_um"] == [224.0]
    src = resolved["sources"]["extract"]
    assert src["k_neighbors"] == "cli" and src["samples"] == "config" and src["dtype"] == "default"
    assert "verbose" not in resolved["extract"]  # a CLI concern, not an option of the library
    assert resolved["config_file"] == str(cfg.resolve())


def test_resolved_config_reruns_the_same(tmp_path, calls):
    (tmp_path / "slides").mkdir()
    args = ["extract", str(tmp_path / "slides"), "--encoder", "classical", "--cache-dir", str(tmp_path / "c"),
            "--scales-um", "112,224", "--no-pretrained", "--shard", "1/2"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    first = calls[-1]
    assert first.pretrained is False and first.scales_um == [112.0, 224.0]
    resolved = tmp_path / "c" / "classical" / RESOLVED_CONFIG_NAME
    r2 = CliRunner().invoke(app, ["--config", str(resolved), "extract"])
    assert r2.exit_code == 0, r2.output
    assert calls[-1] == first
    again = yaml.safe_load(resolved.read_text())
    assert again["sources"]["extract"]["shard"] == "config"


def test_list_options_take_lists_or_commas(tmp_path):
    cfg = _write(tmp_path / "c.yaml", {"fit": {"head": "ridge,lgbm", "encoder": ["uni", "virchow2"],
                                               "scales_um": "112, 224", "head_params": {"lgbm": {"num_leaves": 7}}}})
    fit = validate(load_config(cfg), check_paths=False).values["fit"]
    assert fit["head"] == ["ridge", "lgbm"] and fit["encoder"] == ["uni", "virchow2"]
    assert fit["scales_um"] == [112.0, 224.0] and fit["head_params"] == {"lgbm": {"num_leaves": 7}}


@pytest.mark.parametrize(
    "doc, match",
    [
        ({"fit": {"genez": "hvg:5"}}, r"unknown key 'genez' in section 'fit'\. Did you mean genes\?.*allowed keys "
                                      r"for `stfeat fit`: cache_dir, conformal, encoder, genes, head,"),
        ({"fit": {"heads": ["ridge"]}}, r"key 'heads' in section 'fit' is now called 'head'.*--head"),
        ({"extract": {"scales": [112]}}, r"key 'scales' in section 'extract' is now called 'scales_um'"),
        ({"fit": {"out": "runs/x"}}, r"key 'out' in section 'fit' is now called 'out_dir'"),
        ({"extract": {"workers": 2}}, r"'workers' .* is now called 'num_workers'"),
        ({"data": "x"}, r"key 'data' at the top level is now called 'samples'"),
        ({"predict": {"grid": 50}}, r"'grid' in section 'predict' is now called 'grid_um'"),
        ({"fit": {"head": ["ridge", "xgboost"]}}, r"unknown head\(s\) \['xgboost'\].*choose from .*ridge"),
        ({"fit": {"transform": "sqrt"}}, r"'sqrt', which is not allowed.*one of: log1p_cp10k, cp10k"),
        ({"fit": {"split": "lopo:3"}}, r"key 'split' in section 'fit' has a bad value 'lopo:3'.*takes no argument"),
        ({"fit": {"genes": "top:5"}}, r"unknown gene rule 'top:5'"),
        ({"train": {"head": "x"}}, r"section 'train' is not an stfeat command.*extract, fit, predict"),
        ({"colour": "red"}, r"unknown top-level key 'colour'"),
        ({"extract": {"k_neighbors": "big"}}, r"key 'k_neighbors' in section 'extract' has a bad value 'big'"),
        ({"extract": {"k_neighbors": -1}}, r"k_neighbors must be at least 0"),
        ({"extract": {"k_neighbors": [1, 2]}}, r"takes one value"),
        ({"extract": {"shard": "4/4"}}, r"0-based"),
        ({"fit": ["genes", 1]}, r"section 'fit' must be a mapping"),
        ({"extract": {"samples": "nowhere"}}, r"key 'samples' in section 'extract' points to .*nowhere, which does "
                                              r"not exist"),
    ],
)
def test_bad_configs_name_key_file_and_fix(tmp_path, doc, match):
    cfg = _write(tmp_path / "bad.yaml", doc)
    with pytest.raises(InputError, match=match) as err:
        validate(load_config(cfg))
    assert err.value.path == cfg.resolve()
    assert "bad.yaml" in str(err.value)


def test_head_params_for_a_head_not_fitted(tmp_path):
    (tmp_path / "d").mkdir()
    cfg = _write(tmp_path / "c.yaml", {"samples": "d", "encoder": "classical",
                                       "fit": {"head": ["ridge"], "head_params": {"lgbm": {"num_leaves": 7}}}})
    with pytest.raises(InputError, match=r"c.yaml: section 'fit': head_params for heads \['lgbm'\]"):
        C.plan(cfg, steps=["fit"])


def test_yaml_syntax_and_shape_errors(tmp_path):
    bad = _write(tmp_path / "s.yaml", "fit:\n  genes: 1\n   head: [x\n")
    with pytest.raises(InputError, match=r"s.yaml: is not valid YAML at line \d+"):
        load_config(bad)
    with pytest.raises(InputError, match="must be a YAML mapping"):
        load_config(_write(tmp_path / "l.yaml", "- a\n- b\n"))
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_paths_resolve_relative_to_the_config_not_the_cwd(tmp_path, monkeypatch):
    sub = tmp_path / "configs"
    sub.mkdir()
    (tmp_path / "data" / "x").mkdir(parents=True)
    cfg = _write(sub / "c.yaml", {"extract": {"samples": "../data/x", "encoder": "classical"},
                                  "predict": {"encoder": "./my_weights.safetensors", "sample": "../data/x",
                                              "model_dir": "../runs/m"}})
    monkeypatch.chdir(tmp_path.parent)
    values = validate(load_config(cfg)).values
    assert values["extract"]["samples"] == (tmp_path / "data" / "x").resolve()
    assert values["extract"]["encoder"] == "classical"  # a registry name, not a path
    assert values["predict"]["encoder"] == str(sub / "my_weights.safetensors")  # looks like a path
    assert values["predict"]["model_dir"] == (tmp_path / "runs" / "m").resolve()  # an output: not checked


def test_real_cli_reports_config_errors_cleanly(tmp_path):
    cfg = _write(tmp_path / "oops.yaml", {"extract": {"encoderr": "classical"}})
    r = CliRunner().invoke(app, ["--config", str(cfg), "extract", "--help"])
    assert r.exit_code == 1
    assert "oops.yaml" in r.output and "unknown key 'encoderr'" in r.output and "Traceback" not in r.output


def test_save_resolved_config_needs_a_context_or_options(tmp_path):
    assert save_resolved_config(None, tmp_path) is None
    assert not (tmp_path / RESOLVED_CONFIG_NAME).exists()
    opts = FitOptions(samples=Path("d"), encoder=["uni"], head=["ridge"])
    path = save_resolved_config(None, tmp_path, options=opts, sources={"head": "config"})
    doc = yaml.safe_load(path.read_text())
    assert doc["command"] == "fit" and doc["fit"]["head"] == ["ridge"] and doc["fit"]["out_dir"] == "stfeat_fit"
    assert doc["sources"]["fit"]["head"] == "config" and doc["sources"]["fit"]["genes"] == "default"
    # The file is a config: it validates and gives back the same options.
    assert validate(load_config(path), check_paths=False).values["fit"]["head"] == ["ridge"]


def test_config_module_imports_neither_the_cli_nor_click():
    code = ("import sys, stfeat.config as c; c.validate(c.load_config(sys.argv[1]), check_paths=False); "
            "bad = [m for m in sys.modules if m.split('.')[0] in {'click', 'typer'} or m.startswith('stfeat.cli')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code, str(REPO / "configs" / "lightgbm.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.meta.get("description"), f"{path.name} should say what it is for"
    values = validate(cfg, check_paths=False).values  # their data is not in the repository
    assert values["fit"].get("samples") is not None and values["fit"].get("encoder")
    assert C.default_map(validate(cfg, check_paths=False))["fit"]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_head_params_are_valid(path):
    from stfeat.heads import make_head

    params = (yaml.safe_load(path.read_text()).get("fit") or {}).get("head_params") or {}
    for head, kw in params.items():
        make_head(head, **kw)  # raises on an unknown head or parameter


def test_run_dry_run_expands_encoders_and_names_missing_keys(tmp_path):
    (tmp_path / "hest_data").mkdir()
    cfg = tmp_path / "configs" / "hest_benchmark.yaml"
    cfg.parent.mkdir()
    shutil.copy(REPO / "configs" / "hest_benchmark.yaml", cfg)
    r = CliRunner().invoke(app, ["run", str(cfg), "--dry-run"])
    assert r.exit_code == 0, r.output
    # One extract per listed encoder, then one fit comparing them all; flags are the option names.
    assert r.output.count("stfeat extract") == 7 and r.output.count("stfeat fit") == 1
    assert f"stfeat extract {tmp_path / 'hest_data'} --encoder uni --scales-um 112" in r.output
    assert "--head hest-ridge" in r.output and "--split lopo" in r.output
    assert f"--out-dir {tmp_path / 'runs' / 'hest_benchmark'}" in r.output and "valid; 8 command(s)" in r.output
    steps = C.run(cfg, dry_run=True, echo=None)  # the library function: same plan, nothing runs
    assert [s.command for s in steps] == ["extract"] * 7 + ["fit"]
    assert steps[-1].options.encoder[-1] == "densenet121" and steps[0].options.scales_um == [112.0]
    assert not (tmp_path / "runs").exists()
    partial = _write(tmp_path / "partial.yaml", {"description": "no data", "encoder": "classical"})
    r = CliRunner().invoke(app, ["run", str(partial), "--dry-run"])
    assert r.exit_code == 1 and "section 'extract' lacks 'samples'" in r.output and "partial.yaml" in r.output
    r = CliRunner().invoke(app, ["run", str(partial), "--steps", "extract,train"])
    assert r.exit_code == 2 and "train" in r.output
    with pytest.raises(InputError, match="unknown step"):
        C.run(partial, steps=["train"], echo=None)


def test_config_run_on_the_synthetic_demo(demo_workspace, tmp_path):  # noqa: F811
    """stfeat.config.run(configs/synthetic.yaml) next to a demo run: extract (cached), fit, predict."""
    shutil.copytree(demo_workspace, tmp_path / "stfeat_demo", ignore=shutil.ignore_patterns("*.lock"))
    (tmp_path / "configs").mkdir()
    cfg = tmp_path / "configs" / "synthetic.yaml"
    doc = yaml.safe_load((REPO / "configs" / "synthetic.yaml").read_text())
    doc["fit"]["head"] = ["ridge"]  # one head keeps the test short; the README test runs the file as shipped
    doc["fit"]["plots"] = False
    doc["predict"]["plot"] = False
    cfg.write_text(yaml.safe_dump(doc))
    lines: list[str] = []
    steps = C.run(cfg, echo=lines.append)
    assert [s.command for s in steps] == ["extract", "fit", "predict"]
    ext, fit, pred = steps
    assert all(Path(p).is_file() for p in ext.result) and any("skipped" in line for line in lines)
    out = tmp_path / "runs" / "synthetic"
    assert fit.options.out_dir == out and fit.options.neighbor_mean is True
    comp = fit.result.comparison
    assert list(comp["head"]) == ["ridge"]
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["split"]["mode"] == "lopo" and on_disk["genes"]["rule"] == "hvg:50"
    # predict took the model fit wrote and the cache extract used
    assert pred.options.model_dir == out and pred.options.cache_dir == tmp_path / "stfeat_demo" / "cache"
    model = json.loads((out / "models" / "classical__ridge" / "model.json").read_text())
    assert list(pred.result.var_names) == model["genes"] and len(model["genes"]) == 50
    assert (tmp_path / "runs" / "synthetic_grid" / "SYN-P1-S1_grid.h5ad").is_file() and pred.result.n_obs > 0
    resolved = yaml.safe_load((out / RESOLVED_CONFIG_NAME).read_text())
    assert resolved["config_file"] == str(cfg.resolve())
    assert resolved["sources"]["fit"]["neighbor_mean"] == "config" and resolved["sources"]["fit"]["seed"] == "default"
    assert resolved["fit"]["head"] == ["ridge"]
    # The lines echoed are the equivalent commands, spelled with the option names.
    assert any(line.startswith("[2/3] stfeat fit ") and "--neighbor-mean" in line and "--out-dir" in line
               for line in lines)
    # Rerunning the config refits into the same folder (the prediction lives outside it).
    (again,) = C.run(cfg, steps=["fit"], echo=None)
    assert again.result.comparison.equals(comp)


@pytest.mark.realdata
def test_her2st_config_runs_on_shared_data(her2st, shared_weights, tmp_path):
    """configs/her2st.yaml, unchanged, on a cut-down view of ../shared/data/her2st (2 sections x 12 spots)."""
    from test_readme import make_mini_her2st

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
