"""What identifies an encoder's features, computed WITHOUT building the model (the cache's config hash)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stfeat import cache as C
from stfeat.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from stfeat.encoders.base import Encoder

_SPEC_KEYS = ("name", "arch", "embed_dim", "input_px", "mean", "std", "pooling", "precision", "model_kwargs")


# ---------------------------------------------------------------- encoder identity (no model built)
def _spec_subset(spec: Any) -> dict[str, Any]:
    d = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
    return {k: d.get(k) for k in _SPEC_KEYS}


@dataclass
class _Identity:
    name: str
    tag: str
    weights_id: str
    identity: dict[str, Any]
    input_px: int | None

    @property
    def hash(self) -> str:
        return C.config_hash(self.identity)


def encoder_identity(encoder: "str | Encoder", *, weights: str | Path | None = None, pretrained: bool = True
                     ) -> _Identity:
    """What identifies an encoder's features, computed WITHOUT building the model.

    A registry name contributes its spec (architecture, input size, normalisation, pooling,
    precision); a weights file its sha256; default pretrained weights their hub id; random weights
    (seeded) the word "random". The config hash of the cache is the hash of this dict.

    A weights file's digest is memoised by :func:`stfeat.encoders._weights.weights_sha256` (the same
    fingerprint ``Encoder.weights_id`` records).
    """
    from stfeat.encoders.base import Encoder

    if isinstance(encoder, Encoder):
        ident = {"encoder": encoder.spec.name, "spec": _spec_subset(encoder.spec),
                 "weights_id": str(encoder.weights_id)}
        return _Identity(encoder.spec.name, C.encoder_tag(encoder.spec.name), str(encoder.weights_id), ident,
                         int(encoder.spec.input_px))
    name = str(encoder)
    spec = None
    if weights is None and Path(name).is_file():  # a weights file given as the encoder
        weights = name
    try:
        from stfeat.encoders import get_spec

        spec = get_spec(name)
    except (KeyError, ImportError, AttributeError):
        spec = None
    # the encoders package's own fingerprint, so cache and Encoder.weights_id agree
    from stfeat.encoders._weights import find_local_weights, resolve_weights_file, weights_id

    if weights is None and pretrained and spec is not None and getattr(spec, "family", "") != "classical":
        hub_base = spec.hub_id.rsplit("/", 1)[-1] if spec.hub_id else ""
        from stfeat.encoders.base import aliases_of

        weights = find_local_weights([spec.name, *aliases_of(spec.name), hub_base])
    if weights is not None:
        wp = Path(weights).expanduser()
        if not wp.exists():
            raise InputError(wp, "the weights file does not exist.", "check the --weights path.")
        wp = resolve_weights_file(wp)
        wid = weights_id(wp)
    elif pretrained:
        wid = f"pretrained:{getattr(spec, 'hub_id', None) or name}"
    else:
        wid = "random:seed0"
    resolved = spec.name if spec is not None else name
    ident = {"encoder": resolved, "spec": _spec_subset(spec) if spec is not None else None, "weights_id": wid}
    return _Identity(resolved, C.encoder_tag(resolved), wid, ident,
                     int(spec.input_px) if spec is not None else None)
