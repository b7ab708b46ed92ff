"""The matching engine: decide whether an upload copies a registered work.

Public surface (import from here):

- :func:`build_engine` (settings -> :class:`Engine`), :class:`Engine`,
  :class:`Candidate`, :class:`WorkRef`: defined in ``matching.engine``.
- :func:`decode_image`, :class:`DecodedImage`: ``matching.decode``.
- errors: ``matching.errors``.

The engine names are loaded lazily so that importing ``matching.errors`` or
``matching.decode`` never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from matching.decode import DecodedImage, decode_image
from matching.errors import (
    DecodeError,
    ImageError,
    ImageTooComplex,
    ImageTooLarge,
    MatchingError,
    UnsupportedFormat,
)

if TYPE_CHECKING:
    from matching.engine import Candidate, Engine, WorkRef, build_engine

__all__ = [
    "Candidate",
    "DecodeError",
    "DecodedImage",
    "Engine",
    "ImageError",
    "ImageTooComplex",
    "ImageTooLarge",
    "MatchingError",
    "UnsupportedFormat",
    "WorkRef",
    "build_engine",
    "decode_image",
]

_ENGINE_NAMES = {"Candidate", "Engine", "WorkRef", "build_engine"}


def __getattr__(name: str) -> Any:
    if name in _ENGINE_NAMES:
        from matching import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'matching' has no attribute {name!r}")
