"""Faults during extraction end in named errors, never a crash, a hang or a raw traceback; files stay resumable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from stfeat.errors import InputError, ResourceError
from test_extract_fakes import FakeSlide, fake_sample, tiny_encoder

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def _extract(samples, cache, **kw):
    from stfeat.extraction import extract_caches as extract

    kw.setdefault("num_workers", 0)
    return extract(samples, encoder=tiny_encoder(), scales_um=(16, 32), cache_dir=cache, batch_size=8,
                   device="cpu", k_neighbors=2, **kw)


def test_a_file_size_limit_is_a_named_error_then_extract_runs(tmp_path):
    code = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(TESTS)!r})
        from test_extract_fakes import fake_sample, tiny_encoder
        from stfeat.extraction import extract_caches as extract
        from stfeat.errors import StfeatError
        enc = tiny_encoder()
        s = fake_sample(400)
        resource.setrlimit(resource.RLIMIT_FSIZE, (24_000, 24_000))
        try:
            extract([s], encoder=enc, scales_um=(16, 32, 64), cache_dir={str(tmp_path)!r}, batch_size=8,
                    num_workers=0, device="cpu", k_neighbors=2)
        except StfeatError as exc:
            print("NAMED", exc)
            sys.exit(3)
        print("NO ERROR")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr[-2000:])  # was: a segmentation fault
    assert "file-size limit (ulimit -f) is 0.02 MB" in r.stdout and "ulimit -f unlimited" in r.stdout
    from stfeat.cache import read_cache
    from stfeat.extraction import extract_caches as extract

    res = []
    (p,) = extract([fake_sample(400)], encoder=tiny_encoder(), scales_um=(16, 32, 64), cache_dir=tmp_path,
                   batch_size=8, num_workers=0, device="cpu", k_neighbors=2, on_sample=res.append)
    assert res[0].status in ("resumed", "written") and read_cache(p).n_spots == 400


def test_a_disk_write_error_in_the_writer_thread_is_named(tmp_path, monkeypatch):
    import errno

    from stfeat import _cache_writer

    real = _cache_writer._Writer._run

    def full_disk(self):
        self.error = OSError(errno.ENOSPC, "No space left on device")
        real(self)

    from stfeat import _faults

    monkeypatch.setattr(_cache_writer._Writer, "_run", full_disk)
    with pytest.raises(ResourceError, match="the disk is full") as e:
        _extract([fake_sample(20)], tmp_path)
    while _faults.ABANDONED:  # the injected failure left HDF5 healthy: close the file it kept open
        _faults.ABANDONED.pop().close()
    assert str(e.value.path).endswith("S1.h5.partial") and "resumes" in e.value.fix


def _corrupt_tiff(path: Path) -> Path:
    import tifffile
    from test_io_builders import tissue_image

    with tifffile.TiffWriter(path) as tw:
        tw.write(tissue_image(512, 512), tile=(128, 128), photometric="rgb", compression="zlib")
    with tifffile.TiffFile(path) as tf:
        off, n = tf.pages[0].dataoffsets[6], tf.pages[0].databytecounts[6]
    b = bytearray(path.read_bytes())
    b[off:off + n] = b"\0" * n
    path.write_bytes(bytes(b))
    return path


def _sample_on(slide, n=16):
    s = fake_sample(n)
    s.slide = slide
    return s


@pytest.mark.parametrize("workers", [0, 1])
def test_a_corrupt_tiff_tile_inside_extract_is_a_clean_input_error(tmp_path, workers):
    from stfeat.slide import open_slide

    tif = _corrupt_tiff(tmp_path / "slide.tif")
    s = _sample_on(open_slide(tif, um_per_px=0.5))
    with pytest.raises(InputError, match="cannot be decoded") as e:  # was: a RuntimeError with a traceback
        _extract([s], tmp_path / "c", num_workers=workers)
    assert e.value.path == tif and "re-export" in e.value.fix


class _StuckSlide(FakeSlide):
    def read_regions(self, *a, **k):
        time.sleep(30)
        return super().read_regions(*a, **k)


def test_a_stalled_worker_reaches_the_main_process(tmp_path, monkeypatch):
    monkeypatch.setenv("STFEAT_WORKER_TIMEOUT", "2")
    s = fake_sample(16)
    s.slide = _StuckSlide(s.slide.image)
    t0 = time.perf_counter()
    with pytest.raises(ResourceError, match="crop-decoding worker process failed") as e:
        _extract([s], tmp_path, num_workers=1)
    assert time.perf_counter() - t0 < 25 and "--num-workers 0" in e.value.fix
