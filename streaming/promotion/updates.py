"""The model-updates message: what the governor announces at every switch of LIVE.

The governor (:meth:`streaming.promotion.governor.Governor._announce`) sends one JSON object
per promotion or rollback to ``updates_topic``, keyed by the version number::

    {"action": "promote", "version": 3, "parent": 2, "path": "/data/store/versions/3",
     "sha256": "<sha256 of versions/3/manifest.json>", "objective": "reward", "metrics": {...},
     "reason": "...", "at": "2026-11-28T10:00:00Z", "switch": {...}}

A follower reads only what it needs to act and to log: the action, the version, its parent and
the manifest's sha256. The message says that LIVE changed; the store's ``LIVE`` file stays the
truth, so a follower that reads a stale or duplicated message still serves what LIVE names.

Example:
    >>> update = decode_update(b'{"action": "rollback", "version": 1, "parent": 2, '
    ...                        b'"sha256": "ab12", "path": "/s/versions/1"}')
    >>> update.action, update.version, update.parent
    ('rollback', 1, 2)
    >>> decode_update(b'{"action": "promote"}')
    Traceback (most recent call last):
    ...
    ValueError: a model-updates message needs an integer 'version' >= 1, got null
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeGuard

from streaming.errors import json_kind

ACTIONS = ("promote", "rollback")


@dataclass(frozen=True, slots=True)
class ModelUpdate:
    """One announced switch of LIVE: ``action`` (``promote`` or ``rollback``) to ``version``."""

    action: str
    version: int
    parent: int | None
    sha256: str | None
    path: str | None


def decode_update(value: bytes | None) -> ModelUpdate:
    """Read a model-updates message; :class:`ValueError` says what is wrong (never its text)."""
    if value is None:
        raise ValueError("a model-updates message needs a JSON object, got an empty message")
    try:
        obj: Any = json.loads(value)
    except (ValueError, RecursionError):
        raise ValueError("a model-updates message must be JSON; this one does not parse") from None
    if not isinstance(obj, dict):
        raise ValueError(f"a model-updates message must be a JSON object, got {type(obj).__name__}")
    version = obj.get("version")
    if not _is_int(version) or version < 1:
        shown = str(version) if _is_int(version) else json_kind(version)
        raise ValueError(f"a model-updates message needs an integer 'version' >= 1, got {shown}")
    action = obj.get("action")
    if action not in ACTIONS:
        shown = repr(action[:20]) if isinstance(action, str) else json_kind(action)
        raise ValueError(
            f"a model-updates message's 'action' must be one of {', '.join(ACTIONS)}, got {shown}"
        )
    parent = obj.get("parent")
    sha256, path = obj.get("sha256"), obj.get("path")
    return ModelUpdate(
        action=action,
        version=version,
        parent=parent if _is_int(parent) else None,
        sha256=sha256 if isinstance(sha256, str) else None,
        path=path if isinstance(path, str) else None,
    )


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
