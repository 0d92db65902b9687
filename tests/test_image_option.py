"""``--image`` / config key ``image`` / ``image=``: the H&E of ONE sample for extract, fit and predict (issue 12),
and the README's input table, whose ``--image`` statements must name commands that take it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stfeat.cli import app
from test_fit_support import UM_PER_PX, toy_sample, write_toy_disk

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
COMMANDS_WITH_IMAGE = ("info", "extract", "fit", "predict")
FAST = ["-e", "classical", "--scales-um", "112", "--num-workers", "0", "--device", "cpu", "--k-neighbors", "4"]


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line(out: str) -> str:
    return " ".join(out.split())  # click and rich wrap long messages


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    """Two toy samples on disk (.h5ad + H&E); A1's H&E moved away, so A1.h5ad alone has no image."""
    root = tmp_path_factory.mktemp("image_option")
    samples = [toy_sample("A1", "A", n_side=7)[0], toy_sample("B1", "B", n_side=7)[0]]
    write_toy_disk(root / "data", samples)
    (root / "images").mkdir()
    he = root / "images" / "he_of_A1.jpg"
    shutil.move(root / "data" / "A1.jpg", he)
    one = root / "one.csv"  # one sample, no image column: the um/px every command needs for a bare .h5ad
    one.write_text(f"sample_id,patient,path,um_per_px\nA1,A,data/A1.h5ad,{UM_PER_PX}\n")
    two = root / "two.csv"  # two samples: what one --image cannot be the H&E of
    two.write_text(f"sample_id,patient,path,um_per_px\nA1,A,data/A1.h5ad,{UM_PER_PX}\nB1,B,data/B1.h5ad,{UM_PER_PX}\n")
    return {"root": root, "h5ad": root / "data" / "A1.h5ad", "image": he, "manifest": two, "one": one}


def test_without_image_the_h5ad_has_none(disk):
    import stfeat as st

    (s,) = st.read(disk["h5ad"], um_per_px=UM_PER_PX)
    assert s.slide is None
    (s,) = st.read(disk["h5ad"], um_per_px=UM_PER_PX, image=disk["image"])
    assert s.slide is not None and Path(s.slide.path) == disk["image"]


def test_cli_extract_with_image(disk, tmp_path):
    cache = tmp_path / "cache"
    r = _cli("extract", disk["h5ad"], "--image", disk["image"], "--um-per-px", UM_PER_PX, "--cache-dir", cache, *FAST)
    assert r.exit_code == 0, r.output
    assert (cache / "classical" / "A1.h5").is_file()
    assert "1 cache file(s)" in r.output
    # without --image the same sample cannot be extracted, and the error says why
    r = _cli("extract", disk["h5ad"], "--um-per-px", UM_PER_PX, "--cache-dir", tmp_path / "c2", *FAST)
    assert r.exit_code == 1 and "no H&E image" in _one_line(r.output), r.output


def test_python_extract_with_image(disk, tmp_path):
    import stfeat as st

    fs = st.extract(disk["h5ad"], image=disk["image"], um_per_px=UM_PER_PX, encoder="classical", scales_um=(112,),
                    cache_dir=tmp_path / "cache", num_workers=0, device="cpu", k_neighbors=4)
    assert list(fs.samples) == ["A1"] and fs.samples["A1"].n_spots == 49
    assert (tmp_path / "cache" / "classical" / "A1.h5").is_file()
    from stfeat.extraction import extract_caches

    (p,) = extract_caches(disk["one"], image=disk["image"], encoder="classical", scales_um=(112,),
                          cache_dir=tmp_path / "cache2", num_workers=0, device="cpu", k_neighbors=4)
    assert p.is_file() and p.name == "A1.h5"


def test_extract_fit_predict_one_sample_with_image(disk, tmp_path):
    """The whole CLI on one .h5ad whose image is given with --image (a one-row manifest gives the um/px)."""
    cache, out = tmp_path / "cache", tmp_path / "fit"
    r = _cli("extract", disk["one"], "--image", disk["image"], "--cache-dir", cache, *FAST)
    assert r.exit_code == 0, r.output
    r = _cli("fit", disk["one"], "-e", "classical", "--image", disk["image"], "--cache-dir", cache, "--out-dir", out,
             "--genes", "hvg:5", "--split", "block:2", "--no-plots", "--conformal", "0")
    assert r.exit_code == 0, r.output
    pred = tmp_path / "pred.h5ad"
    r = _cli("predict", out, disk["one"], "--image", disk["image"], "--cache-dir", cache, "-o", pred, "--no-plot")
    assert r.exit_code == 0, r.output
    import anndata as ad

    a = ad.read_h5ad(pred)
    assert a.n_obs == 49 and a.uns["stfeat"]["sample_id"] == "A1"
    # several samples + --image is refused by predict too (the model exists, so the sample is what fails)
    r = _cli("predict", out, disk["manifest"], "--image", disk["image"], "--cache-dir", cache, "-o", pred)
    assert r.exit_code == 1 and "2 samples" in _one_line(r.output), r.output


@pytest.mark.parametrize("command", ["extract", "fit"])
def test_several_samples_and_image_is_a_named_error(disk, tmp_path, command):
    extra = FAST if command == "extract" else ["-e", "classical"]
    r = _cli(command, disk["manifest"], "--image", disk["image"], "--cache-dir", tmp_path / "cache", *extra)
    out = _one_line(r.output)
    assert r.exit_code == 1, r.output
    assert "--image" in out and "2 samples (A1, B1)" in out and "two.csv" in out
    assert "--sample-id" in out and "`image` column" in out
    assert "internal error" not in out


def test_several_samples_and_image_in_python(disk, tmp_path):
    import stfeat as st
    from stfeat.errors import InputError

    with pytest.raises(InputError, match=r"2 samples \(A1, B1\).*image. column"):
        st.extract(disk["manifest"], image=disk["image"], encoder="classical", cache_dir=tmp_path)
    with pytest.raises(InputError, match="2 samples"):
        st.read(disk["manifest"], image=disk["image"])
    (s,) = st.read(disk["one"])
    with pytest.raises(InputError, match="already read"):
        st.extract([s], image=disk["image"], encoder="classical", cache_dir=tmp_path)


@pytest.mark.parametrize("command", ["extract", "fit", "info"])
def test_missing_image_file_is_a_named_error(disk, tmp_path, command):
    missing = tmp_path / "no_such_he.png"
    extra = {"extract": FAST, "fit": ["-e", "classical"], "info": []}[command]
    args = [command, disk["one"], "--image", missing, *extra]
    if command != "info":
        args += ["--cache-dir", tmp_path / "cache"]
    r = _cli(*args)
    out = _one_line(r.output)
    assert r.exit_code == 1, r.output
    assert "no_such_he.png" in out and "does not exist" in out and "internal error" not in out


def test_missing_image_in_python_names_the_path(disk, tmp_path):
    import stfeat as st
    from stfeat.errors import InputError

    missing = tmp_path / "gone.tif"
    with pytest.raises(InputError, match="gone.tif.*does not exist") as e:
        st.extract(disk["h5ad"], image=missing, um_per_px=UM_PER_PX, encoder="classical", cache_dir=tmp_path)
    assert e.value.path == missing


def test_config_key_image(disk, tmp_path):
    """The config key is `image` (relative to the config's folder); a shared one is for extract and fit."""
    from stfeat.config import load_config, validate
    from stfeat.errors import InputError

    rel = Path("..") / disk["image"].relative_to(disk["root"])  # resolved against the config's folder
    cfg = disk["root"] / "cfgs" / "c.yaml"
    cfg.parent.mkdir(exist_ok=True)
    cfg.write_text(yaml.safe_dump({"encoder": "classical", "image": str(rel),
                                   "extract": {"samples": str(disk["one"])},
                                   "fit": {"samples": str(disk["one"])},
                                   "predict": {"sample": str(disk["one"]), "model_dir": str(tmp_path)}}))
    res = validate(load_config(cfg))
    assert Path(res.values["extract"]["image"]).resolve() == disk["image"].resolve() \
        == Path(res.values["fit"]["image"]).resolve()
    assert "image" not in res.values["predict"]  # predict's sample is often another one: it takes its own
    cfg.write_text(yaml.safe_dump({"extract": {"samples": str(disk["one"]), "encoder": "classical",
                                               "image": "missing_he.png"}}))
    with pytest.raises(InputError, match=r"image.*missing_he.png.*does not exist"):
        validate(load_config(cfg))


# ------------------------------------------------------------------------------------------ README


def _help_has(command: str, flag: str) -> bool:
    r = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", r.output) is not None


_NAMED = re.compile(r"`(--[\w-]+)` of `stfeat (\w+)`((?:/`\w+`)*)")


def _readme_flag_claims() -> list[tuple[str, str, str]]:
    """(line, flag, command) for every flag the README's input table (and any line naming --image) states."""
    claims = []
    for line in (REPO / "README.md").read_text().splitlines():
        if "`--image`" not in line:
            continue
        for m in _NAMED.finditer(line):
            for cmd in [m[2], *re.findall(r"`(\w+)`", m[3] or "")]:
                claims.append((line, m[1], cmd))
        rest = _NAMED.sub("", line)
        if "`--image`" in rest:  # --image named without commands: every command that reads a sample takes it
            claims += [(line, "--image", c) for c in COMMANDS_WITH_IMAGE]
    return claims


def test_readme_image_mentions_are_accepted_by_the_named_commands():
    claims = _readme_flag_claims()
    assert len({c for _, f, c in claims if f == "--image"}) == 4, claims  # the table names all four commands
    for line, flag, cmd in claims:
        assert _help_has(cmd, flag), f"README says `stfeat {cmd} {flag}`, which --help does not list:\n{line}"


def test_readme_input_table_rows_with_image():
    text = (REPO / "README.md").read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("|") and "`--image`" in ln]
    kinds = {ln.split("|")[1].strip() for ln in rows}
    assert {"Space Ranger `outs/` (Visium v1/v2)", "Space Ranger `outs/` (Visium HD)", "AnnData `.h5ad`"} <= kinds
    for ln in rows:  # each says how several samples get their images
        assert "manifest's `image`" in ln, ln


def test_image_is_one_name_everywhere():
    import inspect

    from stfeat import options as O
    from stfeat.extraction import extract, extract_caches
    from stfeat.fitting import fit_report
    from stfeat.prediction import predict

    for cls in (O.ExtractOptions, O.FitOptions, O.PredictOptions):
        assert "image" in O.fields_of(cls) and O.flag("image") == "--image"
    for fn in (extract, extract_caches, fit_report, predict):
        assert "image" in inspect.signature(fn).parameters, fn.__name__
