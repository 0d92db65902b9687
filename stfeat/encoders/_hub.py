"""Hugging Face Hub access and optional packages, with errors that say what to do.

Nothing here touches the network at import. :func:`hub_download` is the only place stfeat calls
``hf_hub_download``; with ``HF_HUB_OFFLINE=1`` it only looks in the local cache and fails fast.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from stfeat.errors import InputError, StfeatError

log = logging.getLogger(__name__)


class HubAccessError(InputError):
    """Weights could not be fetched from the Hugging Face Hub (gated, no token, offline, ...)."""


class MissingDependencyError(StfeatError, ImportError):
    """An optional package an encoder needs is not installed; the message gives the pip command."""


def require(module: str, pip_name: str | None = None, *, why: str = "") -> Any:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``pip install <pip_name>``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if getattr(exc, "name", module) not in (module, module.split(".")[0]):
            raise  # the package is there but broken: show the real error
        pkg = pip_name or module
        raise MissingDependencyError(
            f"{why or 'this encoder'} needs the package {module!r}, which is not installed. "
            f"Fix: pip install {pkg}"
        ) from None


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for no network."""
    return any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def access_fix(repo_id: str, name: str, gated: bool) -> str:
    """The advice printed whenever hub weights cannot be had."""
    gate = f"request access on https://huggingface.co/{repo_id} (the model is gated), then " if gated else ""
    return (
        f"{gate}run `huggingface-cli login` (or `hf auth login`) or set HF_TOKEN; or get the weights onto "
        f"this machine and pass --weights PATH (weights=PATH), or put them in $STFEAT_WEIGHTS_DIR/{name}/"
    )


def hub_download(repo_id: str, filenames: Sequence[str], *, name: str, gated: bool = False,
                 repo_type: str | None = None) -> Path:
    """Fetch the first of ``filenames`` that ``repo_id`` has (or find it in the local HF cache).

    Parameters
    ----------
    repo_id
        ``ORG/NAME`` on the Hugging Face Hub.
    filenames
        Candidate files, tried in order (e.g. ``model.safetensors`` then ``pytorch_model.bin``).
    name
        The stfeat encoder name (for messages and the ``$STFEAT_WEIGHTS_DIR`` hint).
    gated
        Whether the model page asks users to accept terms (changes the advice).
    repo_type
        ``None`` (a model repo) or ``"dataset"``.

    Raises
    ------
    HubAccessError
        Gated without access, no token, offline without a cached copy, or the repo lacks every file.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        LocalTokenNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        from huggingface_hub.errors import RemoteEntryNotFoundError as _RemoteMissing
    except ImportError:  # older huggingface_hub
        from huggingface_hub.errors import EntryNotFoundError as _RemoteMissing  # type: ignore

    offline = hub_offline()
    fix = access_fix(repo_id, name, gated)
    not_cached = []
    for fn in filenames:
        try:
            path = hf_hub_download(repo_id, fn, repo_type=repo_type, local_files_only=offline)
            log.info("weights for %s: %s/%s -> %s", name, repo_id, fn, path)
            return Path(path)
        except GatedRepoError:
            raise HubAccessError(
                None, f"{name}: no access to the gated model {repo_id} with the current token.", fix
            ) from None
        except RepositoryNotFoundError as exc:  # the hub answers 401/404 alike without a valid token
            raise HubAccessError(
                None, f"{name}: {repo_id} not found or not accessible ({_status(exc)}).", fix
            ) from None
        except LocalEntryNotFoundError:
            not_cached.append(fn)
            continue
        except _RemoteMissing:
            continue
        except LocalTokenNotFoundError:
            raise HubAccessError(None, f"{name}: {repo_id} needs a Hugging Face token and none is set.", fix) from None
        except HfHubHTTPError as exc:
            raise HubAccessError(None, f"{name}: download of {repo_id}/{fn} failed ({_status(exc)}).", fix) from None
        except OSError as exc:  # network unreachable, DNS, proxies
            raise HubAccessError(
                None, f"{name}: cannot reach the Hugging Face Hub for {repo_id} ({exc}).", fix
            ) from None
    if not_cached:
        why = "HF_HUB_OFFLINE=1 is set and" if offline else "the hub could not be reached and"
        raise HubAccessError(
            None, f"{name}: {why} {repo_id} ({', '.join(not_cached)}) is not in the local cache.", fix
        )
    raise HubAccessError(
        None,
        f"{name}: {repo_id} has none of the expected weight files ({', '.join(filenames)}).",
        "pass the weights file with --weights PATH.",
    )


def hub_config(repo_id: str, *, name: str, gated: bool = False) -> dict[str, Any] | None:
    """The repo's timm ``config.json`` (parsed), or None when it has none."""
    import json

    try:
        path = hub_download(repo_id, ["config.json"], name=name, gated=gated)
    except HubAccessError as exc:
        if "none of the expected" in exc.problem:
            return None
        raise
    return json.loads(path.read_text())


def _status(exc: Exception) -> str:
    resp = getattr(exc, "response", None)
    code = getattr(resp, "status_code", None)
    first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    return f"HTTP {code}: {first}" if code else first
