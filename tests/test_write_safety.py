"""Issue 12 (hardening) of the writers: atomic writes never follow a planted link; a full disk or a file-size
limit during `fit` is a named error that leaves no output looking complete; kill -9 during `fit` leaves no mix
of runs; an existing resolved_config.yaml is read behind the nesting guard; the pickle opt-in names the real
CLI flag (`--allow-pickle`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import stfeat as st
from stfeat.errors import InputError
from test_fit_support import plant_pickled_head, toy_dataset, toy_sample, write_toy_disk

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
LAYOUT = (("A", 1), ("B", 1), ("C", 1))
N_SIDE = 6


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("write-safety")
    samples = toy_dataset(tmp / "cache", layout=LAYOUT, n_side=N_SIDE)
    return tmp / "cache", samples


def _victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim.txt"
    v.write_text("mine")
    return v


def _plant(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=target.is_dir())


def _ours_left(folder: Path) -> list[str]:
    """Temporary files or folders of stfeat's writers left in ``folder`` (hidden ``.NAME.PID.HEX.tmp``)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def _fit_report(samples, cache, out, genes):
    from stfeat.fitting import fit_report

    return fit_report(samples, encoder="toy", cache_dir=cache, head=["ridge"], genes=genes, out_dir=out, plots=False)


def _consistent(out: Path) -> list[str]:
    """The genes of a complete fit output, checked to be those of its own model (not another run's)."""
    metrics = json.loads((out / "metrics.json").read_text())
    genes = metrics["genes"]["final"]["genes"]
    assert st.Model.load(out).genes == genes
    return genes


# --------------------------------------------------------------------------------- planted links
def test_write_cache_never_writes_through_a_planted_link(tmp_path):
    from stfeat.cache import read_cache, write_cache

    victim = _victim(tmp_path)
    d = tmp_path / "cache"
    p = d / "S1.h5"
    _plant(d / "S1.h5.tmp", victim)  # the old, guessable temporary name
    _plant(p, victim)  # and the target itself
    write_cache(p, barcodes=np.array(["a", "b", "c"]), coords=np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]),
                features={112.0: np.ones((3, 4), np.float32)}, attrs={"encoder": "toy", "sample_id": "S1"},
                index=False)
    assert victim.read_text() == "mine"
    assert p.is_file() and not p.is_symlink() and read_cache(p).n_spots == 3
    assert (d / "S1.h5.tmp").is_symlink() and not _ours_left(d)


def test_model_and_head_saves_never_write_through_a_planted_link(toy, tmp_path):
    from stfeat.heads import save_head

    cache, samples = toy
    model = st.fit(st.FeatureSet.load(samples, encoder="toy", cache_dir=cache), head="ridge", genes="hvg:4")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    out = tmp_path / "model"
    _plant(tmp_path / "model.tmp", victim)  # the old fixed temporary folder
    _plant(out, victim)  # and the target
    model.save(out)
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"] and (victim / "keep.txt").read_text() == "mine"
    assert out.is_dir() and not out.is_symlink() and st.Model.load(out).genes == model.genes
    (out / "folds").mkdir()
    model.save(out)  # replaced whole; per-fold models saved earlier stay
    assert (out / "folds").is_dir() and st.Model.load(out).genes == model.genes
    head = tmp_path / "head"
    for name in ("head.tmp", "head.old"):  # the old fixed names of save_head
        _plant(tmp_path / name, victim)
    save_head(model.estimator, head)
    save_head(model.estimator, head)
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert (head / "head.json").is_file() and not _ours_left(tmp_path)


def test_synthetic_and_demo_writers_never_write_through_a_planted_link(tmp_path):
    from stfeat.datasets import make_synthetic_dataset
    from stfeat.demo import DemoResult, _write_summary

    victim = _victim(tmp_path)
    root = tmp_path / "syn"
    root.mkdir()
    (root / "SYNTHETIC.json").write_text("{}")  # a dataset of other parameters: regenerated in place
    sid = "SYN-P1-S1"
    targets = [root / "st" / f"{sid}.h5ad", root / "wsis" / f"{sid}.tif", root / "metadata" / f"{sid}.json",
               root / "manifest.csv"]
    for t in targets:
        _plant(t.with_name(t.name + ".tmp"), victim)
        _plant(t, victim)
    _plant(root / "SYNTHETIC.json.tmp", victim)
    ds = make_synthetic_dataset(root, n_patients=1, sections_per_patient=1, n_genes=60, size_um=(500.0, 500.0))
    assert victim.read_text() == "mine"
    assert all(t.is_file() and not t.is_symlink() for t in targets) and ds.sample_ids == [sid]
    import anndata as ad

    assert ad.read_h5ad(root / "st" / f"{sid}.h5ad").n_obs > 0
    res = DemoResult(out_dir=tmp_path, data=root, synthetic=True, cache_dir=tmp_path, fit_dir=tmp_path,
                     encoder="classical", scales_um=[112.0], heads=["ridge"])
    _plant(tmp_path / "demo_summary.json.tmp", victim)
    _plant(res.summary_path, victim)
    _write_summary(res)
    assert victim.read_text() == "mine" and json.loads(res.summary_path.read_text())["synthetic"] is True
    for d in (root, root / "st", root / "wsis", root / "metadata", tmp_path):
        assert not _ours_left(d), d


# --------------------------------------------------------------------------------- write failures
_FSIZE_CHILD = textwrap.dedent("""
    import json, os, resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing us
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    import stfeat as st
    from stfeat import _faults
    from stfeat.fitting import fit_report
    from test_fit_support import toy_sample

    cache, out = Path({cache!r}), Path({out!r})
    samples = [toy_sample(s, p, n_side={n_side})[0] for s, p in (("A1", "A"), ("B1", "B"), ("C1", "C"))]
    SOFT, HARD = resource.getrlimit(resource.RLIMIT_FSIZE)

    def attempt(limit, fn):
        n = len(_faults.ABANDONED)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, HARD))
        try:
            fn()
            r = {{"ok": True}}
        except Exception as exc:
            r = {{"type": type(exc).__name__, "path": str(getattr(exc, "path", "")), "msg": str(exc)}}
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (SOFT, HARD))
        r["abandoned"] = len(_faults.ABANDONED) > n
        r["listing"] = sorted(p.name for p in out.parent.iterdir())
        print("RESULT " + json.dumps(r), flush=True)

    def fit(genes):
        return lambda: fit_report(samples, encoder="toy", cache_dir=cache, head=["ridge"], genes=genes, out_dir=out,
                                  plots=False)

    attempt(3000, fit("hvg:7"))  # per_gene.csv (~5 kB) is past the limit
    attempt(8000, fit("hvg:7"))  # metrics.json (~12 kB)
    attempt(SOFT, fit("hvg:5"))  # a complete output
    attempt(20000, fit("hvg:7"))  # the held-out predictions (h5ad, ~60 kB), over the complete output
    model = st.fit(st.FeatureSet.load(samples, encoder="toy", cache_dir=cache), head="ridge", genes="hvg:5")
    attempt(1000, lambda: model.save(out.parent / "model"))  # arrays.safetensors (~2 kB): a SafetensorError
    sys.stdout.flush()
    os._exit(0)  # HDF5 may crash at exit after a failed write (stfeat._faults.ABANDONED; the CLI does the same)
""")


def test_a_file_size_limit_during_fit_is_named_and_leaves_no_output(toy, tmp_path):
    cache, _ = toy
    out = tmp_path / "runs" / "out"
    out.parent.mkdir()
    code = _FSIZE_CHILD.format(tests=str(TESTS), cache=str(cache), out=str(out), n_side=N_SIDE)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stdout[-3000:], r.stderr[-3000:])
    res = [json.loads(line[len("RESULT "):]) for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(res) == 5, r.stdout
    csv, mjson, ok, h5ad, save = res
    for x, name in ((csv, "per_gene.csv"), (mjson, "metrics.json")):
        assert x["type"] == "ResourceError" and x["path"] == str(out / name), x  # named as it would be in place
        assert "a file-size limit (ulimit -f) was reached" in x["msg"] and "ulimit -f unlimited" in x["msg"]
        assert x["listing"] == [], x  # no output folder, no temporary folder left
    assert ok == {"ok": True, "abandoned": False, "listing": ["out"]}
    assert h5ad["type"] == "ResourceError" and h5ad["path"] == str(out / "predictions" / "toy__ridge.h5ad"), h5ad
    assert h5ad["abandoned"] and h5ad["listing"] == ["out"]  # the CLI ends with os._exit (HDF5 may crash at exit)
    assert save["type"] == "ResourceError", save  # was: a raw SafetensorError
    assert save["path"] == str(out.parent / "model" / "head" / "arrays.safetensors"), save
    assert "SafetensorError" in save["msg"] and save["listing"] == ["out"]
    assert len(_consistent(out)) == 5  # the complete output of the run before the failures, untouched


def test_write_errors_of_model_save_and_save_head_are_named(toy, tmp_path, monkeypatch):
    import errno

    import safetensors.numpy

    from stfeat.errors import ResourceError

    cache, samples = toy
    model = st.fit(st.FeatureSet.load(samples, encoder="toy", cache_dir=cache), head="ridge", genes="hvg:4")
    model.save(tmp_path / "m")
    before = (tmp_path / "m" / "model.json").read_text()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    other = st.fit(st.FeatureSet.load(samples, encoder="toy", cache_dir=cache), head="ridge", genes="hvg:6")
    with pytest.raises(ResourceError, match="the disk is full") as e:
        other.save(tmp_path / "m")
    assert e.value.path == tmp_path / "m" / "head" / "arrays.safetensors" and "free disk space" in e.value.fix
    assert (tmp_path / "m" / "model.json").read_text() == before and not _ours_left(tmp_path)


# --------------------------------------------------------------------------------- kill -9
_KILL_CHILD = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from stfeat import _safe_write
    from stfeat.fitting import fit_report
    from test_fit_support import toy_sample

    cache, out, mode = Path({cache!r}), Path({out!r}), {mode!r}
    samples = [toy_sample(s, p, n_side={n_side})[0] for s, p in (("A1", "A"), ("B1", "B"), ("C1", "C"))]
    real_swap, real_replace = _safe_write.swap_in, os.replace

    def pause(word):
        print(word, flush=True)
        time.sleep(300)

    def swap_in(tmp, path):
        if mode == "before-swap" and Path(path) == out:
            pause("PAUSED")  # everything written under the temporary name, nothing swapped in yet
        return real_swap(tmp, path)

    def replace(src, dst):
        real_replace(src, dst)
        if mode == "mid-swap" and Path(src) == out:
            pause("PAUSED")  # the previous output moved aside, the new one not yet in place

    _safe_write.swap_in, os.replace = swap_in, replace
    fit_report(samples, encoder="toy", cache_dir=cache, head=["ridge"], genes="hvg:7", out_dir=out, plots=False)
    print("FINISHED", flush=True)
""")


def _kill_while_writing(cache: Path, out: Path, mode: str, logs: Path) -> None:
    code = _KILL_CHILD.format(tests=str(TESTS), cache=str(cache), out=str(out), mode=mode, n_side=N_SIDE)
    so, se = logs / f"{mode}.out", logs / f"{mode}.err"
    with open(so, "w") as fo, open(se, "w") as fe:
        p = subprocess.Popen([sys.executable, "-c", code], stdout=fo, stderr=fe, cwd=REPO)
    try:
        deadline = time.monotonic() + 240
        while "PAUSED" not in so.read_text():
            assert p.poll() is None, (p.returncode, so.read_text(), se.read_text()[-3000:])
            assert time.monotonic() < deadline, "the child never reached the swap-in"
            time.sleep(0.2)
        os.kill(p.pid, signal.SIGKILL)
        assert p.wait(timeout=30) == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_kill_9_during_fit_leaves_no_output_that_looks_complete(toy, tmp_path):
    cache, samples = toy
    runs = tmp_path / "runs"
    out = runs / "out"
    _fit_report(samples, cache, out, "hvg:5")
    before = (out / "metrics.json").read_text()
    assert len(_consistent(out)) == 5

    _kill_while_writing(cache, out, "before-swap", tmp_path)  # a refit with 7 genes, killed before its swap-in
    assert (out / "metrics.json").read_text() == before and len(_consistent(out)) == 5  # the old output, whole
    left = [p.name for p in runs.iterdir() if p.name != "out"]
    assert left and all(n.startswith(".out.") and n.endswith(".tmp") for n in left)  # hidden, never "out"

    _kill_while_writing(cache, out, "mid-swap", tmp_path)  # killed between moving the old output aside and the swap
    assert not out.exists()  # neither run is under the output's name: nothing looks complete
    assert all(p.name.startswith(".out.") and p.name.endswith(".tmp") for p in runs.iterdir())

    res = _fit_report(samples, cache, out, "hvg:7")  # a rerun succeeds
    assert res.out_dir == out and len(_consistent(out)) == 7
    assert [p.name for p in runs.iterdir()] == ["out"]  # and removed what the killed runs left (dead pids)


def test_stale_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    import subprocess as sp

    from stfeat import _safe_write as W

    target = tmp_path / "res.csv"
    dead = sp.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = W._host()
    stale = tmp_path / f".res.csv.{dead.pid}-{host}.0123abcd.tmp"
    stale.mkdir()
    (stale / "x").write_text("half-written")
    live = tmp_path / f".res.csv.{os.getppid()}-{host}.89abcdef.tmp"  # a running process's
    live.write_text("in progress")
    other_host = tmp_path / f".res.csv.{dead.pid}-ffffff.00000000.tmp"  # maybe alive elsewhere: kept a day
    other_host.write_text("elsewhere")
    old = tmp_path / ".res.csv.1-ffffff.11111111.tmp"
    old.write_text("ancient")
    os.utime(old, (time.time() - 2 * W.STALE_SECONDS,) * 2)
    unrelated = tmp_path / ".other.csv.1-ffffff.22222222.tmp"
    unrelated.write_text("not ours to judge")
    W.write_text(target, "a,b\n")
    assert target.read_text() == "a,b\n"
    assert not stale.exists() and not old.exists()
    assert live.exists() and other_host.exists() and unrelated.exists()


# --------------------------------------------------------------------------------- config and pickle
def test_a_deeply_nested_resolved_config_is_read_behind_the_guard(tmp_path):
    from stfeat.options import FitOptions
    from stfeat.resolved_config import save_resolved_config

    old = tmp_path / "resolved_config.yaml"
    old.write_text("stfeat_version: x\nfit: " + "[" * 10000 + "]" * 10000 + "\n")  # was: a RecursionError
    p = save_resolved_config(None, tmp_path, options=FitOptions(samples="data", encoder="toy"),
                             command="fit")
    assert p == old and "[[[" not in p.read_text() and "Rerun with" in p.read_text()


def test_predict_cli_runs_no_pickled_head_and_names_allow_pickle(toy, tmp_path):
    from typer.testing import CliRunner

    from stfeat.cli import app

    cache, samples = toy
    d = st.fit(st.FeatureSet.load(samples, encoder="toy", cache_dir=cache), head="ridge",
               genes="hvg:4").save(tmp_path / "evil")
    sentinel = tmp_path / "PWNED"
    plant_pickled_head(d, sentinel)
    manifest = write_toy_disk(tmp_path / "disk", [toy_sample("Q1", "Q", n_side=3)[0]])
    pred = tmp_path / "pred.h5ad"
    r = CliRunner().invoke(app, ["predict", str(d), str(manifest), "--out", str(pred), "--cache-dir",
                                 str(tmp_path / "c"), "--no-plot"])
    assert r.exit_code == 1, r.output
    assert r.output.startswith("error: ") and str(d / "head.joblib") in r.output
    assert "--allow-pickle" in r.output and "--trust-pickled-model" not in r.output
    assert not sentinel.exists() and not pred.exists()
    with pytest.raises(InputError, match="allow_pickle=True"):
        st.Model.load(d)
    assert not sentinel.exists()
