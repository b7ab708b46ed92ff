"""Source health for people: what failed, why, and what to do about it.

``poll_source`` records a failed poll on the source row (``last_error`` is
``"<ErrorClass>: <message>"``, cleared by the next success). This module reads
those rows back for ``artwatch run``'s summary and the dashboard, so both say
the same thing in the same words, and it turns the errors a person can fix
(above all the refusal to crawl an internal address) into a hint naming the
setting that opts in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Source, Upload, UploadStatus

__all__ = ["SourceHealth", "failure_hint", "source_health"]

ALLOW_INTERNAL_HINT = (
    "the crawler refuses hosts on private, loopback or link-local addresses; if this source is meant "
    "to be internal, add its host or a CIDR to crawler.allow_internal (config file "
    '`[crawler] allow_internal = ["10.0.0.5"]`, or ARTWATCH_CRAWLER__ALLOW_INTERNAL=\'["10.0.0.5"]\')'
)

_HINTS = (
    ("BlockedAddress", ALLOW_INTERNAL_HINT),
    ("RobotsDisallowed", "the site's robots.txt forbids this path (crawler.obey_robots = false overrides it)"),
    ("Timeout", "the site did not answer in time; it retries at the next poll"),
    ("TransientFetchError", "the site could not be reached; it retries at the next poll"),
    ("ServerError", "the site answered with a server error; it retries at the next poll"),
    ("HTTPStatusError", "the site refused the request; check the source URL and its params"),
    ("UnknownSourceKind", "no source of this kind is installed here; check the kind's spelling or its plugin"),
)


def failure_hint(error: str | None) -> str:
    """What a person can do about a recorded source error ("" when nothing specific)."""
    if not error:
        return ""
    name = error.split(":", 1)[0].strip()
    for cls, hint in _HINTS:
        if name == cls:
            return hint
    return ""


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class SourceHealth:
    id: int
    name: str
    kind: str
    url: str
    enabled: bool
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    uploads_seen: int
    #: Uploads from this source whose image is not fetched and analysed yet.
    backlog: int

    @property
    def failing(self) -> bool:
        """The last poll failed (a success clears ``last_error``)."""
        return bool(self.last_error)

    @property
    def hint(self) -> str:
        return failure_hint(self.last_error)

    def failed_since(self, since: datetime) -> bool:
        """The source is failing and its error was recorded at or after ``since``."""
        at = _aware(self.last_error_at)
        return self.failing and at is not None and at >= since

    def describe(self) -> str:
        """One line: name, kind and what went wrong, with the hint when there is one."""
        if not self.failing:
            return f"{self.name} ({self.kind}): ok"
        line = f"{self.name} ({self.kind}) failed: {self.last_error}"
        return f"{line}; {self.hint}" if self.hint else line


def source_health(session: Session) -> list[SourceHealth]:
    """Every source, by name, with its backlog counted in one grouped query."""
    rows = session.execute(
        select(Upload.source_id, func.count(Upload.id))
        .where(Upload.status == UploadStatus.PENDING, Upload.deleted_at.is_(None))
        .group_by(Upload.source_id)
    )
    backlog: dict[int | None, int] = {source_id: int(n) for source_id, n in rows}
    return [
        SourceHealth(
            id=src.id,
            name=src.name,
            kind=src.kind,
            url=src.url,
            enabled=src.enabled,
            last_success_at=_aware(src.last_success_at),
            last_error=src.last_error,
            last_error_at=_aware(src.last_error_at),
            uploads_seen=src.uploads_seen or 0,
            backlog=int(backlog.get(src.id, 0)),
        )
        for src in session.scalars(select(Source).order_by(Source.name))
    ]
