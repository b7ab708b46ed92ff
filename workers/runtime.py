"""The workers' per-process services: a cache of one :class:`registry.root.Services`.

Built once per process from the settings the entry point loaded, and rebuilt
after a fork (a SQLAlchemy pool or a model must not be shared across
processes). The matcher loads lazily, so processes that never analyse (web,
crawlers) never load a model.
"""

from __future__ import annotations

from config.settings import Settings
from registry.root import Services

__all__ = ["Runtime", "get_runtime", "set_runtime_settings"]

#: What :func:`get_runtime` returns (the name the tasks have always used).
Runtime = Services

_settings: Settings | None = None
_runtime: Services | None = None


def set_runtime_settings(settings: Settings) -> None:
    """Called by the entry point; workers inherit it across fork."""
    global _settings, _runtime
    _settings = settings
    _runtime = None


def get_runtime() -> Services:
    global _runtime, _settings
    if _runtime is None:
        if _settings is None:
            from config.settings import load_settings

            _settings = load_settings()
        _runtime = Services.build(_settings)
    else:
        _runtime = _runtime.for_this_process()
    return _runtime
