"""The decoded-slide cache under its size cap: 20 real H&E JPEGs decoded in turn, then `stfeat cache du/clean`.

Twenty 2048 x 2048 JPEGs are cut from the HER2ST sections C2-C6 (../shared/data; four regions each),
each decoded by stfeat (a 12 MiB level 0), with the cache capped at 64 MiB
($STFEAT_SLIDE_CACHE_MAX). After each decode the script prints the cache size; the baseline is what
the same 20 decodes would leave without a cap (what stfeat kept before, in the temp folder). Then
`stfeat cache du` reports and `stfeat cache clean` frees the cache, through the real CLI.

    nice -n 10 python benchmarks/bench_slide_cache.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STFEAT_SHARED_DATA", ROOT.parent / "shared" / "data"))
CAP = 64 * 1024**2
MIB = 1024**2
SIDE = 2048


def main() -> None:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    her2st = SHARED / "her2st" / "ST-imgs" / "C"
    if not her2st.is_dir():
        sys.exit(f"real data not found: {her2st}")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        os.environ["STFEAT_SLIDE_CACHE"] = str(d / "slides")
        os.environ["STFEAT_SLIDE_CACHE_MAX"] = str(CAP)
        from stfeat import slide_cache
        from stfeat.slide import open_slide

        jpgs = []
        for sec in ("C2", "C3", "C4", "C5", "C6"):
            with Image.open(next((her2st / sec).glob("*.jpg"))) as im:
                w, h = im.size
                for k, (fx, fy) in enumerate(((0.25, 0.25), (0.5, 0.25), (0.25, 0.5), (0.5, 0.5))):
                    x0, y0 = int(fx * (w - SIDE)), int(fy * (h - SIDE))
                    p = d / f"{sec}_{k}.jpg"
                    im.crop((x0, y0, x0 + SIDE, y0 + SIDE)).save(p, quality=90)
                    jpgs.append(p)
        print(f"{len(jpgs)} real H&E JPEGs of {SIDE} x {SIDE} px; cache cap {CAP / MIB:.1f} MiB")
        uncapped = 0
        peak = 0
        t0 = time.perf_counter()
        for i, p in enumerate(jpgs, 1):
            s = open_slide(p, um_per_px=0.69).load()
            s.read_region((SIDE / 2, SIDE / 2), 448, 224)  # level 1 too
            u = slide_cache.usage()
            w, h = s.level_dimensions[0]  # what this slide's decode wrote (level 0; crops here need no other)
            uncapped += w * h * 3 + slide_cache.HEADER_BYTES
            peak = max(peak, u.bytes)
            print(f"  after slide {i:2d} ({p.name}): cache {u.bytes / MIB:6.1f} MiB in {u.files} files "
                  f"({u.slides} slides); without a cap {uncapped / MIB:6.1f} MiB")
        dt = time.perf_counter() - t0
        print(f"peak {peak / MIB:.1f} MiB <= cap {CAP / MIB:.1f} MiB: {peak <= CAP}; uncapped would hold "
              f"{uncapped / MIB:.1f} MiB ({uncapped / max(peak, 1):.1f}x the peak); {dt:.1f} s for 20 decodes")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for cmd in (["cache", "du", "--cache-dir", str(d / "features")], ["cache", "clean"],
                    ["cache", "du", "--cache-dir", str(d / "features")]):
            r = subprocess.run([sys.executable, "-m", "stfeat", *cmd], capture_output=True, text=True, env=env)
            print(f"$ stfeat {' '.join(cmd[:2])}\n{r.stdout.rstrip()}")


if __name__ == "__main__":
    main()
