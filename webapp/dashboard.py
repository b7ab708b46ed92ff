"""The dashboard's numbers and charts.

Every count is one SQL aggregate (``GROUP BY``), never rows loaded into
Python. An owner's dashboard is scoped to ``owner_id`` in each query; staff
(reviewers, admins) see everything. Charts are SVG drawn here, on the server:
no charting script, nothing from a CDN, and the colours come from the page's
CSS variables so dark mode applies to them too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from html import escape
from typing import Any

from markupsafe import Markup
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from storage.models import Match, MatchStatus, Notice, NoticeItem, NoticeState, Upload, UploadStatus, Work

__all__ = ["DAYS", "Dashboard", "bar_chart_svg", "build_dashboard", "hbar_chart_svg", "worker_health"]

DAYS = 30
TOP_SITES = 10


@dataclass
class Dashboard:
    works: int
    uploads_checked: int
    matches_by_status: dict[str, int]
    notices_by_state: dict[str, int]
    removals: int
    days: list[date]
    matches_per_day: list[int]
    removals_per_day: list[int]
    matches_by_site: list[tuple[str, int]]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def matches(self) -> int:
        return sum(self.matches_by_status.values())

    @property
    def notices(self) -> int:
        return sum(self.notices_by_state.values())


def _scoped(stmt: Any, column: Any, owner_id: int | None) -> Any:
    # Select is generic over its row types; Any keeps each call site's own.
    return stmt if owner_id is None else stmt.where(column == owner_id)


def _day(value: Any) -> date | None:
    # func.date gives a date on PostgreSQL and an ISO string on SQLite.
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _utc_day(session: Session, column: Any) -> Any:
    """The UTC calendar day of a timestamp column, in SQL. PostgreSQL's date() of a
    timestamptz follows the session's time zone, so convert to UTC first; SQLite
    stores the UTC time as written."""
    if session.get_bind().dialect.name == "postgresql":
        return func.date(func.timezone("UTC", column))
    return func.date(column)


def _per_day(session: Session, stmt: Select[Any], days: list[date]) -> list[int]:
    counts: dict[date, int] = {}
    for raw, n in session.execute(stmt):
        day = _day(raw)
        if day is not None:
            counts[day] = counts.get(day, 0) + int(n)
    return [counts.get(d, 0) for d in days]


def build_dashboard(session: Session, owner_id: int | None, *, now: datetime | None = None) -> Dashboard:
    """The numbers for one owner (``owner_id``) or, with ``None``, for everyone."""
    now = now or datetime.now(UTC)
    today = now.astimezone(UTC).date()
    days = [today - timedelta(days=DAYS - 1 - i) for i in range(DAYS)]
    start = datetime.combine(days[0], datetime.min.time(), tzinfo=UTC)

    works = session.scalar(_scoped(select(func.count(Work.id)), Work.owner_id, owner_id)) or 0
    # Every analysed upload was checked against every registered work.
    uploads_checked = session.scalar(
        select(func.count(Upload.id)).where(Upload.status == UploadStatus.ANALYSED)
    ) or 0
    by_status = {s.value: 0 for s in MatchStatus}
    for status, n in session.execute(
        _scoped(select(Match.status, func.count(Match.id)), Match.owner_id, owner_id).group_by(Match.status)
    ):
        by_status[MatchStatus(status).value] = int(n)
    by_state = {s.value: 0 for s in NoticeState}
    for state, n in session.execute(
        _scoped(select(Notice.state, func.count(Notice.id)), Notice.owner_id, owner_id).group_by(Notice.state)
    ):
        by_state[NoticeState(state).value] = int(n)

    removed = (
        select(func.count(NoticeItem.id))
        .join(Notice, Notice.id == NoticeItem.notice_id)
        .where(NoticeItem.online == "removed")
    )
    removals = session.scalar(_scoped(removed, Notice.owner_id, owner_id)) or 0

    match_day = _utc_day(session, Match.created_at)
    matches_per_day = _per_day(
        session,
        _scoped(select(match_day, func.count(Match.id)), Match.owner_id, owner_id)
        .where(Match.created_at >= start)
        .group_by(match_day),
        days,
    )
    removal_day = _utc_day(session, NoticeItem.checked_at)
    removals_per_day = _per_day(
        session,
        _scoped(
            select(removal_day, func.count(NoticeItem.id)).join(Notice, Notice.id == NoticeItem.notice_id),
            Notice.owner_id,
            owner_id,
        )
        .where(NoticeItem.online == "removed", NoticeItem.checked_at >= start)
        .group_by(removal_day),
        days,
    )
    count = func.count(Match.id)
    by_site = [
        (host or "(unknown)", int(n))
        for host, n in session.execute(
            _scoped(select(Upload.host, count).join(Upload, Upload.id == Match.upload_id), Match.owner_id, owner_id)
            .group_by(Upload.host)
            .order_by(count.desc(), Upload.host)
            .limit(TOP_SITES)
        )
    ]
    return Dashboard(
        works=int(works),
        uploads_checked=int(uploads_checked),
        matches_by_status=by_status,
        notices_by_state=by_state,
        removals=int(removals),
        days=days,
        matches_per_day=matches_per_day,
        removals_per_day=removals_per_day,
        matches_by_site=by_site,
    )


def bar_chart_svg(title: str, days: list[date], values: list[int], css_class: str) -> Markup:
    """A column per day; the title and a text summary make it readable without sight."""
    width, height, pad_left, pad_bottom, pad_top = 600, 160, 28, 20, 8
    top = max(values) if values and max(values) > 0 else 1
    slot = (width - pad_left) / max(len(values), 1)
    plot_h = height - pad_bottom - pad_top
    total = sum(values)
    label = f"{title}: {total} in the last {len(values)} days"
    if total:
        peak = max(range(len(values)), key=lambda i: values[i])
        label += f", most on {days[peak].isoformat()} ({values[peak]})"
    parts = [
        f'<svg class="chart {escape(css_class)}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}">',
        f"<title>{escape(label)}</title>",
        f'<line class="axis" x1="{pad_left}" y1="{height - pad_bottom}" x2="{width}" y2="{height - pad_bottom}"/>',
        f'<text class="tick" x="{pad_left - 4}" y="{pad_top + 8}" text-anchor="end">{top}</text>',
        f'<text class="tick" x="{pad_left - 4}" y="{height - pad_bottom}" text-anchor="end">0</text>',
    ]
    for i, (day, value) in enumerate(zip(days, values, strict=True)):
        h = plot_h * value / top
        x = pad_left + i * slot + slot * 0.15
        y = height - pad_bottom - h
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}">'
            f"<title>{day.isoformat()}: {value}</title></rect>"
        )
    ticks = ((0, "start"), (len(days) // 2, "middle"), (len(days) - 1, "end")) if days else ()
    for i, anchor in ticks:
        x = pad_left + i * slot + (0 if anchor == "start" else slot if anchor == "end" else slot / 2)
        parts.append(
            f'<text class="tick" x="{x:.1f}" y="{height - 5}" text-anchor="{anchor}">{days[i].strftime("%d %b")}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def hbar_chart_svg(title: str, rows: list[tuple[str, int]]) -> Markup:
    """One horizontal bar per site, longest first."""
    if not rows:
        return Markup("")
    row_h, width, label_w = 26, 600, 200
    height = row_h * len(rows) + 4
    top = max(n for _, n in rows) or 1
    label = f"{title}: " + ", ".join(f"{site} {n}" for site, n in rows)
    parts = [
        f'<svg class="chart sites" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">',
        f"<title>{escape(label)}</title>",
    ]
    for i, (site, n) in enumerate(rows):
        y = i * row_h + 2
        w = (width - label_w - 40) * n / top
        shown = site if len(site) <= 28 else site[:27] + "…"
        parts.append(
            f'<text class="tick" x="{label_w - 6}" y="{y + 16}" text-anchor="end">{escape(shown)}</text>'
            f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}"/>'
            f'<text class="tick" x="{label_w + w + 4:.1f}" y="{y + 16}">{n}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def worker_health(settings: Any) -> dict[str, Any]:
    """Live workers and queue lengths (:func:`registry.root.queue_health`, the same
    checks as ``artwatch status``). Call it off the event loop (a sync route runs
    in the thread pool)."""
    from registry.root import queue_health

    return queue_health(settings)