"""Local weights: find them, read them safely, load them strictly, and fingerprint them.

* :func:`read_state_dict` reads ``.safetensors`` with safetensors and ``.pth/.pt/.bin/.ckpt`` with
  ``torch.load(weights_only=True)`` (no pickled code is ever executed).
* :func:`load_strict` loads a state dict with every key and shape checked; a mismatch is an
  :class:`~stfeat.errors.InputError` naming the file and the first offending keys.
* :func:`weights_sha256` hashes a file once and caches the digest by (path, mtime, size), in memory
  and in ``$STFEAT_CACHE_DIR/weights_sha256.json`` (default ``~/.cache/stfeat``).
* :func:`find_local_weights` looks up ``$STFEAT_WEIGHTS_DIR/<name>`` (a folder or a file).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

from stfeat.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# Preferred file names inside a weights folder (a Hugging Face snapshot or a user's folder).
PREFERRED_FILES = (
    "model.safetensors",
    "pytorch_model.safetensors",
    "pytorch_model.bin",
    "pytorch_model_vision.bin",
    "model.pth",
    "model.bin",
)
_CONTAINER_KEYS = ("state_dict", "model", "module", "model_state_dict", "teacher")
_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def resolve_weights_file(path: str | Path) -> Path:
    """The weights file for ``path``: the file itself, or the one weights file inside a folder.

    Raises
    ------
    InputError
        When the path is missing, is not a weights file, or a folder holds none or several.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(p, "weights path does not exist.", "check the path passed as weights= / --weights.")
    if p.is_file():
        if p.suffix.lower() not in WEIGHT_SUFFIXES:
            raise InputError(
                p,
                f"is not a weights file (suffix {p.suffix!r}).",
                f"pass a file ending in one of {', '.join(WEIGHT_SUFFIXES)} or a folder holding one.",
            )
        return p
    for name in PREFERRED_FILES:
        if (p / name).is_file():
            return p / name
    found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in WEIGHT_SUFFIXES)
    if len(found) == 1:
        return found[0]
    if not found:
        raise InputError(
            p,
            "folder holds no weights file.",
            f"put the weights ({', '.join(PREFERRED_FILES[:3])}) in it or pass the file itself.",
        )
    raise InputError(
        p,
        f"folder holds several weights files ({', '.join(f.name for f in found[:5])}).",
        "pass the file you mean with weights= / --weights.",
    )


def read_state_dict(path: str | Path) -> dict[str, "torch.Tensor"]:
    """Read a state dict from a weights file without executing pickled code.

    Containers such as ``{"state_dict": ...}`` or ``{"model": ...}`` are unwrapped and a common
    ``module.`` (DistributedDataParallel) prefix is stripped.
    """
    import torch

    p = resolve_weights_file(path)
    try:
        if p.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p), device="cpu")
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear message
        raise InputError(
            p,
            f"could not be read as weights ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}).",
            "check the file is complete (re-download it); pickles holding code are refused by "
            "torch.load(weights_only=True): re-save it as a plain state dict or .safetensors.",
        ) from None
    for _ in range(3):  # unwrap nested containers, e.g. {"model": {"state_dict": ...}}
        if isinstance(sd, Mapping) and not _all_tensors(sd):
            inner = next((sd[k] for k in _CONTAINER_KEYS if k in sd and isinstance(sd[k], Mapping)), None)
            if inner is None:
                break
            sd = inner
    if not isinstance(sd, Mapping) or not sd:
        raise InputError(p, "holds no state dict.", "pass a file saved with torch.save(model.state_dict()).")
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _all_tensors(d: Mapping) -> bool:
    import torch

    return all(isinstance(v, torch.Tensor) for v in d.values())


def _examples(keys: Iterable[str], n: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_strict(
    model: "torch.nn.Module",
    state_dict: Mapping[str, "torch.Tensor"],
    path: str | Path,
    *,
    what: str = "the encoder",
    ignore_prefixes: tuple[str, ...] = (),
    filter_fn: Callable[[dict, "torch.nn.Module"], dict] | None = None,
) -> None:
    """Load ``state_dict`` into ``model`` with every key and shape checked.

    Parameters
    ----------
    model
        The module to fill.
    state_dict
        Tensors by key, as read by :func:`read_state_dict`.
    path
        The file they came from (named in errors).
    what
        The encoder's name, for messages.
    ignore_prefixes
        Checkpoint keys deliberately left out (e.g. ``"fc."`` for a truncated ResNet's classifier).
        Only these are dropped; every other key must match.
    filter_fn
        Optional key/shape conversion ``(state_dict, model) -> state_dict`` applied first (timm's
        ``checkpoint_filter_fn`` style).
    """
    sd = dict(state_dict)
    if filter_fn is not None:
        sd = filter_fn(sd, model)
    if ignore_prefixes:
        sd = {k: v for k, v in sd.items() if not k.startswith(ignore_prefixes)}
    own = model.state_dict()
    missing = set(own) - set(sd)
    unexpected = set(sd) - set(own)
    shapes = [
        f"{k} {tuple(sd[k].shape)} in file vs {tuple(own[k].shape)} in model"
        for k in sorted(set(sd) & set(own))
        if tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_examples(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_examples(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:3])})")
        raise InputError(
            path,
            f"weights do not fit {what}: {', '.join(parts)}.",
            f"pass the weights file published for {what} (strict loading: every key must match), "
            "or choose the encoder these weights belong to.",
        )
    model.load_state_dict(sd, strict=True)
    log.info("loaded %d tensors into %s from %s", len(sd), what, path)


def _cache_file() -> Path:
    root = os.environ.get("STFEAT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "stfeat"
    )
    return Path(root) / "weights_sha256.json"


def _read_cache(path: Path) -> dict[str, str]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def weights_sha256(path: str | Path) -> str:
    """sha256 hex digest of a weights file, cached by (resolved path, mtime, size)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_mtime_ns, st.st_size)
    if key in _SHA_MEMO:
        return _SHA_MEMO[key]
    cache_path = _cache_file()
    ckey = f"{key[0]}|{key[1]}|{key[2]}"
    cache = _read_cache(cache_path)
    digest = cache.get(ckey)
    if digest is None:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        digest = h.hexdigest()
        cache = _read_cache(cache_path)  # re-read: another process may have added entries
        cache[ckey] = digest
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=0, sort_keys=True))
            os.replace(tmp, cache_path)
        except OSError as exc:  # a read-only home must not stop extraction
            log.debug("could not write the sha256 cache %s: %s", cache_path, exc)
    _SHA_MEMO[key] = digest
    return digest


def weights_id(path: str | Path | None) -> str:
    """``"sha256:<hex>"`` for a weights file, ``"random"`` for None."""
    return "random" if path is None else f"sha256:{weights_sha256(path)}"


def find_local_weights(names: Iterable[str]) -> Path | None:
    """First match of ``$STFEAT_WEIGHTS_DIR/<name>`` (a folder, or ``<name><suffix>``) for ``names``.

    Matching ignores case, so ``uni2-h``, ``UNI2-h`` or a hub repo's base name all work.
    """
    root = os.environ.get("STFEAT_WEIGHTS_DIR")
    if not root:
        return None
    base = Path(root).expanduser()
    if not base.is_dir():
        raise InputError(base, "STFEAT_WEIGHTS_DIR is not a folder.", "point it at a folder of per-encoder weights.")
    wanted: list[str] = []
    for n in names:
        if n and n.lower() not in wanted:
            wanted.append(n.lower())
    entries: dict[str, Path] = {}
    for e in sorted(base.iterdir()):  # case-insensitive: "UNI2-h/" serves "uni2-h"
        entries.setdefault(e.name.lower(), e)
    for n in wanted:
        d = entries.get(n)
        if d is not None and d.is_dir():
            return resolve_weights_file(d)
        for suf in WEIGHT_SUFFIXES:
            f = entries.get(f"{n}{suf}")
            if f is not None and f.is_file():
                return f
    return None
