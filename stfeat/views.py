"""What the encoder sees: stain normalisation, test-time augmentation and background handling of the crops.

A :class:`ViewSpec` says how each decoded uint8 crop becomes the ``V`` views the encoder embeds; a spot's
embedding is the mean over its views. It is applied in the DataLoader workers (:class:`stfeat.batching.
CropDataset`), all views of a batch go through ONE forward pass (``b x S x V`` crops). Per crop, in order:

1. **Tissue mask** (always, also for plain views): a pixel is background when it is near-white (every
   channel >= :data:`WHITE_MIN` = 220: glass, and the white padding past the image edge) or near-black
   (every channel <= :data:`BLACK_MAX` = 40: the background of black-background scans). The tissue
   fraction of every crop is stored per spot and field of view in the cache (``/tissue/{scale}``).
2. **Stain normalisation** (``stain_norm``): torchstain's numpy Macenko or Reinhard normaliser, fitted once
   to the reference tile (``stain_reference``, an RGB image) or, without one, to the defaults:

   * Macenko: torchstain's own reference stain matrix ``HERef = [[0.5626, 0.2159], [0.7201, 0.8012],
     [0.4062, 0.5581]]`` and maximal concentrations ``maxCRef = [1.9705, 1.0308]``.
   * Reinhard: the LAB mean/std of :func:`reference_tile`, a 64 x 64 tile rendered from those same
     Macenko reference stains (Beer-Lambert, ``I = 240 exp(-HERef C)``) with concentrations drawn by
     ``numpy.random.default_rng(0)`` uniformly in ``[0, maxCRef]``: deterministic, no file needed.

   A crop is left UNCHANGED (deterministically) when it has under :data:`MIN_TISSUE` = 5% tissue or the
   normaliser fails on it (torchstain raises, or produces NaN/inf: a blank crop has no stain to estimate).
3. **Test-time augmentation** (``tta="d8"``): the 8 flips and 90 degree rotations of the crop (view ``v``:
   ``rot90(flip_lr(crop) if v >= 4 else crop, k=v % 4)``).
4. **HED jitter** (``tta_hed_jitter`` = sigma > 0): per view, skimage ``rgb2hed``; each channel ``c`` of
   H, E, D becomes ``x * (1 + sigma * a_c) + sigma * 0.05 * b_c`` with ``a, b`` standard normal from
   ``numpy.random.default_rng([spot_index, scale_index, view_index, 0x5EED])``; ``hed2rgb``. The seed
   depends only on the spot's index in the sample, so a resumed run writes identical embeddings.
5. **Background fill** (``background="fill"``): background pixels (of the mask of step 1, transformed
   with the view) become white (255), the same constant as the padding of crops past the image edge, so
   a black-background scan does not look like dense nuclei. With stain normalisation they are filled
   before it as well, so the stain estimate is not fitted to black glass.

6. **Patch tokens** (``tokens`` = G > 0, ``extract --tokens G``; not a view of the pixels): besides the pooled
   vector, the encoder's patch-token grid (ViT) or last feature map (CNN) of each crop, average-pooled to
   G x G, is stored in float16 as ``/tokens/{scale}`` (n, G*G, C), row-major over the crop (row 0 = top);
   the layout is in the cache attrs (``tokens_grid``, ``tokens_dim``, ``tokens_source``). Crop mode only,
   and not with ``tta="d8"`` (rotated views would mix token positions). M2OST-style heads read them
   (``AttentionHead(patch_tokens=True)``); the others ignore them. A ``+tok{G}`` variant folder.

The view set is part of the cache configuration: :meth:`ViewSpec.identity` enters the encoder identity
(hence the ``config_hash``) and :attr:`ViewSpec.suffix` the cache folder: ``cache/densenet121/C2.h5``
(plain, identical to before views existed) and ``cache/densenet121+macenko+d8+bgfill/C2.h5``. That
variant name is accepted as an encoder name everywhere (``FeatureSet.load(..., encoder="densenet121+macenko")``,
``stfeat fit --encoder densenet121+macenko``, a model's encoder at predict time):
:meth:`ViewSpec.from_variant` turns it back into the base encoder and the views.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stfeat.errors import InputError

log = logging.getLogger(__name__)

STAIN_NORMS = ("none", "macenko", "reinhard")
TTAS = ("none", "d8")
BACKGROUNDS = ("keep", "fill")
VIEW_OPTIONS = ("stain_norm", "stain_reference", "tta", "tta_hed_jitter", "background", "tokens")
MAX_TOKENS_GRID = 16
WHITE_MIN = 220
BLACK_MAX = 40
FILL = 255  # stfeat.slide.WHITE: the padding of crops past the image edge
MIN_TISSUE = 0.05
MACENKO_HE_REF = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
MACENKO_MAXC_REF = np.array([1.9705, 1.0308])
_JITTER_SEED = 0x5EED


# ------------------------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class ViewSpec:
    """The views of each crop (see the module docstring). ``reference_digest`` is the first 10 hex of the
    sha256 of the reference image's file ("" for the default reference); ``stain_reference`` its path."""

    stain_norm: str = "none"
    reference_digest: str = ""
    tta: str = "none"
    tta_hed_jitter: float = 0.0
    background: str = "keep"
    stain_reference: str = ""
    #: patch-token grid G stored per crop (0: none); see the module docstring, step 6
    tokens: int = 0

    def __post_init__(self) -> None:
        for name, val, allowed in (("stain_norm", self.stain_norm, STAIN_NORMS), ("tta", self.tta, TTAS),
                                   ("background", self.background, BACKGROUNDS)):
            if val not in allowed:
                raise InputError(None, f"{name} must be one of {', '.join(allowed)}, got {val!r}.",
                                 f"give e.g. {name}={allowed[0]!r}.")
        if not (np.isfinite(self.tta_hed_jitter) and self.tta_hed_jitter >= 0):
            raise InputError(None, f"tta_hed_jitter must be >= 0, got {self.tta_hed_jitter!r}.", "give e.g. 0.05.")
        if isinstance(self.tokens, bool) or not isinstance(self.tokens, (int, np.integer)) or \
                not 0 <= int(self.tokens) <= MAX_TOKENS_GRID:
            raise InputError(None, f"tokens must be a grid size 0..{MAX_TOKENS_GRID}, got {self.tokens!r}.",
                             "give e.g. tokens=4 (--tokens 4) for a 4 x 4 grid, or 0 for none.")
        if self.tokens and self.tta != "none":
            raise InputError(None, f"patch tokens (tokens={self.tokens}) cannot be averaged over tta={self.tta!r} "
                             "views: flips and rotations move the token positions.",
                             "extract tokens without --tta, or TTA features without --tokens.")
        if self.reference_digest and self.stain_norm == "none":
            raise InputError(None, "a stain reference was given without stain normalisation.",
                             "add stain_norm='macenko' or 'reinhard', or drop stain_reference.")

    @classmethod
    def build(cls, *, stain_norm: str = "none", stain_reference: str | Path | None = None, tta: str = "none",
              tta_hed_jitter: float = 0.0, background: str = "keep", tokens: int = 0) -> "ViewSpec":
        """The spec of the extraction options (hashes the reference file)."""
        digest = ""
        if stain_reference is not None and str(stain_reference):
            p = Path(stain_reference).expanduser()
            if not p.is_file():
                raise InputError(p, "the stain reference image does not exist.", "give an RGB image file (PNG, JPEG, TIFF).")
            digest = hashlib.sha256(p.read_bytes()).hexdigest()[:10]
            stain_reference = str(p.resolve())
        return cls(stain_norm, digest, tta, float(tta_hed_jitter), background, str(stain_reference or ""),
                   int(tokens or 0))

    @property
    def plain(self) -> bool:
        """No view option in use (the cache is the encoder's own folder, dense mode is possible)."""
        return self.plain_pixels and not self.tokens

    @property
    def plain_pixels(self) -> bool:
        """The crops reach the encoder as read (tokens may still be stored)."""
        return self.stain_norm == "none" and self.tta == "none" and self.tta_hed_jitter == 0 and self.background == "keep"

    @property
    def n_views(self) -> int:
        return 8 if self.tta == "d8" else 1

    @property
    def suffix(self) -> str:
        """``""`` for plain views, else ``"+macenko[-ref<digest>]+d8+hed<sigma>+bgfill"`` (the parts in use)."""
        parts = []
        if self.stain_norm != "none":
            parts.append(self.stain_norm + (f"-ref{self.reference_digest}" if self.reference_digest else ""))
        if self.tta != "none":
            parts.append(self.tta)
        if self.tta_hed_jitter > 0:
            parts.append(f"hed{self.tta_hed_jitter:g}")
        if self.background != "keep":
            parts.append("bg" + self.background)
        if self.tokens:
            parts.append(f"tok{int(self.tokens)}")
        return "".join("+" + p for p in parts)

    def identity(self) -> dict[str, Any] | None:
        """What enters the encoder identity (None for plain views: the identity stays as it always was)."""
        if self.plain:
            return None
        out = {"stain_norm": self.stain_norm, "reference_digest": self.reference_digest, "tta": self.tta,
               "tta_hed_jitter": float(self.tta_hed_jitter), "background": self.background}
        if self.tokens:  # only when used: the identity of caches without tokens stays as it was
            out["tokens"] = int(self.tokens)
        return out

    def to_attrs(self) -> dict[str, Any]:
        """The cache/model record (identity plus the reference path, so predict can refit the normaliser)."""
        return {**(self.identity() or {"plain": True}), "stain_reference": self.stain_reference,
                "n_views": self.n_views}

    @staticmethod
    def from_variant(name: str) -> tuple[str, "ViewSpec"]:
        """``"densenet121+macenko+d8"`` -> ``("densenet121", ViewSpec(stain_norm="macenko", tta="d8"))``.

        Trailing ``+part`` tokens that name views are parsed; a name without any gives ``(name, plain)``.
        A ``-ref<digest>`` reference cannot be turned back into its file: :func:`resolve` asks for it.
        """
        s = str(name)
        kw: dict[str, Any] = {}
        while "+" in s:
            head, _, tok = s.rpartition("+")
            t = tok.lower()
            if t.startswith(("macenko", "reinhard")) and "stain_norm" not in kw:
                norm, _, ref = t.partition("-ref")
                if norm not in STAIN_NORMS or (_ and not ref):
                    break
                kw["stain_norm"], kw["reference_digest"] = norm, ref
            elif t == "d8" and "tta" not in kw:
                kw["tta"] = "d8"
            elif t.startswith("hed") and "tta_hed_jitter" not in kw:
                try:
                    kw["tta_hed_jitter"] = float(t[3:])
                except ValueError:
                    break
            elif t == "bgfill" and "background" not in kw:
                kw["background"] = "fill"
            elif t.startswith("tok") and t[3:].isdigit() and "tokens" not in kw:
                kw["tokens"] = int(t[3:])
            else:
                break
            s = head
        return s, ViewSpec(**kw)

    def check_mode(self, mode: str) -> str:
        """The extraction mode these views allow: dense refuses non-plain views, auto becomes crop."""
        if self.plain or mode == "crop":
            return mode
        if mode == "dense":
            raise InputError(None, f"dense extraction takes plain views, not {self.suffix!r} (stain_norm, tta, "
                             "tta_hed_jitter, background and tokens act on per-spot crops).",
                             "use --mode crop (or auto) with these views, or drop them for dense mode.")
        return "crop"

    # ---------------------------------------------------------------------- applying it (workers)
    def apply(self, crops: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
        """``crops`` uint8 (b, S, px, px, 3) of spots ``start..start+b`` -> views uint8 (b, S*V, px, px, 3)
        (scale-major, view-minor) and tissue fraction float32 (b, S)."""
        b, S = crops.shape[:2]
        V = self.n_views
        bg = background_mask(crops)
        tissue = 1.0 - bg.mean(axis=(2, 3), dtype=np.float64)
        if self.plain_pixels:
            return crops, tissue.astype(np.float32)
        out = np.empty((b, S * V) + crops.shape[2:], np.uint8)
        norm = _normaliser(self.stain_norm, self.stain_reference, self.reference_digest) \
            if self.stain_norm != "none" else None
        for i in range(b):
            for j in range(S):
                base = crops[i, j]
                if self.background == "fill":  # before normalising: black glass is no stain to fit
                    base = base.copy()
                    base[bg[i, j]] = FILL
                if norm is not None and tissue[i, j] >= MIN_TISSUE:
                    base = normalise(norm, base)
                for v in range(V):
                    x = d8(base, v)
                    if self.tta_hed_jitter > 0:
                        x = hed_jitter(x, self.tta_hed_jitter, (start + i, j, v, _JITTER_SEED))
                    if self.background == "fill":
                        x = x.copy()
                        x[d8(bg[i, j], v)] = FILL
                    out[i, j * V + v] = x
        return out, tissue.astype(np.float32)


def background_mask(crops: np.ndarray) -> np.ndarray:
    """True where a pixel is near-white (all channels >= WHITE_MIN) or near-black (all <= BLACK_MAX)."""
    c = np.asarray(crops)
    return (c.min(axis=-1) >= WHITE_MIN) | (c.max(axis=-1) <= BLACK_MAX)


def d8(x: np.ndarray, v: int) -> np.ndarray:
    """View ``v`` (0..7) of the dihedral group on the first two axes: v % 4 quarter turns, mirrored when v >= 4."""
    if v >= 4:
        x = x[:, ::-1]
    return np.rot90(x, v % 4, axes=(0, 1))


def hed_jitter(rgb: np.ndarray, sigma: float, seed: Sequence[int]) -> np.ndarray:
    """Seeded HED stain jitter (skimage ``rgb2hed``/``hed2rgb``) of one uint8 RGB crop."""
    from skimage.color import hed2rgb, rgb2hed

    rng = np.random.default_rng(list(seed))
    a = 1.0 + sigma * rng.standard_normal(3)
    c = sigma * 0.05 * rng.standard_normal(3)
    hed = rgb2hed(rgb) * a + c
    return np.clip(np.rint(hed2rgb(hed) * 255), 0, 255).astype(np.uint8)


def reference_tile(px: int = 64) -> np.ndarray:
    """The default reference: an H&E-like uint8 tile rendered from the Macenko reference stains (seed 0)."""
    rng = np.random.default_rng(0)
    conc = rng.uniform(0, 1, (2, px * px)) * MACENKO_MAXC_REF[:, None]
    rgb = 240.0 * np.exp(-MACENKO_HE_REF @ conc)
    return np.clip(np.rint(rgb.T.reshape(px, px, 3)), 0, 255).astype(np.uint8)


def _read_rgb(path: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise InputError(path, f"the stain reference cannot be read as an image ({exc}).",
                         "give an RGB image file (PNG, JPEG, TIFF).") from None


@functools.lru_cache(maxsize=8)
def _normaliser(method: str, reference: str, digest: str) -> Any:
    """A fitted torchstain numpy normaliser (memoised per worker process)."""
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer

    norm = NumpyMacenkoNormalizer() if method == "macenko" else NumpyReinhardNormalizer()
    if digest and not reference:
        raise InputError(None, f"the views name a {method} reference image (sha256 prefix {digest}) but not its file.",
                         "pass that image as stain_reference (--stain-reference).")
    if reference:
        ref = _read_rgb(reference)
        try:
            with np.errstate(all="raise"):
                norm.fit(ref)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError, IndexError) as exc:
            raise InputError(reference, f"{method} normalisation cannot be fitted to this reference ({exc}).",
                             "give a tile that shows stained tissue (not glass or background).") from None
    elif method == "reinhard":
        norm.fit(reference_tile())
    return norm  # macenko without a reference: torchstain's HERef / maxCRef (MACENKO_* above)


def normalise(norm: Any, crop: np.ndarray) -> np.ndarray:
    """One crop through a fitted normaliser; the crop unchanged when normalisation fails on it."""
    import warnings

    try:
        with np.errstate(all="raise"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # torchstain's empty-slice means: the crop is returned as is
            out = norm.normalize(crop, stains=False)[0] if hasattr(norm, "HERef") else norm.normalize(crop)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError, IndexError):
        return crop
    out = np.asarray(out)
    if out.shape != crop.shape:
        return crop
    return out.astype(np.uint8)


# ------------------------------------------------------------------------------------------- wiring
def resolve(encoder: Any, *, stain_norm: str = "none", stain_reference: str | Path | None = None,
            tta: str = "none", tta_hed_jitter: float = 0.0, background: str = "keep", tokens: int = 0
            ) -> tuple[Any, ViewSpec]:
    """``(base encoder, ViewSpec)`` from an encoder (maybe a variant name) and the view options.

    A variant name (``"densenet121+macenko"``) sets its views; explicit options must then agree with it.
    """
    base, named = ViewSpec.from_variant(encoder) if isinstance(encoder, str) else (encoder, ViewSpec())
    given = not (stain_norm == "none" and tta == "none" and not tta_hed_jitter and background == "keep" and not tokens)
    spec = ViewSpec.build(stain_norm=stain_norm if given or named.plain else named.stain_norm,
                          stain_reference=stain_reference, tta=tta, tta_hed_jitter=tta_hed_jitter, background=background,
                          tokens=tokens if given or named.plain else named.tokens)
    if named.plain:
        return encoder, spec
    key = lambda v: (v.stain_norm, v.tta, v.tta_hed_jitter, v.background, v.tokens)  # noqa: E731
    if given and key(spec) != key(named):
        raise InputError(None, f"the encoder name {encoder!r} names the views {named.suffix!r} but the options ask "
                         f"for {spec.suffix!r}.", "give the base encoder name with the options, or the variant name alone.")
    if spec.reference_digest != named.reference_digest:
        if named.reference_digest:
            raise InputError(None, f"{encoder!r} was normalised to a reference image with digest "
                             f"{named.reference_digest} (sha256 prefix), but stain_reference gives "
                             f"{spec.reference_digest or 'none'}.", "pass that image as stain_reference (--stain-reference).")
        raise InputError(None, f"{encoder!r} uses the default stain reference, but stain_reference was given.",
                         "drop stain_reference, or give the base encoder name with the options.")
    return base, ViewSpec(named.stain_norm, named.reference_digest, named.tta, named.tta_hed_jitter,
                          named.background, spec.stain_reference, named.tokens)


def variant_identity(ident: Any, spec: ViewSpec) -> Any:
    """The encoder identity with the views added (unchanged for plain views)."""
    from dataclasses import replace

    from stfeat import cache as C

    if spec.plain:
        return ident
    return replace(ident, name=ident.name + spec.suffix, tag=C.encoder_tag(ident.name) + spec.suffix,
                   identity={**ident.identity, "views": spec.identity()})


def extraction_identity(encoder: Any, *, weights: Any = None, pretrained: bool = True,
                        **view_opts: Any) -> tuple[Any, ViewSpec, Any]:
    """``(base encoder, ViewSpec, identity)`` of an extraction: the encoder identity with the views in it."""
    from stfeat.identity import encoder_identity

    base, spec = resolve(encoder, **view_opts)
    return base, spec, variant_identity(encoder_identity(base, weights=weights, pretrained=pretrained), spec)


def add_seconds(f: Any, since: list[float]) -> None:
    """Add the wall seconds since ``since[0]`` to the file's ``extract_seconds`` attr (summed over resumes)."""
    import time

    now = time.perf_counter()
    f.attrs["extract_seconds"] = float(f.attrs.get("extract_seconds", 0.0)) + (now - since[0])
    since[0] = now


def check_resolution(sample_id: str, scales_um: Sequence[float], um_per_px: float, input_px: int) -> None:
    """Warn when a field of view spans fewer image pixels than the encoder input (called once per sample)."""
    for s in scales_um:
        span = float(s) / float(um_per_px)
        if span < input_px:
            log.warning("%s: %g um spans %.0f px at %.3g um/px, upsampled %.1fx to the encoder's %d px",
                        sample_id, float(s), span, float(um_per_px), input_px / span, input_px)


__all__ = ["ViewSpec", "STAIN_NORMS", "TTAS", "BACKGROUNDS", "background_mask", "d8", "hed_jitter", "reference_tile",
           "normalise", "resolve", "variant_identity", "extraction_identity", "check_resolution", "add_seconds"]
