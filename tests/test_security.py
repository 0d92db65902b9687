"""Locks, the decoded-slide cache and outputs cannot be turned against the user; the disk does not fill."""

from __future__ import annotations

import os
import socket
import stat

import numpy as np
import pytest
from typer.testing import CliRunner
from test_io_builders import save_image, tissue_image

from stfeat import slide_cache
from stfeat.cache import cache_lock, lock_path
from stfeat.errors import InputError
from stfeat.slide import open_slide


@pytest.fixture
def slides(tmp_path, monkeypatch):
    root = tmp_path / "slide-cache"
    monkeypatch.setenv("STFEAT_SLIDE_CACHE", str(root))
    return root


# ------------------------------------------------------------------------------------------- locks
def test_symlinked_lock_file_is_not_followed(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("do not truncate me")
    target = tmp_path / "cache" / "C2.h5"
    target.parent.mkdir()
    lock_path(target).symlink_to(victim)
    with pytest.raises(InputError, match="symbolic link") as e:
        with cache_lock(target):
            pass
    assert e.value.path == lock_path(target)
    assert victim.read_text() == "do not truncate me"  # was: 0 bytes


def test_hard_linked_lock_file_is_refused(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep")
    target = tmp_path / "C2.h5"
    os.link(victim, lock_path(target))
    with pytest.raises(InputError, match="not a plain file of its own"):
        with cache_lock(target):
            pass
    assert victim.read_text() == "keep"


def test_no_lock_file_is_left_after_a_clean_run(tmp_path):
    from test_extract_fakes import fake_sample, tiny_encoder

    from stfeat.extraction import extract_caches as extract

    (p,) = extract([fake_sample(10)], encoder=tiny_encoder(), scales_um=(16,), cache_dir=tmp_path, batch_size=8,
                   num_workers=0, device="cpu", k_neighbors=2)
    assert p.exists() and not lock_path(p).exists()
    assert [f.name for f in p.parent.iterdir()] == [p.name]
    with cache_lock(p):
        assert lock_path(p).exists()
    assert not lock_path(p).exists()


def test_a_symlinked_partial_cache_is_not_written_through(tmp_path):
    from test_extract_fakes import fake_sample, tiny_encoder

    from stfeat.cache import cache_path, partial_path
    from stfeat.extraction import extract_caches as extract

    victim = tmp_path / "precious.h5"
    victim.write_bytes(b"x" * 100)
    part = partial_path(cache_path(tmp_path / "c", "tiny-test", "S1"))
    part.parent.mkdir(parents=True)
    part.symlink_to(victim)
    with pytest.raises(InputError, match="symbolic link"):
        extract([fake_sample(10)], encoder=tiny_encoder(), scales_um=(16,), cache_dir=tmp_path / "c",
                batch_size=8, num_workers=0, device="cpu", k_neighbors=0)
    assert victim.read_bytes() == b"x" * 100


# ------------------------------------------------------------------------------------------- slide cache
def _jpeg(tmp_path, name, w=700, h=600, seed=0):
    return save_image(tmp_path / name, tissue_image(w, h, seed=seed), quality=92)


def test_slide_cache_is_private_and_under_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("STFEAT_SLIDE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = slide_cache.cache_dir()
    assert root == tmp_path / "xdg" / "stfeat" / "slides"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700 and root.stat().st_uid == os.getuid()
    os.chmod(root, 0o777)
    slide_cache.cache_dir()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_slide_cache_of_another_user_or_a_link_is_refused(tmp_path, monkeypatch):
    link = tmp_path / "link"
    (tmp_path / "elsewhere").mkdir()
    link.symlink_to(tmp_path / "elsewhere")
    monkeypatch.setenv("STFEAT_SLIDE_CACHE", str(link))
    with pytest.raises(InputError, match="symbolic link"):
        slide_cache.cache_dir()
    if os.getuid() != 0:
        pytest.skip("changing a folder's owner needs root")
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    os.chown(other, 4242, 4242)
    monkeypatch.setenv("STFEAT_SLIDE_CACHE", str(other))
    with pytest.raises(InputError, match="belongs to another user"):
        slide_cache.cache_dir()


def test_planted_slide_pixels_are_not_used(tmp_path, slides):
    p = _jpeg(tmp_path, "s.jpg")
    s = open_slide(p, um_per_px=1.0).load()
    truth, _ = s.read_region((300, 300), 100, 32)
    (f,) = slides.glob("*.L0.*.u8")
    size = f.stat().st_size
    # someone replaces the level file with other pixels of the same size (no valid header)
    f.unlink()
    f.write_bytes(np.full(size, 7, np.uint8).tobytes())
    s2 = open_slide(p, um_per_px=1.0)
    crop, _ = s2.read_region((300, 300), 100, 32)
    np.testing.assert_array_equal(crop, truth)  # was: 3,262 of 3,264 feature values changed
    # a valid header of ANOTHER source is refused as well
    q = _jpeg(tmp_path, "q.jpg", seed=5)
    open_slide(q, um_per_px=1.0).load()
    (fq,) = [g for g in slides.glob("*.L0.*.u8") if g.name != f.name]
    os.replace(fq, f)
    crop3, _ = open_slide(p, um_per_px=1.0).read_region((300, 300), 100, 32)
    np.testing.assert_array_equal(crop3, truth)


def test_slide_cache_stays_under_its_cap_lru(tmp_path, slides, monkeypatch):
    one = 700 * 600 * 3 + slide_cache.HEADER_BYTES
    monkeypatch.setenv("STFEAT_SLIDE_CACHE_MAX", str(int(2.5 * one)))
    paths = [_jpeg(tmp_path, f"s{i}.jpg", seed=i) for i in range(5)]
    for i, p in enumerate(paths):
        open_slide(p, um_per_px=1.0).load()
        u = slide_cache.usage()
        assert u.bytes <= 2.5 * one, (i, u)
    keys = {f.name.split(".")[0] for f in slides.glob("*.u8")}
    from stfeat.slide import _PilBackend

    newest = {_PilBackend(p)._key() for p in paths[-2:]}
    assert keys == newest  # the two most recently used slides are kept


def test_stale_tmp_of_a_dead_writer_is_removed(tmp_path, slides):
    slide_cache.cache_dir()
    host = slide_cache._host()
    dead = slides / f"abc.L0.10x10.u8.{host}.999999999.1.tmp"
    live = slides / f"abd.L0.10x10.u8.{host}.{os.getpid()}.1.tmp"
    dead.write_bytes(b"0" * 1000)
    live.write_bytes(b"0" * 10)
    assert slide_cache.remove_stale_tmp() == 1000
    assert not dead.exists() and live.exists()
    assert socket.gethostname()  # tmp names carry the host: a pid is only checked on its own machine


def test_cache_du_and_clean(tmp_path, slides):
    from stfeat.cli import app

    for i in range(2):
        open_slide(_jpeg(tmp_path, f"s{i}.jpg", seed=i), um_per_px=1.0).load()
    runner = CliRunner()
    r = runner.invoke(app, ["cache", "du", "--cache-dir", str(tmp_path / "none")])
    assert r.exit_code == 0, r.output
    assert "2 slide(s), 2 level file(s), 2.41 MiB of a 4.00 GiB cap" in r.output
    r = runner.invoke(app, ["cache", "clean"])
    assert r.exit_code == 0, r.output
    assert "freed 2.41 MiB (2 -> 0 level files" in r.output
    assert not list(slides.glob("*.u8"))


# ------------------------------------------------------------------------------------------- outputs
def test_outputs_replace_a_symlink_instead_of_writing_through_it(tmp_path):
    from stfeat._safe_write import write_text

    _write_text = write_text

    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").symlink_to(victim)
    (out / "metrics.json.tmp").symlink_to(victim)  # the old, guessable temporary name
    _write_text(out / "metrics.json", "{}")
    assert victim.read_text() == "mine"
    assert not (out / "metrics.json").is_symlink() and (out / "metrics.json").read_text() == "{}"
    (tmp_path / "outside").mkdir()
    (out / "predictions").symlink_to(tmp_path / "outside")
    with pytest.raises(InputError, match="would leave the output folder"):
        write_text(out / "predictions" / "p.csv", "x", root=out)
    assert not (tmp_path / "outside" / "p.csv").exists()
