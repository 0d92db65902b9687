"""H&E image access: one :class:`Slide` over JPEG/PNG (PIL) and pyramidal TIFF/SVS (tiffslide/OpenSlide).

Every public coordinate is in *level-0 coordinate pixels*: the frame of the spot centres in
``adata.obsm["spatial"]``. Normally that is the image's own full resolution (``scale == 1``); when only a
Space Ranger hires/lowres image exists, the image holds ``scale`` pixels per coordinate pixel (``scale < 1``)
and the slide maps coordinates through it, so callers never see the difference.

Plain JPEG/PNG images are decoded once per machine into a read-only ``np.memmap`` in the private,
size-capped decoded-slide cache (:mod:`stfeat.slide_cache`; keyed by path, mtime and size, each file
checked against a header naming its source), together with a small pyramid of 4x reductions. DataLoader worker processes map the same pages, so a 10k x 10k JPEG is decoded
once, not once per crop or per worker. A :class:`Slide` pickles without its open handles and re-opens lazily.

Attributes of :class:`Slide`
----------------------------
path, dimensions (level-0 coordinate extent, (w, h)), image_dimensions (pixels of the stored image),
level_count, level_dimensions ((w, h) pixels per level), level_downsamples (coordinate px per level px),
um_per_px / um_per_px_source (per coordinate px, when the file states it), scale.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from stfeat._image_checks import _check_decode_size, _grey_fill_rows
from stfeat.errors import InputError

log = logging.getLogger(__name__)

PIL_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
TIFF_SUFFIXES = {".tif", ".tiff", ".svs", ".ndpi", ".scn", ".mrxs", ".bif", ".vms", ".qptiff"}
WHITE = 255
_MIN_LEVEL_PX = 512  # the memmap pyramid stops once a level's longer side is below this
_PIL_LOCK = threading.Lock()
# plausible um/px of a scanned H&E; outside it a stored resolution is a default (72 dpi), not a measurement
_UM_PER_PX_RANGE = (0.05, 30.0)


@contextlib.contextmanager
def _no_bomb_guard() -> Iterator[None]:
    """Let PIL open very large, trusted microscopy images (its guard is for untrusted web uploads)."""
    from PIL import Image

    with _PIL_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _corrupt(path: Path, exc: BaseException | str) -> InputError:
    return InputError(
        path,
        f"the image cannot be decoded ({exc}); it is corrupt, truncated or not an image.",
        "re-export or re-download the image, or pass the right file with --image.",
    )


def _plausible(um: float | None) -> bool:
    return um is not None and np.isfinite(um) and _UM_PER_PX_RANGE[0] <= um <= _UM_PER_PX_RANGE[1]


class _PilBackend:
    """JPEG/PNG decoded once into memmapped levels (level k is a 4**k reduction)."""

    def __init__(self, path: Path) -> None:
        from PIL import Image

        self.path = path
        try:
            with _no_bomb_guard(), Image.open(path) as im:
                self.size = im.size
                self.format = im.format
        except (OSError, SyntaxError, ValueError) as exc:
            raise _corrupt(path, exc) from None
        if self.format == "JPEG":
            # a truncated JPEG opens fine (header only) and fails at decode: check the end marker now
            with open(path, "rb") as fh:
                fh.seek(max(0, path.stat().st_size - 64))
                if b"\xff\xd9" not in fh.read():
                    raise _corrupt(path, "no JPEG end-of-image marker: the file is truncated")
        w, h = self.size
        self.level_dimensions = [(w, h)]
        while max(w, h) // 4 >= _MIN_LEVEL_PX:
            w, h = max(1, w // 4), max(1, h // 4)
            self.level_dimensions.append((w, h))
        self.level_downsamples = [self.size[0] / d[0] for d in self.level_dimensions]
        self._levels: dict[int, np.ndarray] = {}
        self._identity: dict | None = None
        _check_decode_size(path, self.size)

    def _ident(self) -> dict:
        if self._identity is None:
            from stfeat.slide_cache import source_identity

            self._identity = source_identity(self.path)
        return self._identity

    def _key(self) -> str:
        from stfeat.slide_cache import entry_key

        return entry_key(self._ident())

    def _entry(self, i: int) -> Path:
        from stfeat.slide_cache import cache_dir, entry_name

        w, h = self.level_dimensions[i]
        return cache_dir() / entry_name(self._key(), i, w, h)

    def level(self, i: int) -> np.ndarray:
        """The (h, w, 3) uint8 pixels of level ``i``, memory-mapped read-only."""
        from stfeat.slide_cache import open_entry, valid_entry

        if i in self._levels:
            return self._levels[i]
        w, h = self.level_dimensions[i]
        f = self._entry(i)
        if not valid_entry(f, self._ident(), i, w, h):
            if f.exists() or f.is_symlink():
                log.warning("%s does not match %s (planted, stale or damaged): decoding again", f, self.path)
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
            self._build(i, f)
        arr = open_entry(f, w, h)
        self._levels[i] = arr
        return arr

    def _build(self, i: int, f: Path) -> None:
        from PIL import Image

        from stfeat import slide_cache

        w, h = self.level_dimensions[i]
        if i == 0:
            _check_decode_size(self.path, self.size)
            try:
                with _no_bomb_guard(), Image.open(self.path) as im:
                    rgb = _to_rgb(im)
            except (OSError, SyntaxError, ValueError) as exc:
                raise _corrupt(self.path, exc) from None
            except MemoryError:
                raise InputError(self.path, f"decoding this {w} x {h} px image ran out of memory.",
                                 "convert it to a tiled pyramidal TIFF (vips tiffsave --tile --pyramid).") from None
            log.info("decoded %s (%d x %d px) into %s", self.path, w, h, f)
        else:
            prev = self.level(i - 1)
            rgb = Image.fromarray(np.asarray(prev)).resize((w, h), Image.Resampling.BOX)
        arr = np.asarray(rgb, dtype=np.uint8)
        if i == 0 and self.format == "JPEG" and (grey := _grey_fill_rows(arr)) >= 16:
            raise _corrupt(self.path, f"the last {grey} of {h} pixel rows decode to the decoder's uniform grey fill: "
                           "the JPEG data ends early (truncated, end marker kept)")
        free = shutil.disk_usage(f.parent).free
        if free < arr.nbytes + (64 << 20):
            slide_cache.evict(keep=[self._key()], root=f.parent)
            free = shutil.disk_usage(f.parent).free
            if free < arr.nbytes + (64 << 20):
                raise InputError(f.parent, f"the disk of the decoded-slide cache has {free / 1e9:.2f} GB free; decoding "
                                 f"{self.path.name} needs {arr.nbytes / 1e9:.2f} GB.", "free disk space, or point "
                                 f"${slide_cache.ENV_DIR} to a larger disk (`stfeat cache clean` frees this cache).")
        try:
            slide_cache.write_entry(f, self._ident(), i, arr)
        except OSError as exc:
            raise InputError(f, f"cannot write the decoded slide ({exc.strerror or exc}).", "free disk space, or "
                             f"point ${slide_cache.ENV_DIR} to another disk.") from None
        slide_cache.evict(keep=[self._key()], root=f.parent)

    def read(self, level: int, x0: int, y0: int, w: int, h: int) -> tuple[np.ndarray, bool]:
        return _window(self.level(level), x0, y0, w, h)

    def thumbnail(self, max_px: int) -> np.ndarray:
        from PIL import Image

        # an already-built level is the cheapest source; otherwise JPEG draft() decodes at 1/2..1/8 scale
        built = [i for i in range(len(self.level_dimensions)) if i in self._levels or _level_file_exists(self, i)]
        big = [i for i in built if max(self.level_dimensions[i]) >= max_px or i == 0]
        if big:
            return _fit(Image.fromarray(np.asarray(self.level(max(big)))), max_px)
        try:
            with _no_bomb_guard(), Image.open(self.path) as im:
                scale = max_px / max(im.size)
                if im.format == "JPEG":
                    im.draft("RGB", (max(1, int(im.size[0] * scale)), max(1, int(im.size[1] * scale))))
                return _fit(_to_rgb(im), max_px)
        except (OSError, SyntaxError, ValueError) as exc:
            raise _corrupt(self.path, exc) from None

    def close(self) -> None:
        self._levels.clear()


def _level_file_exists(b: _PilBackend, i: int) -> bool:
    from stfeat.slide_cache import valid_entry

    w, h = b.level_dimensions[i]
    return valid_entry(b._entry(i), b._ident(), i, w, h)


def _to_rgb(im: Any) -> Any:
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (WHITE, WHITE, WHITE))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    return im.convert("RGB")


def _fit(im: Any, max_px: int) -> np.ndarray:
    from PIL import Image

    s = max_px / max(im.size)
    if s < 1:
        im = im.resize(
            (max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.Resampling.LANCZOS, reducing_gap=2.0
        )
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _window(arr: np.ndarray, x0: int, y0: int, w: int, h: int) -> tuple[np.ndarray, bool]:
    """Copy ``arr[y0:y0+h, x0:x0+w]`` padding with white where the window leaves the array."""
    H, W = arr.shape[:2]
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
    padded = xa > x0 or ya > y0 or xb < x0 + w or yb < y0 + h
    if not padded:
        return np.array(arr[y0 : y0 + h, x0 : x0 + w]), False
    out = np.full((h, w, 3), WHITE, dtype=np.uint8)
    if xb > xa and yb > ya:
        out[ya - y0 : yb - y0, xa - x0 : xb - x0] = arr[ya:yb, xa:xb]
    return out, True


class _TiffBackend:
    """Pyramidal TIFF/SVS through OpenSlide when it imports, else tiffslide."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.kind = "tiffslide"
        try:
            try:
                import openslide  # type: ignore[import-not-found]

                self.osr = openslide.OpenSlide(str(path))
                self.kind = "openslide"
            except ImportError:
                import tiffslide

                self.osr = tiffslide.TiffSlide(str(path))
            # metadata is parsed lazily: touch it now so a damaged file fails here, naming the file
            self.size = tuple(int(v) for v in self.osr.dimensions)
            self.level_dimensions = [tuple(int(v) for v in d) for d in self.osr.level_dimensions]
            self.level_downsamples = [float(d) for d in self.osr.level_downsamples]
        except Exception as exc:  # noqa: BLE001 - each backend raises its own types for bad files
            raise _corrupt(path, exc) from None

    def mpp(self) -> tuple[float | None, str | None]:
        props = self.osr.properties
        for key in (f"{self.kind}.mpp-x", "openslide.mpp-x", "tiffslide.mpp-x"):
            v = props.get(key)
            if v not in (None, ""):
                um = float(v)
                if _plausible(um):
                    return um, f"{self.kind}-mpp"
        um = _tiff_resolution_um(self.path)
        return (um, "tiff-resolution") if _plausible(um) else (None, None)

    def read(self, level: int, x0: int, y0: int, w: int, h: int) -> tuple[np.ndarray, bool]:
        W, H = self.level_dimensions[level]
        xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
        padded = xa > x0 or ya > y0 or xb < x0 + w or yb < y0 + h
        out = np.full((h, w, 3), WHITE, dtype=np.uint8)
        if xb > xa and yb > ya:
            ds = self.level_downsamples[level]
            loc = (int(round(xa * ds)), int(round(ya * ds)))
            try:
                im = self.osr.read_region(loc, level, (xb - xa, yb - ya))
            except Exception as exc:  # noqa: BLE001 - decoder errors of a damaged tile
                raise _corrupt(self.path, exc) from None
            out[ya - y0 : yb - y0, xa - x0 : xb - x0] = np.asarray(_to_rgb(im), dtype=np.uint8)
        return out, padded

    def thumbnail(self, max_px: int) -> np.ndarray:
        from PIL import Image

        best = len(self.level_dimensions) - 1
        for i, d in enumerate(self.level_dimensions):
            if max(d) >= max_px:
                best = i
        w, h = self.level_dimensions[best]
        arr, _ = self.read(best, 0, 0, w, h)
        return _fit(Image.fromarray(arr), max_px)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.osr.close()


def _tiff_resolution_um(path: Path) -> float | None:
    """um/px from the first page's XResolution + ResolutionUnit tags (None when absent or unitless)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            tags = tf.pages[0].tags
            res, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
            if res is None or unit is None:
                return None
            num, den = res.value
            px_per_unit = num / den if den else 0.0
            unit_um = {2: 25_400.0, 3: 10_000.0}.get(int(unit.value))
            if not unit_um or px_per_unit <= 0:
                return None
            return unit_um / px_per_unit
    except (tifffile.TiffFileError, OSError, ValueError, KeyError):
        return None


class Slide:
    """An H&E image addressed in level-0 coordinate pixels and micrometres of tissue.

    Parameters
    ----------
    path
        JPEG/PNG (decoded once into a shared memory map) or TIFF/SVS (tiffslide or OpenSlide).
    um_per_px
        Micrometres per level-0 coordinate pixel, overriding what the file states.
    scale
        Image pixels per level-0 coordinate pixel: 1 for a full-resolution image, e.g. 0.15 for a
        Space Ranger hires image addressed with full-resolution spot coordinates.
    """

    def __init__(self, path: str | Path, *, um_per_px: float | None = None, scale: float = 1.0) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(self.path, "the image file does not exist.", "check the path or pass --image.")
        if not (scale > 0 and np.isfinite(scale)):
            raise ValueError(f"scale must be a positive number, got {scale}")
        self.scale = float(scale)
        self._backend: _PilBackend | _TiffBackend | None = None
        b = self._open()
        self.image_dimensions: tuple[int, int] = tuple(b.size)  # type: ignore[assignment]
        self.dimensions = (
            int(round(self.image_dimensions[0] / self.scale)),
            int(round(self.image_dimensions[1] / self.scale)),
        )
        self.level_dimensions: list[tuple[int, int]] = list(b.level_dimensions)
        self.level_downsamples: list[float] = [d / self.scale for d in b.level_downsamples]
        self.um_per_px: float | None = None
        self.um_per_px_source: str | None = None
        if um_per_px is not None:
            self.um_per_px, self.um_per_px_source = float(um_per_px), "user"
        elif isinstance(b, _TiffBackend):
            um, src = b.mpp()
            if um is not None:  # the file states um per *image* pixel; convert to coordinate px
                self.um_per_px, self.um_per_px_source = um * self.scale, src

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def _open(self) -> _PilBackend | _TiffBackend:
        if self._backend is None:
            suffix = self.path.suffix.lower()
            if suffix in TIFF_SUFFIXES:
                self._backend = _TiffBackend(self.path)
            elif suffix in PIL_SUFFIXES:
                self._backend = _PilBackend(self.path)
            else:
                raise InputError(
                    self.path,
                    f"unsupported image type {suffix!r}.",
                    "give a JPEG, PNG, TIFF or SVS image (convert other formats with vips or PIL).",
                )
        return self._backend

    # pickling: workers re-open lazily; memmapped pixels are shared through the page cache
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_backend"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def best_level(self, downsample: float) -> int:
        """Index of the level with the largest downsample not above ``downsample`` (coordinate px / level px)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * (1 + 1e-6) and d >= self.level_downsamples[best]:
                best = i
        return best

    def _um(self, um_per_px: float | None) -> float:
        um = um_per_px if um_per_px is not None else self.um_per_px
        if um is None:
            raise InputError(
                self.path,
                "the image does not state its micrometres per pixel.",
                "pass um_per_px (CLI: --um-per-px), e.g. the value read_sample() found for the sample.",
            )
        return float(um)

    def read_region(
        self, centre_px: Sequence[float], field_um: float, out_px: int, *, um_per_px: float | None = None
    ) -> tuple[np.ndarray, bool]:
        """Crop ``field_um`` micrometres of tissue centred on ``centre_px`` and resize it to ``out_px``.

        Parameters
        ----------
        centre_px
            (x, y) centre in level-0 coordinate pixels.
        field_um
            Side of the square field of view in micrometres.
        out_px
            Side of the returned image in pixels.
        um_per_px
            Micrometres per level-0 coordinate pixel; defaults to the slide's own.

        Returns
        -------
        rgb
            (out_px, out_px, 3) uint8.
        padded
            True when the field ran past the image edge (the outside is white).
        """
        from PIL import Image

        b = self._open()
        side = field_um / self._um(um_per_px)  # coordinate px
        level = self.best_level(side / out_px)
        ds = self.level_downsamples[level]
        cx, cy = float(centre_px[0]) / ds, float(centre_px[1]) / ds
        s = side / ds
        fx0, fy0 = cx - s / 2, cy - s / 2
        x0, y0 = int(np.floor(fx0)), int(np.floor(fy0))
        w = int(np.ceil(fx0 + s)) - x0
        h = int(np.ceil(fy0 + s)) - y0
        win, padded = b.read(level, x0, y0, max(w, 1), max(h, 1))
        box = (fx0 - x0, fy0 - y0, fx0 - x0 + s, fy0 - y0 + s)
        im = Image.fromarray(win).resize((out_px, out_px), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
        return np.asarray(im, dtype=np.uint8), padded

    def read_regions(
        self, centres_px: np.ndarray, field_um: float, out_px: int, *, um_per_px: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Batched :meth:`read_region`: (n, out_px, out_px, 3) uint8 crops and (n,) padded flags."""
        centres = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
        out = np.empty((len(centres), out_px, out_px, 3), dtype=np.uint8)
        padded = np.zeros(len(centres), dtype=bool)
        for i, c in enumerate(centres):
            out[i], padded[i] = self.read_region(c, field_um, out_px, um_per_px=um_per_px)
        return out, padded

    def thumbnail(self, max_px: int) -> tuple[np.ndarray, float]:
        """An RGB overview whose longer side is at most ``max_px``, and its pixels per level-0 coordinate px."""
        rgb = self._open().thumbnail(max_px)
        return rgb, rgb.shape[1] / self.dimensions[0]

    def load(self) -> "Slide":
        """Decode now (JPEG/PNG), e.g. before forking DataLoader workers; returns self."""
        b = self._open()
        if isinstance(b, _PilBackend):
            b.level(0)
        return self

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Slide({str(self.path)!r}, {self.dimensions[0]}x{self.dimensions[1]} coordinate px, "
            f"{self.level_count} levels, scale={self.scale:g}, um_per_px={self.um_per_px} [{self.um_per_px_source}])"
        )


def open_slide(path: str | Path, *, um_per_px: float | None = None, scale: float = 1.0) -> Slide:
    """Open an H&E image; see :class:`Slide`. Raises :class:`~stfeat.errors.InputError` for bad files."""
    return Slide(path, um_per_px=um_per_px, scale=scale)


__all__ = ["Slide", "open_slide"]
