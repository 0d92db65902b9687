"""Encoder registry: pathology foundation models, ImageNet baselines and a no-weights encoder.

>>> from stfeat.encoders import create_encoder, list_encoders
>>> [s.name for s in list_encoders("virchow*")]
['virchow', 'virchow2']
>>> enc = create_encoder("classical")          # no download; "uni", "timm:NAME", "hf-hub:ORG/NAME", a path...
>>> enc.spec.embed_dim
96

Family modules register themselves with :func:`register_encoder` when :mod:`stfeat.encoders._load_all`
is first imported (by :func:`list_encoders`, :func:`get_spec` or :func:`create_encoder`), so importing
this package stays light: no torch, no network.
"""

from __future__ import annotations

from stfeat.encoders._hub import HubAccessError, MissingDependencyError
from stfeat.encoders.base import (
    Encoder,
    EncoderSpec,
    UnknownEncoderError,
    get_spec,
    list_encoders,
    register_encoder,
)
from stfeat.encoders.create import create_encoder

__all__ = [
    "Encoder",
    "EncoderSpec",
    "HubAccessError",
    "MissingDependencyError",
    "UnknownEncoderError",
    "create_encoder",
    "get_spec",
    "list_encoders",
    "register_encoder",
]
