"""Encoder registry core: :class:`EncoderSpec`, :class:`Encoder` and ``@register_encoder``.

Model files (``uni.py``, ``virchow.py``, ...) register small factory functions with
:func:`register_encoder`, in the style of timm's ``@register_model``. Nothing here touches the
network or imports torch at import time.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from stfeat.errors import StfeatError

if TYPE_CHECKING:  # pragma: no cover
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HOPT_MEAN = (0.707223, 0.578729, 0.703617)
HOPT_STD = (0.211883, 0.230117, 0.177517)
HIBOU_MEAN = (0.7068, 0.5755, 0.722)
HIBOU_STD = (0.195, 0.2316, 0.1816)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)
LUNIT_MEAN = (0.70322989, 0.53606487, 0.66096631)
LUNIT_STD = (0.21716536, 0.26081574, 0.20723464)


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to build, feed and cite one encoder.

    ``input_px`` is the side of the square tensor the model sees; ``um_per_px`` the resolution
    it was trained at (``None`` for ImageNet models). ``precision`` is the autocast dtype on GPU
    ("fp32", "fp16" or "bf16"). ``pooling`` says how the embedding is formed (e.g. "cls",
    "cls+mean(patch[5:])", "avgpool").
    """

    name: str
    family: str
    embed_dim: int
    input_px: int = 224
    um_per_px: float | None = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    precision: str = "fp32"
    license: str = "unknown"
    gated: bool = False
    hub_id: str | None = None
    arch: str | None = None
    pooling: str = "cls"
    needs: tuple[str, ...] = ()  # extra packages (e.g. "transformers", "conch")
    notes: str = ""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    channels_last: bool = False  # conv nets: channels_last memory format on CUDA

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (it feeds the cache's config hash, so keep values plain)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["needs"] = list(self.needs)
        return d


# name -> (spec, factory). A factory is called as
#     factory(spec, weights: Path | None, *, pretrained: bool, tiny: bool, **kwargs)
# and returns (module, weights_file | None): the module maps a normalised float (B, 3, input_px, input_px)
# tensor to (B, embed_dim) embeddings; weights_file is the file the weights came from (local or hub cache),
# or None for random / no weights. ``tiny=True`` builds the same architecture with reduced depth/width
# (tests); the embedding dim then follows the same pooling rule on the reduced width.
_REGISTRY: dict[str, tuple[EncoderSpec, Callable[..., Any]]] = {}
_ALIASES: dict[str, str] = {}


class UnknownEncoderError(StfeatError, KeyError):
    """An encoder name that is not registered (a KeyError, printed without quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def register_encoder(spec: EncoderSpec, *, aliases: tuple[str, ...] = ()):
    """Decorator that registers a factory under ``spec.name`` (and aliases, case-insensitive)."""

    def deco(factory: Callable[..., Any]):
        key = spec.name.lower()
        if key in _REGISTRY:
            raise ValueError(f"encoder {spec.name!r} registered twice")
        _REGISTRY[key] = (spec, factory)
        for a in aliases:
            _ALIASES[a.lower()] = key
        return factory

    return deco


def get_factory(name: str) -> tuple[EncoderSpec, Callable[..., Any]]:
    """(spec, factory) registered under ``name``; raises :class:`UnknownEncoderError`."""
    spec = get_spec(name)
    return _REGISTRY[spec.name.lower()]


def aliases_of(name: str) -> list[str]:
    """The aliases registered for the encoder ``name``."""
    key = name.lower()
    return sorted(a for a, k in _ALIASES.items() if k == key)


def _resolve_name(name: str) -> str | None:
    key = name.lower()
    key = _ALIASES.get(key, key)
    return key if key in _REGISTRY else None


def list_encoders(pattern: str = "*") -> list[EncoderSpec]:
    """Registered encoder specs whose name matches a shell-style ``pattern`` (e.g. ``"uni*"``)."""
    from stfeat.encoders import _load_all  # noqa: F401  (registers every family)

    return [s for k, (s, _) in sorted(_REGISTRY.items()) if fnmatch.fnmatch(k, pattern.lower())]


def get_spec(name: str) -> EncoderSpec:
    """The spec registered under ``name`` (or an alias); raises :class:`UnknownEncoderError`."""
    from stfeat.encoders import _load_all  # noqa: F401

    key = _resolve_name(name)
    if key is None:
        import difflib

        close = difflib.get_close_matches(name.lower(), list(_REGISTRY) + list(_ALIASES), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownEncoderError(
            f"unknown encoder {name!r}.{hint} Run `stfeat encoders` for the list, or pass "
            "'timm:NAME', 'hf-hub:ORG/NAME' or a local weights file."
        )
    return _REGISTRY[key][0]


class Encoder:
    """A built encoder: the model, its spec, and the device-side preprocessing.

    Crops arrive as uint8 (B, H, W, 3) or (B, 3, H, W) tensors already at ``spec.input_px``
    (stfeat reads an exact field of view in micrometres and resizes it once, at read time), so
    preprocessing is only "to float, /255, normalise", done on the device after a uint8 copy.

    Parameters
    ----------
    spec
        The encoder's spec (for ``tiny`` builds, a copy whose ``embed_dim`` is the reduced one).
    model
        Module mapping normalised float (B, 3, px, px) to (B, embed_dim).
    weights_id
        ``"sha256:<hex>"`` of the weights file, ``"random"`` (no weights loaded) or ``"none"``
        (an encoder without weights, e.g. ``classical``).
    """

    def __init__(self, spec: EncoderSpec, model: "torch.nn.Module", weights_id: str | None = None):
        self.spec = spec
        self.model = model.eval()
        self.weights_id = weights_id
        self.source: str | None = None  # where the weights came from (path or hub id), for logs

    def __repr__(self) -> str:
        return f"Encoder({self.spec.name!r}, embed_dim={self.embed_dim}, weights_id={self.weights_id!r})"

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    @property
    def device(self) -> "torch.device":
        import torch

        for t in self.model.parameters():
            return t.device
        for t in self.model.buffers():
            return t.device
        return torch.device("cpu")

    def to(self, device: "torch.device | str") -> "Encoder":
        """Move the model to ``device`` (channels_last for conv nets on CUDA)."""
        import torch

        device = torch.device(device)
        self.model.to(device)
        if self.spec.channels_last and device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        return self

    def preprocess(self, x_uint8: "torch.Tensor") -> "torch.Tensor":
        """uint8 (B,H,W,3) or (B,3,H,W) -> normalised float32 (B,3,H,W) on the same device."""
        import torch

        if x_uint8.ndim != 4:
            raise ValueError(f"expected a 4-d batch of crops, got shape {tuple(x_uint8.shape)}")
        if x_uint8.shape[-1] == 3 and x_uint8.shape[1] != 3:
            x_uint8 = x_uint8.permute(0, 3, 1, 2)
        if x_uint8.shape[1] != 3:
            raise ValueError(f"expected RGB crops (3 channels), got shape {tuple(x_uint8.shape)}")
        x = x_uint8.float().div_(255.0) if x_uint8.dtype == torch.uint8 else x_uint8.float()
        mean = torch.tensor(self.spec.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def __call__(self, x_uint8: "torch.Tensor") -> "torch.Tensor":
        """Embed a uint8 batch: preprocess on the model's device, forward in the spec's precision.

        Returns float32 (B, embed_dim) on the model's device. Float input is taken as already
        scaled to [0, 1].
        """
        import torch

        px = self.spec.input_px
        hw = tuple(x_uint8.shape[1:3]) if x_uint8.shape[-1] == 3 and x_uint8.shape[1] != 3 else tuple(x_uint8.shape[2:])
        if x_uint8.ndim == 4 and hw != (px, px):
            raise ValueError(
                f"encoder {self.spec.name!r} takes {px}x{px} crops, got {hw[0]}x{hw[1]}; "
                f"read crops with out_px={px} (spec.input_px)"
            )
        dev = self.device
        x = self.preprocess(x_uint8.to(dev, non_blocking=True))
        if self.spec.channels_last and dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.spec.precision)
        with torch.inference_mode():
            if dtype is not None and dev.type == "cuda":
                with torch.autocast(device_type="cuda", dtype=dtype):
                    out = self.model(x)
            else:
                out = self.model(x)
        if out.ndim != 2 or out.shape[1] != self.embed_dim:
            raise RuntimeError(
                f"encoder {self.spec.name!r} returned shape {tuple(out.shape)}, expected (B, {self.embed_dim})"
            )
        return out.float()

    def config(self) -> dict[str, Any]:
        """What identifies this encoder's features (used in the cache's config hash)."""
        return {"spec": self.spec.to_dict(), "weights_id": self.weights_id}
