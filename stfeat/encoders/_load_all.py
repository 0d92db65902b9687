"""Import every family module so their ``@register_encoder`` calls run (once, on first use)."""

from stfeat.encoders import (  # noqa: F401
    baselines,
    bioptimus,
    classical,
    ctranspath,
    gigapath,
    hibou,
    kaiko,
    lunit,
    mahmood,
    midnight,
    owkin,
    paige,
)
