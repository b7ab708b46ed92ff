"""Errors raised by the matching engine.

Hierarchy (catch the base class to keep a worker alive on any bad image)::

    MatchingError
    ├── ImageError                 the bytes of one image cannot be used
    │   ├── DecodeError            corrupt, truncated or malformed data
    │   ├── ImageTooLarge          over the pixel cap (decompression bomb)
    │   ├── ImageTooComplex        over the render budget (nesting, filters, CPU, memory, time)
    │   └── UnsupportedFormat      not an image format artwatch accepts
    ├── EmbedderError              the CLIP model cannot be loaded or run
    └── IndexError_                the vector index cannot be reached or used
        └── IndexLocked            another process held the embedded index too long

Every ``ImageError`` message starts with the file name the caller gave (or
``<bytes>`` when none was given), so a log line or CLI error says which file
failed.
"""

from __future__ import annotations

__all__ = [
    "DecodeError",
    "EmbedderError",
    "ImageError",
    "ImageTooComplex",
    "ImageTooLarge",
    "IndexError_",
    "IndexLocked",
    "MatchingError",
    "UnsupportedFormat",
]


class MatchingError(Exception):
    """Base class of every error the matching engine raises on purpose."""


class ImageError(MatchingError):
    """One image cannot be used. ``name`` is the file it came from."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name or "<bytes>"
        self.reason = reason
        super().__init__(f"{self.name}: {reason}")


class DecodeError(ImageError):
    """The data is corrupt, truncated or malformed."""


class ImageTooLarge(ImageError):
    """The image would decode to more pixels than allowed (a decompression bomb)."""


class ImageTooComplex(ImageError):
    """Rendering the image would cost more than its budget: a hostile or pathological SVG."""


class UnsupportedFormat(ImageError):
    """The data is not in a format artwatch decodes."""


class EmbedderError(MatchingError):
    """The image embedding model cannot be loaded or run."""


class IndexError_(MatchingError):
    """The vector index cannot be reached or used."""


class IndexLocked(IndexError_):
    """The embedded index stayed locked by another process past the timeout."""
