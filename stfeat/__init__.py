"""stfeat: spatial transcriptomics from H&E with cached foundation-model features.

The library is the product; the CLI, configs and notebooks are thin faces over these functions::

    import stfeat as st
    samples = st.read("runs/")                                    # folder, manifest, Space Ranger, HEST, h5ad
    feats = st.extract(samples, encoder="uni", scales_um=(112, 224, 448), cache_dir="cache")  # FeatureSet
    cv = st.cross_validate(feats, head=st.heads.RidgeCV(), genes="hvg:50", split="lopo")     # CVResult
    st.pl.pcc(cv); st.pl.maps(cv, "C3", genes=["ERBB2"])          # matplotlib figures
    model = st.fit(feats, head="ridge", genes="hvg:50")           # Model, refit on every sample
    model.save("runs/ridge"); st.Model.load("runs/ridge").predict("new_slide/")   # AnnData
    st.run("configs/her2st.yaml")                                 # what `stfeat run` does

Every name is imported lazily, so ``import stfeat`` (and ``stfeat --help``) stays fast and offline:
torch, faiss, lightgbm and scikit-learn load only when a function needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from stfeat.errors import InputError, StfeatError  # noqa: E402

# public name -> (module, attribute or None for the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "read": ("stfeat.io", "read"),
    "read_sample": ("stfeat.io", "read_sample"),
    "read_manifest": ("stfeat.io", "read_manifest"),
    "Sample": ("stfeat.io", "Sample"),
    "extract": ("stfeat.extraction", "extract"),
    "FeatureSet": ("stfeat.features", "FeatureSet"),
    "cross_validate": ("stfeat.crossval", "cross_validate"),
    "CVResult": ("stfeat.crossval", "CVResult"),
    "fit": ("stfeat.fitting", "fit"),
    "predict": ("stfeat.prediction", "predict"),
    "Model": ("stfeat.model", "Model"),
    "compare": ("stfeat.variants", "compare"),
    "similar_spots": ("stfeat.spot_index", "similar_spots"),
    "create_encoder": ("stfeat.encoders", "create_encoder"),
    "list_encoders": ("stfeat.encoders", "list_encoders"),
    "run": ("stfeat.config", "run"),
    "heads": ("stfeat.heads", None),
    "pl": ("stfeat.pl", None),
    "datasets": ("stfeat.datasets", None),
    "suffstats": ("stfeat.suffstats", None),
}

__all__ = ["__version__", "StfeatError", "InputError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        value = mod if attr is None else getattr(mod, attr)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'stfeat' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
