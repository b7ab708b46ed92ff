"""Site sources: one module per site kind, all behind :class:`~crawler.sources.base.Source`."""

from crawler.sources.base import Cursor, Source, StreamingSource, UploadRecord

__all__ = ["Cursor", "Source", "StreamingSource", "UploadRecord"]
