"""A seeded fuzzer of stfeat's readers over mutated real files: every outcome must be a result or an InputError.

Small real inputs are cut from ../shared/data (HER2ST C2: 40 spots x 300 genes and a 768 px crop of its
JPEG; the Visium Space Ranger fixture; the squidpy h5ad; a manifest and the configs in configs/), then
each case replaces ONE file with a mutated version: random byte flips, truncation, inserted garbage,
gzip damage, fields replaced by 1e300 / NaN / text / empty, headers declaring huge images, deep YAML.
A case is read the way ``stfeat info`` / ``extract`` read it (``read_sample``, a decode and a crop of
the image; ``read_manifest`` and loading its samples; ``load_config``). Anything but success,
warnings or :class:`~stfeat.errors.StfeatError` is a raw traceback and is reported.

Used by tests/test_fuzz.py (320 cases in CI); run by hand for more::

    PYTHONPATH=. python tests/fuzz_inputs.py --cases 2000 --seed 7
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import shutil
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VALUES = ["1e300", "nan", "NaN", "-1", "abc", "", "inf", "-inf", "1e40", "0", "\x00", "1.5", "2147483648",
          "\u00e9", "\ufeff", "0x10", " ", "1,2", '"', "-0", "1e-300"]


@dataclass
class Outcome:
    ok: int = 0
    named: int = 0
    raw: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.ok + self.named + len(self.raw)


# ------------------------------------------------------------------------------------- corpus from real files
def build_corpus(shared: Path, out: Path) -> dict[str, Path]:
    """Small real inputs under ``out``; returns the sample roots by kind."""
    import pandas as pd
    from PIL import Image

    her2st = shared / "her2st"
    leg = out / "legacy"
    for d in ("ST-cnts", "ST-spotfiles", "ST-imgs/C/C2"):
        (leg / d).mkdir(parents=True, exist_ok=True)
    spots = pd.read_csv(her2st / "ST-spotfiles" / "C2_selection.tsv", sep="\t")
    # 40 spots of one corner; pixel positions shifted into a 768 px crop of the slide
    spots = spots.sort_values(["y", "x"]).head(40).copy()
    x0, y0 = int(spots.pixel_x.min()) - 150, int(spots.pixel_y.min()) - 150
    with Image.open(next((her2st / "ST-imgs" / "C" / "C2").glob("*.jpg"))) as im:
        w = int(spots.pixel_x.max() - x0 + 150)
        h = int(spots.pixel_y.max() - y0 + 150)
        crop = im.crop((x0, y0, x0 + w, y0 + h)).convert("RGB")
        crop.thumbnail((768, 768))
        s = crop.size[0] / w
        crop.save(leg / "ST-imgs" / "C" / "C2" / "HE_C2.jpg", quality=85)
    spots["pixel_x"] = (spots.pixel_x - x0) * s
    spots["pixel_y"] = (spots.pixel_y - y0) * s
    spots.to_csv(leg / "ST-spotfiles" / "C2_selection.tsv", sep="\t", index=False)
    keys = set(spots.x.astype(str) + "x" + spots.y.astype(str))
    counts = pd.read_csv(her2st / "ST-cnts" / "C2.tsv.gz", sep="\t", index_col=0)
    counts = counts.loc[[k for k in counts.index if k in keys]].iloc[:, :300]
    counts.to_csv(leg / "ST-cnts" / "C2.tsv.gz", sep="\t")

    vis = out / "visium"
    shutil.copytree(shared / "fixtures" / "visium_spaceranger_v1", vis)
    sq = out / "h5ad"
    sq.mkdir()
    shutil.copy(shared / "fixtures" / "squidpy_visium" / "test_data.h5ad", sq / "test_data.h5ad")
    shutil.copy(shared / "fixtures" / "squidpy_visium" / "test_img.jpg", sq / "test_data.jpg")
    (sq / "test_data.json").write_text('{"um_per_px": 0.73}')

    (out / "manifest.csv").write_text("sample_id,patient,path,um_per_px\nC2,C,legacy,\nV1,V,visium,0.72\n")
    (out / "manifest.yaml").write_text("samples:\n  - {sample_id: C2, patient: C, path: legacy}\n"
                                       "  - {sample_id: V1, patient: V, path: visium, um_per_px: 0.72}\n")
    cfgs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    for c in cfgs:
        shutil.copy(c, out / f"config_{c.name}")
    return {"legacy": leg, "visium": vis, "h5ad": sq, "root": out}


# ------------------------------------------------------------------------------------- mutations
def _bytes_mutation(b: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(b)
    op = rng.integers(6)
    n = len(b)
    if n == 0:
        return bytes(rng.integers(0, 256, 64, dtype=np.uint8))
    if op == 0:  # flip some bytes
        for i in rng.integers(0, n, size=int(rng.integers(1, 20))):
            b[i] = int(rng.integers(256))
    elif op == 1:  # truncate
        b = b[: int(rng.integers(0, n))]
    elif op == 2:  # insert garbage
        i = int(rng.integers(0, n))
        b[i:i] = bytes(rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8))
    elif op == 3:  # zero a range
        i = int(rng.integers(0, n))
        j = min(n, i + int(rng.integers(1, 4096)))
        b[i:j] = b"\0" * (j - i)
    elif op == 4:  # duplicate a chunk
        i = int(rng.integers(0, n))
        j = min(n, i + int(rng.integers(1, 2048)))
        b[j:j] = b[i:j]
    else:  # replaced by garbage
        b = bytearray(rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8))
    return bytes(b)


def _text_mutation(text: str, rng: np.random.Generator, sep: str) -> str:
    lines = text.splitlines()
    if not lines:
        return "x"
    op = rng.integers(7)
    if op <= 2:  # a field replaced
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(0, len(lines)))
            cells = lines[i].split(sep)
            cells[int(rng.integers(0, len(cells)))] = str(rng.choice(VALUES))
            lines[i] = sep.join(cells)
    elif op == 3:  # a column dropped
        k = int(rng.integers(0, max(1, len(lines[0].split(sep)))))
        lines = [sep.join(c for j, c in enumerate(ln.split(sep)) if j != k) for ln in lines]
    elif op == 4:  # header renamed / BOM
        lines[0] = ("\ufeff" + lines[0]) if rng.random() < 0.5 else lines[0].upper()
    elif op == 5:  # rows dropped or duplicated
        i = int(rng.integers(0, len(lines)))
        lines = lines[:i] + (lines[i:i + 1] * 2 if rng.random() < 0.5 else []) + lines[i + 1:]
    else:  # empty or one line
        lines = [] if rng.random() < 0.5 else lines[:1]
    return "\n".join(lines) + ("\n" if lines else "")


def _image_header(b: bytes, rng: np.random.Generator, png: bool) -> bytes:
    import struct
    import zlib

    w, h = (int(rng.choice([65500, 40000, 1, 0, 30000])), int(rng.choice([65500, 40000, 1, 0, 30000])))
    b = bytearray(b)
    if png:
        b[16:24] = struct.pack(">II", w, h)
        if rng.random() < 0.8:
            b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    else:
        i = b.find(b"\xff\xc0")
        if i < 0:
            i = b.find(b"\xff\xc2")
        if i >= 0:
            b[i + 5:i + 9] = struct.pack(">HH", h, w)
    return bytes(b)


def _json_mutation(text: str, rng: np.random.Generator) -> str:
    import json

    try:
        d = json.loads(text)
    except ValueError:
        return text[: len(text) // 2]
    k = str(rng.choice(sorted(d)))
    d[k] = [0, -89.4, None, "abc", 1e300, [], float("nan")][int(rng.integers(7))]
    return json.dumps(d)


# ------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    name: str
    kind: str  # "sample" | "manifest" | "config"
    target: Path  # file replaced in the copy
    data: bytes
    read: str  # path (relative to the case root) handed to the reader
    crop: bool = False


def make_cases(corpus: dict[str, Path], n: int, seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    root = corpus["root"]
    leg, vis, sq = corpus["legacy"], corpus["visium"], corpus["h5ad"]
    files = {
        "counts_gz": (leg / "ST-cnts" / "C2.tsv.gz", "legacy", 0.16),
        "spots": (leg / "ST-spotfiles" / "C2_selection.tsv", "legacy", 0.16),
        "jpeg": (leg / "ST-imgs" / "C" / "C2" / "HE_C2.jpg", "legacy", 0.12),
        "positions": (vis / "spatial" / "tissue_positions_list.csv", "visium", 0.1),
        "scalefactors": (vis / "spatial" / "scalefactors_json.json", "visium", 0.06),
        "h5": (vis / "filtered_feature_bc_matrix.h5", "visium", 0.06),
        "png": (vis / "spatial" / "tissue_hires_image.png", "visium", 0.04),
        "h5ad": (sq / "test_data.h5ad", "h5ad/test_data.h5ad", 0.06),
        "h5ad_img": (sq / "test_data.jpg", "h5ad/test_data.h5ad", 0.03),
        "manifest_csv": (root / "manifest.csv", "manifest.csv", 0.08),
        "manifest_yaml": (root / "manifest.yaml", "manifest.yaml", 0.05),
        "config": (None, "", 0.08),
    }
    names = list(files)
    p = np.array([files[k][2] for k in names])
    configs = sorted(root.glob("config_*.yaml"))
    out = []
    for i in range(n):
        kind = names[int(rng.choice(len(names), p=p / p.sum()))]
        path, read, _ = files[kind]
        if kind == "config":
            path = configs[int(rng.integers(len(configs)))]
            read = path.name
        raw = path.read_bytes()
        if kind == "counts_gz":
            if rng.random() < 0.5:
                data = _bytes_mutation(raw, rng)  # damaged gzip stream
            else:
                text = gzip.decompress(raw).decode()
                data = gzip.compress(_text_mutation(text, rng, "\t").encode())
        elif kind in ("spots", "positions", "manifest_csv"):
            sep = "\t" if kind == "spots" else ","
            data = (_text_mutation(raw.decode(), rng, sep).encode() if rng.random() < 0.7
                    else _bytes_mutation(raw, rng))
        elif kind in ("jpeg", "png", "h5ad_img"):
            data = (_image_header(raw, rng, png=kind == "png") if rng.random() < 0.3
                    else _bytes_mutation(raw, rng))
        elif kind == "scalefactors":
            data = _json_mutation(raw.decode(), rng).encode() if rng.random() < 0.6 else _bytes_mutation(raw, rng)
        elif kind in ("manifest_yaml", "config"):
            r = rng.random()
            if r < 0.15:
                depth = int(rng.choice([100, 10_000]))
                data = (b"fit: " if kind == "config" else b"samples: ") + b"[" * depth + b"]" * depth + b"\n"
            elif r < 0.6:
                data = _text_mutation(raw.decode(), rng, ":").encode()
            else:
                data = _bytes_mutation(raw, rng)
        elif kind == "h5ad":
            # Known limit, left to libhdf5: a byte flip inside an h5ad's string heap can make HDF5 spin for
            # minutes while anndata reads it (seed 2, case 161). Mutations here damage the header, cut the
            # file or replace it, which stfeat must name.
            r = rng.random()
            if r < 0.4:
                b = bytearray(raw)
                for i in rng.integers(0, 512, size=int(rng.integers(1, 8))):
                    b[i] = int(rng.integers(256))
                data = bytes(b)
            elif r < 0.8:
                data = raw[: int(rng.integers(0, len(raw)))]
            else:
                data = bytes(rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8))
        else:  # binary containers
            data = _bytes_mutation(raw, rng)
        case_kind = "manifest" if kind.startswith("manifest") else "config" if kind == "config" else "sample"
        out.append(Case(f"{i:04d}-{kind}", case_kind, path.relative_to(root), data, read,
                        crop=kind in ("jpeg", "png", "h5ad_img")))
    return out


def _materialise(corpus_root: Path, case: Case, where: Path) -> Path:
    """A copy of the corpus made of symlinks, with the case's file replaced (real, mutated bytes)."""
    if where.exists():
        shutil.rmtree(where)
    for dirpath, _, filenames in os.walk(corpus_root):
        rel = Path(dirpath).relative_to(corpus_root)
        (where / rel).mkdir(parents=True, exist_ok=True)
        for fn in filenames:
            src = Path(dirpath) / fn
            dst = where / rel / fn
            if rel / fn == case.target:
                dst.write_bytes(case.data)
            else:
                dst.symlink_to(src)
    return where


def run_case(case: Case, root: Path) -> None:
    """Read a case the way the CLI does; raises whatever the reader raises."""
    from stfeat.config import load_config
    from stfeat.io import read_manifest, read_sample

    target = root / case.read
    if case.kind == "config":
        load_config(target)
        return
    if case.kind == "manifest":
        for ref in read_manifest(target):
            ref.load()
        return
    kw = {"image": root / "h5ad" / "test_data.jpg"} if case.read.startswith("h5ad") else {}
    s = read_sample(target, **kw)
    if case.crop and s.slide is not None:
        s.slide.load()
        c = np.asarray(s.coords[0])
        s.slide.read_region(c, 112.0, 32, um_per_px=s.um_per_px)


def fuzz(shared: Path, work: Path, *, n: int = 320, seed: int = 0, verbose: bool = False) -> Outcome:
    from stfeat.errors import StfeatError

    corpus = build_corpus(shared, work / "corpus")
    cases = make_cases(corpus, n, seed)
    res = Outcome()
    for case in cases:
        if verbose:
            print(f"case {case.name}", file=sys.stderr, flush=True)
        root = _materialise(corpus["root"], case, work / "case")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                run_case(case, root)
                res.ok += 1
            except StfeatError:
                res.named += 1
            except Exception as exc:  # noqa: BLE001 - what the fuzzer is for: anything else is a raw traceback
                tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
                res.raw.append((case.name, "".join(tb[-3:])))
                if verbose:
                    print(f"RAW {case.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return res


def main(argv: list[str] | None = None) -> int:
    import tempfile
    import time

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        os.environ.setdefault("STFEAT_SLIDE_CACHE", str(Path(d) / "slides"))
        r = fuzz(a.shared, Path(d), n=a.cases, seed=a.seed, verbose=True)
    print(f"{r.total} cases (seed {a.seed}): {r.ok} read, {r.named} named errors, {len(r.raw)} raw tracebacks "
          f"in {time.perf_counter() - t0:.1f} s")
    for name, tb in r.raw[:20]:
        print(f"--- {name}\n{tb}")
    return 1 if r.raw else 0


if __name__ == "__main__":
    sys.exit(main())
