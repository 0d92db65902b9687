"""Save and load fitted heads without unpickling code.

Layout of a saved head (a folder)::

    head.json           {"format": "stfeat-head", "format_version": 1, "head": "<name in HEADS>",
                         "params": get_params(), "meta": fitted scalars, "stfeat_version": ...}
    arrays.safetensors  fitted arrays (coefficients, scalers, torch state_dict tensors)
    text_<key>.txt      text state (LightGBM model dumps), one file per key
    heads/<key>/        sub-heads of a composite head (the ensemble's base heads), each saved the same way;
                        head.json lists their keys under "children"

Loading looks the class up by name in :data:`stfeat.heads.HEADS` (never an arbitrary import path),
builds it from its parameters and restores the arrays: nothing in the folder is executed. Heads also
pickle (``joblib.dump``) for convenience; only unpickle files you or stfeat wrote.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from stfeat.errors import InputError

logger = logging.getLogger(__name__)

FORMAT = "stfeat-head"
FORMAT_VERSION = 1


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def save_head(head, path) -> Path:
    """Write a fitted head to the folder ``path`` (created; replaced atomically if present).

    Parameters
    ----------
    head
        A fitted head from :data:`stfeat.heads.HEADS`.
    path
        Destination folder.

    Returns
    -------
    Path
        The folder written.
    """
    from safetensors.numpy import save_file
    from sklearn.utils.validation import check_is_fitted

    import stfeat

    check_is_fitted(head, head._fitted_attr)
    path = Path(path)
    meta, arrays, texts = head._get_state()
    children = head._children() if hasattr(head, "_children") else {}
    params = _jsonable(head.get_params(deep=False))
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "head": head.name,
           "class": type(head).__name__, "params": params, "meta": _jsonable(meta),
           "stfeat_version": stfeat.__version__}
    if children:
        doc["children"] = list(children)
    try:
        json.dumps(doc)
    except TypeError as err:
        raise ValueError(f"{type(head).__name__} has a parameter that cannot be saved as JSON "
                         f"({err}). Fix: use plain numbers, strings and lists as parameters, "
                         "or joblib.dump the head instead.") from err
    from stfeat._faults import named_write_errors
    from stfeat._safe_write import atomic_path
    from stfeat.model import SAVE_FIX

    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    # a fresh temporary folder of ours, renamed over ``path``; removed on any error (a full disk is a
    # ResourceError naming the file)
    with named_write_errors(path, what="the head", fix=SAVE_FIX), atomic_path(path, folder=True) as tmp:
        with named_write_errors(tmp / "arrays.safetensors", what="the head's arrays", fix=SAVE_FIX):
            save_file(arrays, str(tmp / "arrays.safetensors"))
        for key, text in texts.items():
            with named_write_errors(tmp / f"text_{key}.txt", what="the head's text state", fix=SAVE_FIX):
                (tmp / f"text_{key}.txt").write_text(text)
        for key, child in children.items():
            save_head(child, tmp / "heads" / key)
        with named_write_errors(tmp / "head.json", what="the head's description", fix=SAVE_FIX):
            (tmp / "head.json").write_text(json.dumps(doc, indent=1))
    logger.info("saved %s head to %s", head.name, path)
    return path


def load_head(path):
    """Read a head written by :func:`save_head`.

    Parameters
    ----------
    path
        Folder written by :func:`save_head` (or a head's ``save``).

    Returns
    -------
    BaseHead
        The fitted head, ready to ``predict``.

    Raises
    ------
    InputError
        When the folder is missing, incomplete or not a saved stfeat head.
    """
    from safetensors.numpy import load_file

    from stfeat.heads import HEADS

    path = Path(path)
    meta_file = path / "head.json"
    if not meta_file.is_file():
        raise InputError(path, "is not a saved stfeat head (no head.json).",
                         "point to a folder written by stfeat.heads.save_head or `stfeat fit`.")
    try:
        doc = json.loads(meta_file.read_text())
    except json.JSONDecodeError as err:
        raise InputError(meta_file, f"is not valid JSON ({err}).", "save the head again.") from err
    if doc.get("format") != FORMAT:
        raise InputError(meta_file, f"has format {doc.get('format')!r}, expected {FORMAT!r}.",
                         "point to a folder written by stfeat.heads.save_head.")
    if int(doc.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(meta_file, f"was written by a newer stfeat (format version "
                         f"{doc['format_version']}).", "upgrade stfeat.")
    name = doc.get("head")
    if name not in HEADS:
        raise InputError(meta_file, f"names an unknown head {name!r}.",
                         f"use one of {sorted(HEADS)} or upgrade stfeat.")
    arrays_file = path / "arrays.safetensors"
    if not arrays_file.is_file():
        raise InputError(path, "has no arrays.safetensors (incomplete save).", "save the head again.")
    arrays = load_file(str(arrays_file))
    texts = {p.name[len("text_"):-len(".txt")]: p.read_text() for p in path.glob("text_*.txt")}
    # JSON has no tuples: a parameter whose default is a tuple (the ensemble's heads) comes back as one
    defaults = HEADS[name]().get_params(deep=False)
    params = {k: tuple(v) if isinstance(v, list) and isinstance(defaults.get(k), tuple) else v
              for k, v in doc["params"].items()}
    head = HEADS[name](**params)
    head._set_state(doc["meta"], arrays, texts)
    keys = doc.get("children") or []
    if keys or hasattr(head, "_set_children"):
        if not all(isinstance(k, str) and k and "/" not in k and "\\" not in k and not k.startswith(".")
                   for k in keys):
            raise InputError(meta_file, f"lists invalid sub-head folders {keys!r}.", "save the head again.")
        head._set_children({k: load_head(path / "heads" / k) for k in keys})
    return head
