"""What the workers and the CLI call: build clients and sources, poll, fetch.

Crash safety comes from doing each poll's writes in the caller's transaction:
``poll_source`` adds the Upload rows, the new cursor and the success/error
stamps to the same session, so either all of them are committed or none is and
the next poll repeats the work. Upload rows are keyed by canonical URL, so a
repeat is an upsert, never a duplicate.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from config.settings import CrawlerSettings
from crawler.errors import (
    CrawlError,
    FetchError,
    HTTPStatusError,
    TransientFetchError,
    UnknownSourceKind,
)
from crawler.fetch import AddressPolicy, SafeFetcher, SafeTransport, user_agent
from crawler.limits import HostLimits
from crawler.sources.base import Source, UploadRecord
from crawler.sources.mastodon import MastodonSource
from storage.blobs import BlobStore
from storage.models import Sighting, Upload, UploadStatus
from storage.models import Source as SourceRow

__all__ = [
    "SOURCE_KINDS",
    "build_client",
    "build_source",
    "canonical_url",
    "fetch_upload",
    "poll_source",
    "record_uploads",
    "validate_source",
]

log = logging.getLogger("crawler.service")

SOURCE_KINDS: dict[str, type[Source]] = {
    MastodonSource.kind: MastodonSource,
}


def _register_optional() -> None:
    # Imported lazily so that a missing optional dependency of one source kind
    # never stops the others from loading.
    import importlib

    for module, cls in (
        ("crawler.sources.rss", "FeedSource"),
        ("crawler.sources.reddit", "RedditSource"),
        ("crawler.sources.wikimedia", "WikimediaSource"),
        ("crawler.sources.bluesky", "BlueskySource"),
        ("crawler.sources.html", "HtmlPageSource"),
        ("crawler.sources.html", "SitemapSource"),
    ):
        try:
            source_cls = getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError):
            continue
        SOURCE_KINDS[source_cls.kind] = source_cls


_register_optional()


def validate_source(kind: str, url: str, params: Mapping[str, Any]) -> type[Source]:
    """The source class for ``kind`` after checking ``url``/``params``.

    Raises UnknownSourceKind or InvalidSourceConfig with a message for the user."""
    cls = SOURCE_KINDS.get(kind)
    if cls is None:
        raise UnknownSourceKind(
            f"unknown source kind {kind!r}; known kinds: {', '.join(sorted(SOURCE_KINDS))}"
        )
    cls.validate(url, params)
    return cls


def build_client(settings: CrawlerSettings, limits: HostLimits | None = None) -> httpx.Client:
    """An httpx client for crawling: safe transport (address checks on every
    connection, so on every redirect hop), politeness (robots.txt, per-host
    rate and concurrency limits, backoff) when enabled, our User-Agent, the
    configured timeouts and redirect limit. The robots.txt cache is shared by
    all clients built in this process; the per-host limits are ``limits``
    (pass :func:`crawler.limits.host_limits` of the full settings to share them
    between processes as configured), or this process's when None.
    Environment proxies are ignored because a proxy would connect on our
    behalf, unchecked. ``requests_per_second <= 0`` means no rate limit."""
    from crawler.politeness import PoliteTransport, shared_state

    transport: httpx.BaseTransport = SafeTransport(
        AddressPolicy.from_list(settings.allow_internal),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
    )
    transport = PoliteTransport(transport, settings, state=shared_state(settings), limits=limits)
    return httpx.Client(
        transport=transport,
        headers={"User-Agent": user_agent(settings)},
        timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
        max_redirects=settings.max_redirects,
        follow_redirects=True,
        trust_env=False,
    )


def build_source(
    row: SourceRow, client: httpx.Client, settings: CrawlerSettings | None = None
) -> Source:
    """The Source object for a ``sources`` row."""
    cls = validate_source(row.kind, row.url, row.params or {})
    max_page = settings.max_page_bytes if settings is not None else 5_000_000
    return cls(row.url, row.params or {}, client, max_page_bytes=max_page)


_TRACKING = re.compile(
    r"^(utm_[a-z_]+|fbclid|gclid|dclid|gbraid|wbraid|msclkid|mc_cid|mc_eid|igshid|igsh|yclid|_hsenc|_hsmi"
    r"|mkt_tok|ref_src|ref_url|spm|si)$",
    re.IGNORECASE,
)


def canonical_url(url: str) -> str:
    """One spelling per resource: lower-case scheme and host, no default port,
    no fragment, no tracking parameters, remaining query sorted."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower().rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    netloc = (
        host
        if port is None or (scheme, port) in (("http", 80), ("https", 443))
        else f"{host}:{port}"
    )
    query = sorted(
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _TRACKING.match(k)
    )
    return urlunsplit((scheme, netloc, parts.path or "/", urlencode(query), ""))


def _now() -> datetime:
    return datetime.now(UTC)


def record_uploads(
    session: Session, source_row: SourceRow, records: Sequence[UploadRecord]
) -> tuple[list[int], int]:
    """Upsert one pending Upload per image URL and one Sighting per (upload, post);
    apply deletions and edits.

    A deletion marks that post's sightings deleted, and an upload deleted once
    no live sighting of it is left. Returns (ids of touched uploads that still
    need fetching, number of new uploads)."""
    now = _now()
    images: list[tuple[str, UploadRecord]] = []
    deletions: list[UploadRecord] = []
    for rec in records:
        if rec.deleted:
            deletions.append(rec)
        elif rec.image_url:
            images.append((canonical_url(rec.image_url), rec))
    existing = _uploads_by_key(session, {k for k, _ in images})
    fresh: dict[str, dict[str, Any]] = {}
    for key, rec in images:
        if key not in existing and key not in fresh:
            fresh[key] = dict(
                canonical_url=key,
                source_id=source_row.id,
                host=(urlsplit(rec.page_url or rec.image_url).hostname or "").lower(),
                page_url=rec.page_url,
                image_url=rec.image_url,
                post_id=rec.post_id,
                author=rec.author,
                post_text=rec.text,
                status=UploadStatus.PENDING,
            )
    created = _insert_ignore(session, Upload, list(fresh.values()), ["canonical_url"])
    existing.update(_uploads_by_key(session, set(fresh)))
    sightings: dict[tuple[int, str], dict[str, Any]] = {}
    touched: dict[int, Upload] = {}
    for key, rec in images:
        up = existing[key]
        touched[up.id] = up
        sightings.setdefault(
            (up.id, rec.post_id),
            dict(
                upload_id=up.id,
                source_id=source_row.id,
                post_id=rec.post_id,
                page_url=rec.page_url,
                author=rec.author,
                post_text=rec.text,
                posted_at=rec.posted_at,
                seen_at=now,
            ),
        )
        if rec.edited and up.post_id == rec.post_id and rec.text != up.post_text:
            up.post_text = rec.text
    _insert_ignore(session, Sighting, list(sightings.values()), ["upload_id", "post_id"])
    for key, rec in images:
        if rec.edited:
            for sg in session.scalars(
                select(Sighting).where(
                    Sighting.upload_id == existing[key].id, Sighting.post_id == rec.post_id
                )
            ):
                if sg.post_text != rec.text:
                    sg.post_text = rec.text
                    sg.edited_at = now
    for rec in deletions:
        _apply_deletion(session, source_row, rec, now)
    session.flush()
    for up in touched.values():
        if up.deleted_at is not None and session.scalar(
            select(func.count())
            .select_from(Sighting)
            .where(Sighting.upload_id == up.id, Sighting.deleted_at.is_(None))
        ):
            up.deleted_at = None  # posted again: online again
    need = [
        u.id
        for u in touched.values()
        if u.blob_sha256 is None and u.deleted_at is None and u.status == UploadStatus.PENDING
    ]
    return need, created


def _uploads_by_key(session: Session, keys: set[str]) -> dict[str, Upload]:
    found: dict[str, Upload] = {}
    ordered = sorted(keys)
    for i in range(0, len(ordered), 500):
        for up in session.scalars(
            select(Upload).where(Upload.canonical_url.in_(ordered[i : i + 500]))
        ):
            found[up.canonical_url] = up
    return found


def _apply_deletion(
    session: Session, source_row: SourceRow, rec: UploadRecord, now: datetime
) -> None:
    q = select(Sighting).where(Sighting.source_id == source_row.id, Sighting.post_id == rec.post_id)
    if rec.image_url:
        q = q.join(Upload, Upload.id == Sighting.upload_id).where(
            Upload.canonical_url == canonical_url(rec.image_url)
        )
    affected: set[int] = set()
    for sg in session.scalars(q):
        if sg.deleted_at is None:
            sg.deleted_at = now
        affected.add(sg.upload_id)
    session.flush()
    for uid in affected:
        live = session.scalar(
            select(func.count())
            .select_from(Sighting)
            .where(Sighting.upload_id == uid, Sighting.deleted_at.is_(None))
        )
        up = session.get(Upload, uid)
        if up is not None and not live and up.deleted_at is None:
            up.deleted_at = now


def _insert_ignore(
    session: Session, model: type[Any], rows: list[dict[str, Any]], keys: list[str]
) -> int:
    """INSERT ... ON CONFLICT (keys) DO NOTHING; returns rows inserted.

    Two pollers racing on one URL both succeed and share the row. (A
    SAVEPOINT per row would do the same, but pysqlite's transaction handling
    commits SAVEPOINTs opened outside a transaction.)"""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt: Any = sqlite_insert(model).on_conflict_do_nothing(index_elements=keys)
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(model).on_conflict_do_nothing(index_elements=keys)
    else:  # pragma: no cover - other databases: plain inserts, a race raises IntegrityError
        for values in rows:
            session.add(model(**values))
        session.flush()
        return len(rows)
    inserted = 0
    for i in range(0, len(rows), 200):
        # RETURNING counts what was inserted; rowcount is unreliable for
        # multi-row inserts across drivers.
        inserted += len(session.execute(stmt.values(rows[i : i + 200]).returning(model.id)).all())
    return inserted


def poll_source(
    session: Session, source_row: SourceRow, client: httpx.Client, settings: CrawlerSettings
) -> list[int]:
    """Poll one source from its saved cursor; returns ids of uploads to fetch.

    Rows, cursor, ``last_success_at`` and ``last_error`` go into ``session``
    together: the caller's commit makes them durable at once. A CrawlError
    (site down, malformed page, robots) is recorded on the row and the cursor
    is left alone so the next poll retries; it is not raised."""
    try:
        source = build_source(source_row, client, settings)
        records, cursor = source.poll(source_row.cursor)
    except CrawlError as exc:
        source_row.last_error = f"{type(exc).__name__}: {exc}"
        source_row.last_error_at = _now()
        log.warning("source %s (%s): poll failed: %s", source_row.name, source_row.kind, exc)
        session.flush()
        return []
    need, created = record_uploads(session, source_row, records)
    source_row.cursor = cursor
    source_row.last_success_at = _now()
    source_row.last_error = None
    source_row.uploads_seen = (source_row.uploads_seen or 0) + created
    session.flush()
    log.info("source %s: %d records, %d new uploads", source_row.name, len(records), created)
    return need


_HEADER_KEEP = 40


def fetch_upload(session: Session, blobs: BlobStore, upload_id: int, fetcher: SafeFetcher) -> bool:
    """Download one upload's image as evidence; True when it is ready for analysis.

    Idempotent: an upload that already has its blob is not fetched again (and
    is ready only while still pending, so a redelivered task queues nothing new).
    Bytes go to the blob store under their SHA-256, so one image at two URLs
    is two Upload rows sharing one blob. A 404/410 marks the upload deleted;
    a permanent refusal (not an image, too large, blocked address, robots)
    marks it failed with the reason; a transient failure
    (``TransientFetchError``, a ConnectionError) is raised for the task to retry."""
    up = session.get(Upload, upload_id)
    if up is None or up.deleted_at is not None:
        return False
    if up.blob_sha256 is not None and blobs.exists(up.blob_sha256):
        return up.status == UploadStatus.PENDING  # analysed already: nothing to queue
    if up.status == UploadStatus.FAILED:
        return False
    try:
        img = fetcher.fetch_image(up.image_url)
    except TransientFetchError:
        raise
    except HTTPStatusError as exc:
        if exc.status_code in (404, 410):
            up.deleted_at = _now()
            up.error = f"image gone: HTTP {exc.status_code}"
        else:
            up.status = UploadStatus.FAILED
            up.error = f"{type(exc).__name__}: {exc}"
        session.flush()
        return False
    except FetchError as exc:  # not an image, too large, blocked, robots, redirects
        up.status = UploadStatus.FAILED
        up.error = f"{type(exc).__name__}: {exc}"
        session.flush()
        return False
    digest = blobs.put(img.data)
    up.blob_sha256 = digest
    up.final_url = img.final_url
    up.headers = dict(list(img.headers.items())[:_HEADER_KEEP])
    up.content_type = img.content_type
    up.fetched_at = img.fetched_at
    up.error = None
    session.flush()
    return True
