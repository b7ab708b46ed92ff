"""What the index holds, for the registry's rebuild (:func:`registry.service.rebuild_index`)."""

from __future__ import annotations

from typing import Any

__all__ = ["known_work_ids"]


def known_work_ids(engine: Any) -> list[int]:
    """The work ids ``engine``'s index holds (none when the index cannot list them)."""
    index = getattr(engine, "index", None)
    ids = getattr(index, "work_ids", None)
    if callable(ids):
        ids = ids()
    return [int(i) for i in ids] if ids is not None else []
