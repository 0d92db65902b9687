"""Encoder registry core: :class:`EncoderSpec`, :class:`Encoder` and ``@register_encoder``.

Model files (``uni.py``, ``virchow.py``, ...) register small factory functions with
:func:`register_encoder`, in the style of timm's ``@register_model``. Nothing here touches the
network or imports torch at import time.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["needs"] = list(self.needs)
        return d


# name -> (spec, factory). A factory takes (spec, weights: Path | None, **kwargs) and returns nn.Module
# mapping a normalised float (B, 3, input_px, input_px) tensor to (B, embed_dim) embeddings.
_REGISTRY: dict[str, tuple[EncoderSpec, Callable[..., Any]]] = {}
_ALIASES: dict[str, str] = {}


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


def _resolve_name(name: str) -> str | None:
    key = name.lower()
    key = _ALIASES.get(key, key)
    return key if key in _REGISTRY else None


def list_encoders(pattern: str = "*") -> list[EncoderSpec]:
    """Registered encoder specs whose name matches a shell-style ``pattern`` (e.g. ``"uni*"``)."""
    from stfeat.encoders import _load_all  # noqa: F401  (registers every family)

    return [s for k, (s, _) in sorted(_REGISTRY.items()) if fnmatch.fnmatch(k, pattern.lower())]


def get_spec(name: str) -> EncoderSpec:
    from stfeat.encoders import _load_all  # noqa: F401

    key = _resolve_name(name)
    if key is None:
        import difflib

        close = difflib.get_close_matches(name.lower(), list(_REGISTRY) + list(_ALIASES), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(
            f"unknown encoder {name!r}.{hint} Run `stfeat encoders` for the list, or pass "
            "'timm:NAME', 'hf-hub:ORG/NAME' or a local weights file."
        )
    return _REGISTRY[key][0]


class Encoder:
    """A built encoder: the model, its spec, and the GPU-side preprocessing.

    Crops arrive as uint8 (B, H, W, 3) or (B, 3, H, W) tensors already at ``spec.input_px``
    (stfeat reads an exact field of view in micrometres and resizes it once, at read time), so
    preprocessing is only "to float, /255, normalise", done on the device after a uint8 copy.
    """

    def __init__(self, spec: EncoderSpec, model: "torch.nn.Module", weights_id: str | None = None):
        self.spec = spec
        self.model = model
        self.weights_id = weights_id  # sha256 of the weights file, hub revision, or "random"/"none"

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    def to(self, device: "torch.device | str") -> "Encoder":
        self.model.to(device)
        return self

    def preprocess(self, x_uint8: "torch.Tensor") -> "torch.Tensor":
        import torch

        if x_uint8.ndim != 4:
            raise ValueError(f"expected a 4-d batch of crops, got shape {tuple(x_uint8.shape)}")
        if x_uint8.shape[-1] == 3 and x_uint8.shape[1] != 3:
            x_uint8 = x_uint8.permute(0, 3, 1, 2)
        x = x_uint8.float().div_(255.0)
        mean = torch.tensor(self.spec.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def __call__(self, x_uint8: "torch.Tensor") -> "torch.Tensor":
        """Embed a uint8 batch: preprocess, forward under the spec's precision, return float32."""
        import torch

        x = self.preprocess(x_uint8)
        dev = x.device.type
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.spec.precision)
        with torch.inference_mode():
            if dtype is not None and dev == "cuda":
                with torch.autocast(device_type="cuda", dtype=dtype):
                    out = self.model(x)
            else:
                out = self.model(x)
        return out.float()

    def config(self) -> dict[str, Any]:
        """What identifies this encoder's features (used in the cache's config hash)."""
        return {"spec": self.spec.to_dict(), "weights_id": self.weights_id}
