"""Every command in README.md runs, the setup commands agree with CI, the encoder table matches the registry.

Shell blocks are marked with an HTML comment on the line before them::

    <!-- readme-test: KIND -->
    ```bash
    ...
    ```

KIND is ``setup-demo`` (the first command: ``stfeat demo`` runs, with ``$STFEAT_DEMO_QUICK=1``),
``setup-test`` (must be the command .ci/run runs), ``install`` (pip extras must exist),
``synthetic`` (run verbatim in a sandbox holding ``stfeat_demo/`` from a demo run and a copy of
``configs/``) or ``her2st`` (run verbatim in a sandbox where ``her2st/`` is a cut-down view of
../shared/data/her2st, a few spots per section, and ``weights/`` is ../shared/weights).

``python tests/test_readme.py --write`` regenerates the encoder table from the registry.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_demo import demo_workspace  # noqa: F401  (session fixture shared with tests/test_demo.py)

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
KINDS = {"setup-demo", "setup-test", "install", "synthetic", "her2st"}
_BLOCK = re.compile(r"(?:<!-- readme-test: (?P<kind>[\w-]+) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)
TABLE_BEGIN = "<!-- encoders:begin"
TABLE_END = "<!-- encoders:end -->"


def blocks(text: str | None = None) -> list[tuple[str | None, str, str]]:
    """(kind, language, body) of every fenced block, in document order."""
    text = README.read_text() if text is None else text
    return [(m["kind"], m["lang"], m["body"]) for m in _BLOCK.finditer(text)]


def commands(kind: str) -> list[str]:
    return [line for k, _, body in blocks() if k == kind for line in body.strip().splitlines()]


def encoder_table() -> str:
    """The README's encoder table, generated from :func:`stfeat.encoders.list_encoders`."""
    from stfeat.encoders import list_encoders

    rows = ["| name | family | input | trained at | dim | gated | license | weights from |",
            "|---|---|---|---|---|---|---|---|"]
    for s in list_encoders():
        um = "any (ImageNet)" if s.um_per_px is None else f"{s.um_per_px:g} um/px"
        hub = f"`{s.hub_id}`" if s.hub_id else "none needed"
        rows.append(f"| `{s.name}` | {s.family} | {s.input_px} px | {um} | {s.embed_dim} | "
                    f"{'yes' if s.gated else 'no'} | {s.license} | {hub} |")
    return "\n".join(rows)


def _table_in(text: str) -> str:
    start = text.index(TABLE_BEGIN)
    start = text.index("\n", start) + 1
    return text[start : text.index(TABLE_END)].strip()


def write_table() -> None:
    text = README.read_text()
    start = text.index("\n", text.index(TABLE_BEGIN)) + 1
    end = text.index(TABLE_END)
    new = text[:start] + encoder_table() + "\n" + text[end:]
    tmp = README.with_name(README.name + ".tmp")
    tmp.write_text(new)
    os.replace(tmp, README)


# ----------------------------------------------------------------------------- static checks


def test_every_shell_block_is_marked_and_known():
    shell = [(k, body) for k, lang, body in blocks() if lang in {"bash", "sh", "shell", "console"}]
    assert len(shell) >= 8
    for kind, body in shell:
        assert kind in KINDS, f"unmarked or unknown shell block in README.md:\n{body}"


def test_first_command_is_install_then_demo():
    first = next(body for k, lang, body in blocks() if lang == "bash")
    assert first.strip() == "pip install -e . && stfeat demo"
    assert commands("setup-demo") == ["pip install -e . && stfeat demo"]


def test_test_command_is_the_one_ci_runs():
    (readme_cmd,) = commands("setup-test")
    assert readme_cmd == 'pip install -e ".[dev]" && python -m pytest -q -n 2'
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
          if "pytest" in line and not line.lstrip().startswith("#")]
    assert len(ci) == 1

    def norm(cmd: str) -> list[str]:
        # CI adds quiet/reporting flags only: pip's -q and pytest's --durations=N.
        return [w for w in shlex.split(cmd) if w != "-q" and not w.startswith("--durations")]

    assert norm(ci[0]) == norm(readme_cmd)


def test_install_commands_name_real_extras():
    import tomllib

    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    cmds = commands("install") + [c for c in commands("setup-test")]
    assert cmds
    for cmd in cmds:
        m = re.match(r'pip install -e (\.|"\.\[(?P<extras>[\w,-]+)\]")( &&|$)', cmd)
        assert m, f"unexpected install command: {cmd}"
        for extra in (m["extras"] or "").split(","):
            assert not extra or extra in extras, f"{cmd}: no extra {extra!r} in pyproject.toml"


def test_encoder_table_matches_the_registry():
    assert _table_in(README.read_text()) == encoder_table(), (
        "README encoder table is stale: run `python tests/test_readme.py --write`")


def test_readme_names_the_configs_and_notebooks_that_exist():
    text = README.read_text()
    for cfg in (REPO / "configs").glob("*.yaml"):
        assert cfg.name in text, f"README does not mention configs/{cfg.name}"
    for nb in (REPO / "notebooks").glob("*.ipynb"):
        assert nb.stem in text, f"README does not mention notebooks/{nb.name}"


# ----------------------------------------------------------------------------- running the commands


def _env(sandbox: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update({"STFEAT_DEMO_QUICK": "1", "HF_HUB_OFFLINE": "1", "STFEAT_CACHE_DIR": str(sandbox / ".stfeat"),
                "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2")})
    env.pop("STFEAT_WEIGHTS_DIR", None)
    return env


_ENV_WORD = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")


def _in_process(cmd: str, sandbox: Path) -> str | None:
    """Run a plain ``[VAR=value ...] stfeat ARGS`` line with CliRunner (no interpreter start-up per
    command); return None for anything needing a shell (pipes, redirects, &&, torchrun, ...)."""
    if any(ch in cmd for ch in "|><;&$`") or "\\" in cmd:
        return None
    words = shlex.split(cmd)
    env = {}
    while words and _ENV_WORD.match(words[0]):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    if not words or words[0] != "stfeat":
        return None
    from typer.testing import CliRunner

    from stfeat.cli import app

    full = _env(sandbox)
    full.update(env)
    old_cwd = Path.cwd()
    os.chdir(sandbox)
    try:
        r = CliRunner().invoke(app, words[1:], env={k: v for k, v in full.items() if k.startswith(("STFEAT_", "HF_"))}
                               | {"STFEAT_WEIGHTS_DIR": env.get("STFEAT_WEIGHTS_DIR")})
    finally:
        os.chdir(old_cwd)
    if r.exit_code != 0:
        import traceback

        tb = "".join(traceback.format_exception(r.exception)) if r.exception and not isinstance(
            r.exception, SystemExit) else ""
        pytest.fail(f"README command failed ({r.exit_code}): {cmd}\n{r.output[-3000:]}\n{tb[-3000:]}")
    return r.output


def _run(cmd: str, sandbox: Path, timeout: int = 300, *, shell: bool = False) -> str:
    """Run one README line in ``sandbox``: in-process when it is a plain `stfeat` call, else with bash."""
    if not shell:
        out = _in_process(cmd, sandbox)
        if out is not None:
            return out
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=sandbox, env=_env(sandbox),
                       capture_output=True, text=True, timeout=timeout)
    out = r.stdout + r.stderr
    if r.returncode != 0:
        errors = "\n".join(line for line in out.splitlines() if "rror" in line or "Traceback" in line)
        pytest.fail(f"README command failed ({r.returncode}): {cmd}\n{errors[-4000:]}\n--- tail ---\n{out[-3000:]}")
    return out


def _sandbox_with_demo(tmp_path: Path, demo: Path) -> Path:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    shutil.copytree(demo, sandbox / "stfeat_demo", ignore=shutil.ignore_patterns("*.lock"))
    shutil.copytree(REPO / "configs", sandbox / "configs")
    return sandbox


def test_setup_demo_command_runs(demo_workspace, tmp_path):  # noqa: F811
    """`stfeat demo` through the installed console script (pip install is what CI already did)."""
    sandbox = _sandbox_with_demo(tmp_path, demo_workspace)
    (cmd,) = commands("setup-demo")
    demo_part = cmd.split("&&", 1)[1].strip()
    out = _run(demo_part, sandbox, shell=True)  # through the installed console script
    assert "SYNTHETIC DATA" in out and "Next, on real data:" in out
    assert (sandbox / "stfeat_demo" / "demo_summary.json").is_file()


def test_synthetic_commands_run(demo_workspace, tmp_path):  # noqa: F811
    sandbox = _sandbox_with_demo(tmp_path, demo_workspace)
    cmds = commands("synthetic")
    assert any(c.startswith("stfeat run configs/") for c in cmds)
    outputs = {c: _run(c, sandbox) for c in cmds}
    assert (sandbox / "runs" / "synthetic" / "metrics.json").is_file()
    assert (sandbox / "runs" / "synthetic_grid" / "SYN-P1-S1_grid.h5ad").is_file()
    assert (sandbox / "runs" / "ridge_only" / "resolved_config.yaml").is_file()
    resolved = (sandbox / "runs" / "ridge_only" / "resolved_config.yaml").read_text()
    assert "head: cli" in resolved and "neighbor_mean: config" in resolved
    dry = next(o for c, o in outputs.items() if "--dry-run" in c)
    assert "valid;" in dry
    assert len(list((sandbox / "cache_ddp" / "classical").glob("*.h5"))) == 3
    assert len(list((sandbox / "cache_array" / "classical").glob("*.h5"))) == 3


def make_mini_her2st(her2st: Path, root: Path, sections=("C2", "C3"), n_spots: int = 16) -> Path:
    """A HER2ST-layout folder with a compact patch of ``n_spots`` spots per section (real counts and
    images, symlinked; only the spot files are cut down)."""
    import numpy as np
    import pandas as pd

    for sid in sections:
        for sub in ("ST-cnts", "ST-spotfiles", f"ST-imgs/C/{sid}"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "ST-cnts" / f"{sid}.tsv.gz").symlink_to(her2st / "ST-cnts" / f"{sid}.tsv.gz")
        img = next((her2st / "ST-imgs" / "C" / sid).glob("*.jpg"))
        (root / "ST-imgs" / "C" / sid / img.name).symlink_to(img)
        spots = pd.read_csv(her2st / "ST-spotfiles" / f"{sid}_selection.tsv", sep="\t")
        xy = spots[["pixel_x", "pixel_y"]].to_numpy(float)
        centre = np.argmin(np.linalg.norm(xy - np.median(xy, axis=0), axis=1))
        keep = np.sort(np.argsort(np.linalg.norm(xy - xy[centre], axis=1))[:n_spots])
        spots.iloc[keep].to_csv(root / "ST-spotfiles" / f"{sid}_selection.tsv", sep="\t", index=False)
    return root


@pytest.fixture
def her2st_sandbox(her2st, shared_weights, tmp_path) -> Path:
    """her2st/: sections C2 and C3 cut to 16 spots each; weights/: ../shared/weights."""
    sandbox = tmp_path / "sandbox"
    make_mini_her2st(her2st, sandbox / "her2st")
    (sandbox / "weights").symlink_to(shared_weights)
    return sandbox


@pytest.mark.realdata
def test_her2st_commands_run(her2st_sandbox):
    out = "\n".join(_run(c, her2st_sandbox) for c in commands("her2st"))
    assert "legacy" in out.lower() and "C2" in out and "C3" in out
    assert "loso" in out  # one patient: leave one section out, said loudly
    fit = her2st_sandbox / "runs" / "densenet121"
    assert (fit / "metrics.json").is_file() and (fit / "resolved_config.yaml").is_file()
    assert (her2st_sandbox / "C2_predicted.h5ad").is_file()
    assert sorted(p.name for p in (her2st_sandbox / "cache" / "densenet121").glob("*.h5")) == ["C2.h5", "C3.h5"]


if __name__ == "__main__":
    if "--write" in sys.argv:
        write_table()
        print(f"updated the encoder table in {README}")
    else:
        print(encoder_table())
