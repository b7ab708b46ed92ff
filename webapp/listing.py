"""Lists: paging, filters, search and sorting, done in SQL.

Every list page reads one :class:`ListQuery` from its query string (``page``,
``per``, ``q``, ``status``, ``kind``, ``site``, ``sort``, ``order``) and asks
the database for one page of rows and the total count; nothing loads a whole
table into Python. Visibility is the same as :mod:`webapp.access`: an owner's
lists are filtered by ``owner_id`` in the query itself.

CSV exports (:func:`csv_rows`) stream the same filtered queries in batches,
and :func:`csv_cell` defuses spreadsheet formulas (CSV injection).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, Select, false, func, or_, select
from sqlalchemy.orm import Session, joinedload, selectinload

from storage.models import (
    Account,
    Match,
    MatchStatus,
    Notice,
    NoticeItem,
    NoticeState,
    Source,
    Upload,
    UploadStatus,
    Work,
    WorkKind,
)
from webapp.access import is_staff

__all__ = [
    "ListQuery",
    "Page",
    "csv_cell",
    "csv_lines",
    "match_csv_rows",
    "match_page",
    "notice_csv_rows",
    "notice_page",
    "source_page",
    "upload_page",
    "work_page",
]

PER_PAGE = (25, 50, 100)
SORTS = ("score", "date", "stored")


@dataclass(frozen=True)
class ListQuery:
    """One list's state, as it travels in the query string."""

    page: int = 1
    per: int = 50
    q: str = ""
    status: str = ""
    kind: str = ""
    site: str = ""
    sort: str = "score"
    order: str = "desc"

    @classmethod
    def parse(cls, params: Mapping[str, str], *, sort: str = "score") -> ListQuery:
        """Read and clamp the parameters; anything unknown falls back to the default."""

        def _int(name: str, default: int) -> int:
            try:
                return int(params.get(name, default))
            except (TypeError, ValueError):
                return default

        per = _int("per", 50)
        chosen = str(params.get("sort", sort))
        return cls(
            page=max(1, min(_int("page", 1), 100_000)),
            per=per if per in PER_PAGE else 50,
            q=str(params.get("q", "")).strip()[:200],
            status=str(params.get("status", "")).strip()[:32],
            kind=str(params.get("kind", "")).strip()[:32],
            site=str(params.get("site", "")).strip().lower()[:255],
            sort=chosen if chosen in SORTS else sort,
            order="asc" if params.get("order") == "asc" else "desc",
        )

    def link(self, **changes: Any) -> str:
        """This list's query string with some values changed (page resets unless given)."""
        if "page" not in changes:
            changes["page"] = 1
        new = replace(self, **changes)
        defaults = ListQuery()
        pairs = {
            k: v
            for k, v in new.__dict__.items()
            if v != getattr(defaults, k) or k == "sort"
        }
        return "?" + urlencode(pairs)

    def flip(self, sort: str) -> str:
        """The link for a sortable column header: the same column flips the order."""
        if self.sort == sort:
            return self.link(sort=sort, order="asc" if self.order == "desc" else "desc")
        return self.link(sort=sort, order="desc")


@dataclass(frozen=True)
class Page:
    """One page of a list."""

    rows: Sequence[Any]
    total: int
    query: ListQuery

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.query.per))

    @property
    def first(self) -> int:
        return 0 if not self.total else (self.query.page - 1) * self.query.per + 1

    @property
    def last(self) -> int:
        return min(self.total, self.query.page * self.query.per)


def _like(text: str) -> str:
    """A LIKE pattern matching text anywhere, with the wildcards in text taken literally."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _search(q: str, *columns: Any) -> ColumnElement[bool]:
    pattern = _like(q)
    return or_(*(func.lower(c).like(pattern, escape="\\") for c in columns))


def _host_is(column: Any, site: str) -> ColumnElement[bool]:
    """The host is site or one of its subdomains."""
    escaped = site.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return or_(func.lower(column) == site, func.lower(column).like("%." + escaped, escape="\\"))


def _page(session: Session, rows: Select[Any], count: Select[Any], lq: ListQuery) -> Page:
    total = int(session.scalar(select(func.count()).select_from(count.subquery())) or 0)
    last_page = max(1, -(-total // lq.per))
    if lq.page > last_page:
        lq = replace(lq, page=last_page)
    found = session.execute(rows.limit(lq.per).offset((lq.page - 1) * lq.per)).all()
    return Page([tuple(r) if len(r) > 1 else r[0] for r in found], total, lq)


# ---- matches -------------------------------------------------------------------------

MATCH_STATUSES = tuple(s.value for s in MatchStatus)


def _match_where(account: Account, lq: ListQuery, work_id: int | None) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if not is_staff(account):
        where.append(Match.owner_id == account.id)
    if work_id is not None:
        where.append(Match.work_id == work_id)
    if lq.status == "all":
        pass
    elif lq.status in MATCH_STATUSES:
        where.append(Match.status == MatchStatus(lq.status))
    elif work_id is None:  # the default list: what still needs a look
        where.append(Match.status.not_in((MatchStatus.SUPPRESSED, MatchStatus.DISMISSED)))
    if lq.kind in (k.value for k in WorkKind):
        where.append(Work.kind == WorkKind(lq.kind))
    if lq.site:
        where.append(_host_is(Upload.host, lq.site))
    if lq.q:
        where.append(_search(lq.q, Work.title, Upload.page_url, Upload.image_url))
    return where


def _match_order(lq: ListQuery) -> list[Any]:
    col: Any = Match.score if lq.sort == "score" else Match.created_at
    first = col.asc() if lq.order == "asc" else col.desc()
    return [first, Match.id.asc() if lq.order == "asc" else Match.id.desc()]


def _match_select(account: Account, lq: ListQuery, work_id: int | None) -> Select[Any]:
    return (
        select(Match)
        .join(Upload, Upload.id == Match.upload_id)
        .join(Work, Work.id == Match.work_id)
        .where(*_match_where(account, lq, work_id))
    )


def match_page(session: Session, account: Account, lq: ListQuery, *, work_id: int | None = None) -> Page:
    """One page of the matches the account may see, filtered and sorted as asked."""
    base = _match_select(account, lq, work_id)
    rows = base.options(joinedload(Match.upload), joinedload(Match.work)).order_by(*_match_order(lq))
    return _page(session, rows, base.with_only_columns(Match.id), lq)


# ---- notices -------------------------------------------------------------------------

NOTICE_STATES = tuple(s.value for s in NoticeState)


def _best() -> Any:
    return (
        select(NoticeItem.notice_id, func.max(Match.score).label("best"), func.min(Match.id).label("first"))
        .join(Match, Match.id == NoticeItem.match_id)
        .group_by(NoticeItem.notice_id)
        .subquery()
    )


def _notice_select(account: Account, lq: ListQuery, states: Sequence[NoticeState], best: Any) -> Select[Any]:
    where: list[ColumnElement[bool]] = []
    if not is_staff(account):
        where.append(Notice.owner_id == account.id)
    if lq.status in NOTICE_STATES:
        chosen = NoticeState(lq.status)
        where.append(Notice.state == chosen if not states or chosen in states else false())
    elif states:
        where.append(Notice.state.in_(states))
    if lq.kind:
        where.append(Notice.law == lq.kind)
    if lq.site:
        where.append(_host_is(Notice.host, lq.site))
    if lq.q:
        where.append(_search(lq.q, Notice.host, Notice.recipient, Notice.subject))
    return (
        select(Notice, func.coalesce(best.c.best, 0.0), best.c.first)
        .outerjoin(best, best.c.notice_id == Notice.id)
        .where(*where)
    )


def notice_page(
    session: Session, account: Account, lq: ListQuery, *, states: Sequence[NoticeState] = ()
) -> Page:
    """One page of notices as (notice, best score, id of its first match) rows."""
    best = _best()
    base = _notice_select(account, lq, states, best)
    col: Any = func.coalesce(best.c.best, 0.0) if lq.sort == "score" else Notice.created_at
    # The review queue's order: most confident first, then oldest first.
    tie = Notice.created_at.asc() if lq.sort == "score" else Notice.id.desc()
    order = [col.asc() if lq.order == "asc" else col.desc(), tie, Notice.id.asc()]
    rows = base.options(selectinload(Notice.items)).order_by(*order)
    return _page(session, rows, base.with_only_columns(Notice.id), lq)


# ---- works and sources ---------------------------------------------------------------


def work_page(session: Session, owner_id: int, lq: ListQuery) -> Page:
    """One page of the owner's works as (work, count of flagged matches) rows."""
    counts = (
        select(Match.work_id, func.count(Match.id).label("n"))
        .where(Match.owner_id == owner_id, Match.status.not_in((MatchStatus.SUPPRESSED, MatchStatus.DISMISSED)))
        .group_by(Match.work_id)
        .subquery()
    )
    n = func.coalesce(counts.c.n, 0)
    where: list[ColumnElement[bool]] = [Work.owner_id == owner_id]
    if lq.kind in (k.value for k in WorkKind):
        where.append(Work.kind == WorkKind(lq.kind))
    if lq.q:
        where.append(_search(lq.q, Work.title, Work.filename, Work.registration_number))
    base: Any = select(Work, n).outerjoin(counts, counts.c.work_id == Work.id).where(*where)
    col: Any = n if lq.sort == "score" else Work.created_at
    order = [col.asc() if lq.order == "asc" else col.desc(), Work.id.desc()]
    return _page(session, base.order_by(*order), base.with_only_columns(Work.id), lq)


def source_page(session: Session, lq: ListQuery) -> Page:
    """One page of crawl sources; status is enabled, disabled or failing."""
    where: list[ColumnElement[bool]] = []
    if lq.status == "enabled":
        where.append(Source.enabled.is_(True))
    elif lq.status == "disabled":
        where.append(Source.enabled.is_(False))
    elif lq.status == "failing":
        where.append(Source.last_error.is_not(None))
    if lq.kind:
        where.append(Source.kind == lq.kind)
    if lq.site:
        where.append(func.lower(Source.url).like(_like(lq.site), escape="\\"))
    if lq.q:
        where.append(_search(lq.q, Source.name, Source.url))
    base = select(Source).where(*where)
    col: Any = Source.uploads_seen if lq.sort == "score" else Source.last_success_at
    order = [col.asc() if lq.order == "asc" else col.desc(), Source.name.asc()]
    return _page(session, base.order_by(*order), base.with_only_columns(Source.id), lq)


UPLOAD_STATUSES = tuple(s.value for s in UploadStatus)


def upload_page(session: Session, lq: ListQuery) -> Page:
    """One page of stored uploads (staff only: uploads belong to no owner), as (upload, source name) rows.

    ``status`` is an :class:`UploadStatus` value, ``site`` the host or a parent domain, ``q`` searches the
    page, image and canonical URLs; sorted by capture date (``date``) or by when the row was stored (``stored``).
    Deleted uploads (``deleted_at`` set) are left out.
    """
    where: list[ColumnElement[bool]] = [Upload.deleted_at.is_(None)]
    if lq.status in UPLOAD_STATUSES:
        where.append(Upload.status == UploadStatus(lq.status))
    if lq.site:
        where.append(_host_is(Upload.host, lq.site))
    if lq.q:
        where.append(_search(lq.q, Upload.page_url, Upload.image_url, Upload.canonical_url))
    base: Any = select(Upload, Source.name).outerjoin(Source, Source.id == Upload.source_id).where(*where)
    col: Any = func.coalesce(Upload.fetched_at, Upload.created_at) if lq.sort != "stored" else Upload.created_at
    order = [col.asc() if lq.order == "asc" else col.desc(), Upload.id.asc() if lq.order == "asc" else Upload.id.desc()]
    return _page(session, base.order_by(*order), select(Upload.id).where(*where), lq)


# ---- CSV -----------------------------------------------------------------------------

_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    """A cell a spreadsheet shows as text: one starting with = + - @ (or tab, CR) gets a quote."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA) else text


def csv_lines(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Iterator[str]:
    """CSV text, a line at a time, every cell defused."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([csv_cell(h) for h in header])
    yield buf.getvalue()
    for row in rows:
        buf.seek(0)
        buf.truncate()
        writer.writerow([csv_cell(v) for v in row])
        yield buf.getvalue()


MATCH_CSV = ("match_id", "score", "status", "work_id", "work_title", "kind", "host", "page_url", "image_url",
             "captured", "found")
NOTICE_CSV = ("notice_id", "state", "host", "law", "recipient", "confidence", "urls", "flags", "created", "sent")


def _iso(d: Any) -> str:
    return d.isoformat() if d is not None else ""


def match_csv_rows(session: Session, account: Account, lq: ListQuery) -> Iterator[tuple[Any, ...]]:
    """Every match the list shows (all pages), in batches, as CSV rows."""
    q = (
        _match_select(account, lq, None)
        .with_only_columns(
            Match.id, Match.score, Match.status, Work.id, Work.title, Work.kind, Upload.host, Upload.page_url,
            Upload.image_url, Upload.fetched_at, Match.created_at,
        )
        .order_by(*_match_order(lq))
        .execution_options(yield_per=500)
    )
    for r in session.execute(q):
        yield (r[0], f"{float(r[1]):.3f}", r[2].value, r[3], r[4], r[5].value, r[6], r[7], r[8], _iso(r[9]),
               _iso(r[10]))


def notice_csv_rows(session: Session, account: Account, lq: ListQuery) -> Iterator[tuple[Any, ...]]:
    """Every notice the list shows (all pages), in batches, as CSV rows."""
    best = _best()
    urls = (
        select(func.count(NoticeItem.id)).where(NoticeItem.notice_id == Notice.id).scalar_subquery()
    )
    q = (
        _notice_select(account, lq, (), best)
        .with_only_columns(
            Notice.id, Notice.state, Notice.host, Notice.law, Notice.recipient, func.coalesce(best.c.best, 0.0),
            urls, Notice.flags, Notice.created_at, Notice.sent_at,
        )
        .order_by(Notice.created_at.desc(), Notice.id.desc())
        .execution_options(yield_per=500)
    )
    for r in session.execute(q):
        flags = " ".join(str(f) for f in (r[7] or []))
        yield (r[0], r[1].value, r[2], r[3], r[4], f"{float(r[5]):.3f}", r[6], flags, _iso(r[8]), _iso(r[9]))
