"""Import every family module so their ``@register_encoder`` calls run (once, on first use)."""

from stfeat.encoders import (  # noqa: F401
    baselines,
    bioptimus,
    ciga,
    classical,
    ctranspath,
    dinov2_family,
    genbio,
    gigapath,
    hibou,
    kaiko,
    lunit,
    mahmood,
    midnight,
    musk,
    owkin,
    paige,
)
