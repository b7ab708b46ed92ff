"""Small named documents that every process shares: score calibration, host override, secret key.

A :class:`DocumentStore` holds a fixed set of names (:data:`DOCUMENT_NAMES`),
each a whole document of bytes replaced at once. Every put gives the document
a new :attr:`Document.version`, an opaque token that :meth:`DocumentStore.version`
returns without reading the data, so a reader checks it on each use and parses
the document again only when it changed (:class:`DocumentCache`).

- :class:`FolderDocumentStore` (``[shared] kind = "folder"``) keeps each
  document as the file ``DATA_DIR/<name>``, as before: written to a temporary
  file and renamed, versioned by inode, mtime and size. One machine.
- :class:`SqlDocumentStore` (``kind = "services"``) keeps them as rows of the
  ``shared_documents`` table (SQLite or PostgreSQL), versioned by a random
  token written with the data, so every process that reaches the database sees
  the same documents whatever its DATA_DIR.

:meth:`DocumentStore.put_if_absent` is the one write that races: two processes
that both find no secret key must end up with the same one, so the loser gets
the winner's data back.
"""

from __future__ import annotations

import os
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from config.settings import Settings

__all__ = [
    "CALIBRATION",
    "DOCUMENT_NAMES",
    "HOSTS_OVERRIDE",
    "SECRET_KEY",
    "Document",
    "DocumentCache",
    "DocumentStore",
    "FolderDocumentStore",
    "SqlDocumentStore",
    "build_document_store",
]

#: The score model written by ``artwatch calibrate`` (matching.calibrate), JSON.
CALIBRATION = "calibration.json"
#: The administrator's host-directory additions (webapp admin page), TOML.
HOSTS_OVERRIDE = "hosts.override.toml"
#: The generated web secret key, used when ``web.secret_key`` is empty.
SECRET_KEY = "web_secret_key"
#: Which model (and input size) computed each named vector of the works collection, JSON
#: (matching.index.vectors.check_vector_keys).
VECTOR_KEYS = "vectors.json"
DOCUMENT_NAMES = frozenset({CALIBRATION, HOSTS_OVERRIDE, SECRET_KEY, VECTOR_KEYS})
#: Documents that only the owner of DATA_DIR may read (mode 0600 in a folder).
_PRIVATE = frozenset({SECRET_KEY})

T = TypeVar("T")


@dataclass(frozen=True)
class Document:
    data: bytes
    #: Changes on every put; compare with :meth:`DocumentStore.version`.
    version: str


def _check(name: str) -> str:
    if name not in DOCUMENT_NAMES:
        raise ValueError(f"unknown shared document {name!r} (one of {', '.join(sorted(DOCUMENT_NAMES))})")
    return name


class DocumentStore(ABC):
    """Whole documents by name; every method rejects a name outside :data:`DOCUMENT_NAMES`.

    Equal stores (same folder, same database) compare and hash equal, so
    callers may key caches by the store.
    """

    @abstractmethod
    def get(self, name: str) -> Document | None:
        """The document, or None when it was never put (or was deleted)."""

    @abstractmethod
    def version(self, name: str) -> str | None:
        """The current version without the data (None when absent): the cheap check."""

    @abstractmethod
    def put(self, name: str, data: bytes) -> str:
        """Replace the document at once (readers see the old or the new data); its new version."""

    @abstractmethod
    def put_if_absent(self, name: str, data: bytes) -> bytes:
        """Store ``data`` unless the document exists; the data that is stored afterwards.

        When several processes race, exactly one write wins and all of them
        get the winner's data."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove the document; an absent one is ignored."""

    @abstractmethod
    def location(self, name: str) -> str:
        """Where the document lives, for messages and the admin page."""

    @property
    @abstractmethod
    def key(self) -> str:
        """Identifies the place: equal keys mean the same documents."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DocumentStore) and type(other) is type(self) and other.key == self.key

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.key))


class FolderDocumentStore(DocumentStore):
    """Each document is the file ``data_dir/<name>`` (the layout before the store existed)."""

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)

    @property
    def key(self) -> str:
        return str(self.data_dir.resolve())

    def path(self, name: str) -> Path:
        return self.data_dir / _check(name)

    def location(self, name: str) -> str:
        return str(self.path(name))

    @staticmethod
    def _version(st: os.stat_result) -> str:
        # The inode changes on every rename-into-place, so two puts within one
        # mtime tick with the same size still differ.
        return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"

    def get(self, name: str) -> Document | None:
        path = self.path(name)
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                data = fh.read()
        except FileNotFoundError:
            return None
        return Document(data, self._version(st))

    def version(self, name: str) -> str | None:
        try:
            return self._version(os.stat(self.path(name)))
        except FileNotFoundError:
            return None

    def _temp(self, name: str, data: bytes) -> Path:
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.{uuid.uuid4().hex}.tmp")
        mode = 0o600 if name in _PRIVATE else 0o644
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return tmp

    def put(self, name: str, data: bytes) -> str:
        tmp = self._temp(name, data)
        path = self.path(name)
        os.replace(tmp, path)
        return self._version(os.stat(path))

    def put_if_absent(self, name: str, data: bytes) -> bytes:
        path = self.path(name)
        tmp = self._temp(name, data)
        try:
            # link() is the exclusive create (like O_EXCL) of a file already
            # complete, so the loser never reads a half-written winner.
            os.link(tmp, path)
        except FileExistsError:
            return path.read_bytes()
        finally:
            tmp.unlink(missing_ok=True)
        return data

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)


class SqlDocumentStore(DocumentStore):
    """Rows of ``shared_documents`` (storage.models.SharedDocument), SQLite or PostgreSQL.

    Each call runs in a transaction of its own, apart from the caller's.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    @property
    def key(self) -> str:
        bind = self.sessions.kw.get("bind")
        return str(getattr(bind, "url", id(self.sessions)))

    def location(self, name: str) -> str:
        return f"the shared_documents row {_check(name)!r} in the database"

    def get(self, name: str) -> Document | None:
        from sqlalchemy import select

        from storage.models import SharedDocument

        with self.sessions() as s:
            row = s.execute(select(SharedDocument.data, SharedDocument.version)
                            .where(SharedDocument.name == _check(name))).first()
        return None if row is None else Document(bytes(row[0]), row[1])

    def version(self, name: str) -> str | None:
        from sqlalchemy import select

        from storage.models import SharedDocument

        with self.sessions() as s:
            return s.scalar(select(SharedDocument.version).where(SharedDocument.name == _check(name)))

    def _insert(self, s: Session, name: str, data: bytes, version: str) -> Any:
        from sqlalchemy.dialects import postgresql, sqlite

        from storage.models import SharedDocument, utcnow

        dialect = s.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        return insert(SharedDocument).values(name=name, data=data, version=version, updated_at=utcnow())

    def put(self, name: str, data: bytes) -> str:
        from storage.models import utcnow

        version = uuid.uuid4().hex
        with self.sessions.begin() as s:
            stmt = self._insert(s, _check(name), data, version)
            s.execute(stmt.on_conflict_do_update(
                index_elements=["name"], set_={"data": data, "version": version, "updated_at": utcnow()}))
        return version

    def put_if_absent(self, name: str, data: bytes) -> bytes:
        from sqlalchemy import select

        from storage.models import SharedDocument

        with self.sessions.begin() as s:
            stmt = self._insert(s, _check(name), data, uuid.uuid4().hex)
            # A concurrent insert of the same name makes this one wait for it
            # (PostgreSQL) or queue behind it (SQLite's single writer), then do
            # nothing; the select that follows sees the winner's row.
            s.execute(stmt.on_conflict_do_nothing(index_elements=["name"]))
        with self.sessions() as s:
            stored = s.scalar(select(SharedDocument.data).where(SharedDocument.name == name))
        if stored is None:  # deleted in between: try again
            return self.put_if_absent(name, data)
        return bytes(stored)

    def delete(self, name: str) -> None:
        from sqlalchemy import delete

        from storage.models import SharedDocument

        with self.sessions.begin() as s:
            s.execute(delete(SharedDocument).where(SharedDocument.name == _check(name)))


def build_document_store(settings: Settings, sessions: sessionmaker[Session] | None = None) -> DocumentStore:
    """The store ``settings.shared.kind`` names: DATA_DIR files, or the database's table.

    ``sessions`` is the caller's own session factory for that database; without
    one, "services" shares one engine per database URL in this process.
    """
    if settings.shared.kind == "services":
        from storage.db import shared_sessionmaker

        if sessions is None:
            sessions = shared_sessionmaker(settings.resolved_database_url())
        return SqlDocumentStore(sessions)
    return FolderDocumentStore(settings.data_dir)


class DocumentCache(Generic[T]):
    """One document parsed once per version: :meth:`get` costs a version check while it is unchanged.

    ``parse`` turns the data into the value; ``missing`` gives the value while
    the document is absent. Neither is cached when it raises.
    """

    def __init__(self, store: DocumentStore, name: str, parse: Callable[[bytes], T],
                 missing: Callable[[], T]) -> None:
        self.store, self.name = store, _check(name)
        self._parse, self._missing = parse, missing
        self._version: str | None = None
        self._value: T | None = None
        self._loaded = False
        self._lock = threading.Lock()

    def get(self) -> T:
        version = self.store.version(self.name)
        with self._lock:
            if self._loaded and version == self._version:
                return self._value  # type: ignore[return-value]
        doc = self.store.get(self.name) if version is not None else None
        value = self._missing() if doc is None else self._parse(doc.data)
        with self._lock:
            self._version, self._value, self._loaded = (doc.version if doc else None), value, True
        return value
