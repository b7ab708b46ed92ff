"""Storage: SQL models (system of record), sessions and the blob store."""

from storage.blobs import (
    BlobNotFound,
    BlobStore,
    BlobStoreError,
    BlobStoreUnavailable,
    FolderBlobStore,
    build_blob_store,
    sha256_hex,
)
from storage.db import (
    DatabaseUnavailable,
    check_database,
    make_engine,
    make_sessionmaker,
    session_scope,
)

__all__ = [
    "BlobNotFound",
    "BlobStore",
    "BlobStoreError",
    "BlobStoreUnavailable",
    "DatabaseUnavailable",
    "FolderBlobStore",
    "build_blob_store",
    "check_database",
    "make_engine",
    "make_sessionmaker",
    "session_scope",
    "sha256_hex",
]
