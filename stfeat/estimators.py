"""Heads applied to a FeatureSet: build an estimator from a name or an object, build its inputs, fit, predict.

The one place that knows how a head is fed. Flat heads take ``X`` (scales concatenated, optionally the
neighbours' mean appended); token heads (their ``fit`` accepts ``rel_pos``) take token tensors. Optional inputs
are passed by NAME to the heads whose ``fit``/``predict`` accept them: ``rel_pos``, ``token_type``, the padding
mask (``mask``/``padding_mask``: True = padding; ``token_mask``: True = a valid token), ``coords_um`` (spot
centres in micrometres), ``sample_ids`` (the sample of each row) and ``groups`` (grouped inner validation).
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import numpy as np


def _params(method: Any) -> set[str]:
    try:
        return set(inspect.signature(method).parameters)
    except (TypeError, ValueError):
        return set()


def wants_tokens(est: Any) -> bool:
    """True for heads that take token tensors (their ``fit`` accepts ``rel_pos``)."""
    return "rel_pos" in _params(est.fit)


def head_name(head: Any) -> str:
    """The name of a head: the registry name, or the estimator's ``name`` / class name."""
    return head if isinstance(head, str) else getattr(head, "name", type(head).__name__.lower())


def make_estimator(head: Any, params: dict | None = None, seed: int = 0):
    """A fresh, unfitted estimator: a registry name (``"ridge"``) or a clone of an estimator object.

    ``seed`` becomes ``random_state`` of a named head that has one (unless ``params`` sets it).
    """
    from sklearn.base import clone

    if isinstance(head, str):
        from stfeat.heads import HEADS, make_head

        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; available: {', '.join(sorted(HEADS))}")
        params = dict(params or {})
        if "random_state" in HEADS[head]().get_params() and "random_state" not in params:
            params["random_state"] = seed
        return make_head(head, **params)
    est = clone(head)
    if params:
        est.set_params(**params)
    return est


def layout_for(est: Any, fs: Any, *, k_neighbors: int = 8, neighbor_mean: bool = False,
               neighbor_scale: float | str | None = None) -> dict:
    """How ``est`` is fed from ``fs``: recorded in the model, so predict builds the same inputs."""
    tokens = wants_tokens(est)
    out = {"kind": "tokens" if tokens else "flat", "scales": list(fs.scales), "k_neighbors": int(k_neighbors),
           "neighbor_mean": bool(neighbor_mean and not tokens),
           "neighbor_scale": None if neighbor_scale is None else f"{float(neighbor_scale):g}", "dim": fs.dim,
           "standardize": getattr(fs, "standardize", "none")}
    if tokens and getattr(est, "patch_tokens", False):  # M2OST's patch tokens from the cache (stfeat.patch_tokens)
        from stfeat.errors import InputError

        grids = {s: fs.samples[s].token_grid for s in fs.sample_ids}
        if not all(grids.values()) or len(set(grids.values())) > 1:
            raise InputError(None, f"patch_tokens=True needs caches with patch tokens of one grid; the samples have "
                             f"grids {grids} (0 = none).",
                             "extract every sample with `stfeat extract ... --tokens G` and load ENCODER+tokG.")
        out["patch_tokens"] = True
        out["tokens_grid"] = next(iter(grids.values()))
    return out


def sample_inputs(sf: Any, layout: dict) -> dict[str, Any]:
    """Inputs of one sample's spots (a :class:`stfeat.features.SampleFeatures`) under ``layout``.

    ``layout["standardize"] == "slide"`` standardises the sample with its own statistics (or
    ``sf.standardize_stats``); layouts without the key (older models) mean ``"none"``.
    """
    from stfeat.head_inputs import flat_features, token_features

    std = layout.get("standardize", "none")
    extra = {"coords_um": sf.coords_um, "sample_ids": np.full(sf.n_spots, sf.sample_id, dtype=object)}
    if layout["kind"] == "tokens":
        if layout.get("patch_tokens") and sf.token_grid != layout.get("tokens_grid"):
            from stfeat.errors import InputError

            raise InputError(sf.source, f"the model reads {layout.get('tokens_grid')} x {layout.get('tokens_grid')} "
                             f"patch tokens, but the cache of {sf.sample_id} holds grid {sf.token_grid} (0 = none).",
                             f"extract it with --tokens {layout.get('tokens_grid')} (the model's encoder folder).")
        t = token_features(sf, layout["scales"], k=layout["k_neighbors"], neighbor_scale=layout.get("neighbor_scale"),
                           standardize=std, patch_tokens=bool(layout.get("patch_tokens")))
        return {"X": t["X"], "rel_pos": t["rel_pos"], "token_type": t["token_type"], "mask": t["mask"], **extra}
    return {"X": flat_features(sf, layout["scales"], neighbor_mean=layout["neighbor_mean"],
                               k=layout["k_neighbors"], standardize=std), **extra}


def model_inputs(fs: Any, ids: Sequence[str], layout: dict) -> dict[str, Any]:
    """Inputs of the spots of samples ``ids`` of ``fs``, rows in sample order."""
    parts = [sample_inputs(fs.samples[s], layout) for s in ids]
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "token_type"}
    if "token_type" in parts[0]:
        out["token_type"] = parts[0]["token_type"]
    return out


def _optional_kwargs(method: Any, inputs: dict) -> dict:
    accepted = _params(method)
    kwargs = {k: v for k, v in inputs.items() if k not in ("X", "mask") and k in accepted}
    if "mask" in inputs:
        if "token_mask" in accepted:
            kwargs["token_mask"] = ~inputs["mask"]
        elif "mask" in accepted:
            kwargs["mask"] = inputs["mask"]
        elif "padding_mask" in accepted:
            kwargs["padding_mask"] = inputs["mask"]
    return kwargs


def fit_estimator(est: Any, inputs: dict, Y: np.ndarray, groups: np.ndarray | None = None):
    """``est.fit(X, Y, **the optional inputs it accepts)``; ``groups`` for grouped inner validation too."""
    kwargs = _optional_kwargs(est.fit, inputs)
    if groups is not None and "groups" in _params(est.fit):
        kwargs["groups"] = groups
    return est.fit(inputs["X"], Y, **kwargs)


def predict_estimator(est: Any, inputs: dict) -> np.ndarray:
    """``est.predict(X, **the optional inputs it accepts)`` as float32 (n, g)."""
    P = np.asarray(est.predict(inputs["X"], **_optional_kwargs(est.predict, inputs)), dtype=np.float32)
    return P.reshape(len(P), -1)
