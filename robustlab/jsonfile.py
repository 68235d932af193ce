"""JSON in robustlab: values made ready for it, and reading a file that a user, a full disk or a crash may have
damaged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from robustlab.errors import DataError

__all__ = ["json_ready", "read_json"]


def read_json(path: Path, *, what: str, fix: str, kind: type = object) -> Any:
    """The document in ``path``; a :class:`DataError` naming the file, what it is and ``fix`` when it is unreadable.

    Args:
        path: the file.
        what: what the file is, for the message (``"manifest"``).
        fix: what the user can do (``"delete the folder and generate again"``).
        kind: the JSON type the document must have (``dict``, ``list``); ``object`` accepts any.
    """
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as error:
        raise DataError(f"cannot read {what} {path}: {error.strerror or error}; {fix}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{what} {path} is damaged ({error}); {fix}") from None
    if not isinstance(data, kind):
        raise DataError(f"{what} {path} holds a {type(data).__name__}, not a {kind.__name__}; {fix}")
    return data


def json_ready(value: Any) -> Any:
    """Tuples to lists and enums to strings, recursively."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value.value if hasattr(value, "value") and not isinstance(value, (int, float, str)) else value
