"""YAML reading for manifests and configs: ``yaml.safe_load`` behind a nesting-depth guard.

PyYAML composes nested nodes recursively, so a file of 10,000 nested lists ends in a RecursionError.
The event stream is read first (iteratively) and a file nested deeper than :data:`MAX_DEPTH` is
refused with an :class:`~stfeat.errors.InputError` before anything is composed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stfeat.errors import InputError

MAX_DEPTH = 64


def load_yaml(path: Path, *, what: str = "file", max_depth: int = MAX_DEPTH) -> Any:
    """``yaml.safe_load`` of ``path``; InputError for unreadable text, invalid YAML or deep nesting."""
    import yaml

    text = read_yaml_text(path, what=what, max_depth=max_depth)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(path, f"the {what} is not valid YAML ({exc}).", "fix the YAML syntax.") from None
    except RecursionError:
        raise InputError(path, f"the {what} nests too deeply to read.", f"flatten the {what}.") from None


def read_yaml_text(path: Path, *, what: str = "file", max_depth: int = MAX_DEPTH) -> str:
    """The UTF-8 text of a YAML file, refused (InputError) when it nests deeper than ``max_depth``.

    Syntax errors are left to the caller's ``yaml.safe_load``, which words them.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"the {what} is not UTF-8 text ({exc}).", "save it as UTF-8.") from None
    except OSError as exc:
        raise InputError(path, f"the {what} cannot be read ({exc.strerror or exc}).", "check the path and its permissions.") from None
    depth = 0
    try:
        for ev in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > max_depth:
                    raise InputError(path, f"the {what} nests deeper than {max_depth} levels (at line "
                                     f"{ev.start_mark.line + 1}).", f"flatten the {what}: stfeat's {what}s need a "
                                     "few levels at most.")
            elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.YAMLError:
        pass  # the caller's safe_load reports the syntax error with its own words
    return text
