"""Who may see which row. Every route loads owned objects through these functions.

Owners see only their own works, matches, notices and jobs. Reviewers and
admins (staff) see everything they need to review. An object that exists but
belongs to someone else is reported exactly like one that does not exist
(404), so ids cannot be probed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, joinedload, selectinload

from storage.models import Account, Match, MatchStatus, Notice, NoticeItem, Role, WebJob, Work
from webapp.errors import NotFound

__all__ = [
    "is_staff",
    "match_query",
    "notice_query",
    "visible_job",
    "visible_match",
    "visible_notice",
    "visible_work",
    "work_rows",
]


def is_staff(account: Account) -> bool:
    return account.role in (Role.REVIEWER, Role.ADMIN)


def visible_work(session: Session, account: Account, work_id: int) -> Work:
    work = session.get(Work, work_id)
    if work is None or (work.owner_id != account.id and not is_staff(account)):
        raise NotFound(f"no work with id {work_id}")
    return work


def visible_match(session: Session, account: Account, match_id: int) -> Match:
    match = session.get(Match, match_id)
    if match is None or (match.owner_id != account.id and not is_staff(account)):
        raise NotFound(f"no match with id {match_id}")
    return match


def visible_notice(session: Session, account: Account, notice_id: int) -> Notice:
    notice = session.get(Notice, notice_id)
    if notice is None or (notice.owner_id != account.id and not is_staff(account)):
        raise NotFound(f"no notice with id {notice_id}")
    return notice


def visible_job(session: Session, account: Account, job_id: int) -> WebJob:
    job = session.get(WebJob, job_id)
    if job is None or job.owner_id != account.id:
        raise NotFound(f"no job with id {job_id}")
    return job


def work_rows(session: Session, owner_id: int) -> list[tuple[Work, int]]:
    """The owner's works, newest first, each with its count of flagged (not suppressed) matches."""
    counts = (
        select(Match.work_id, func.count(Match.id).label("n"))
        .where(Match.owner_id == owner_id, Match.status != MatchStatus.SUPPRESSED)
        .group_by(Match.work_id)
        .subquery()
    )
    rows = session.execute(
        select(Work, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.work_id == Work.id)
        .where(Work.owner_id == owner_id)
        .order_by(Work.created_at.desc(), Work.id.desc())
    ).all()
    return [(w, int(n)) for w, n in rows]


def match_query(
    account: Account, *, work_id: int | None = None, include_suppressed: bool = False
) -> Select[Any]:
    """Matches the account may list, highest score first."""
    # Listings show each match's upload and work: load them in the same query.
    q = select(Match).options(joinedload(Match.upload), joinedload(Match.work))
    if not is_staff(account):
        q = q.where(Match.owner_id == account.id)
    if work_id is not None:
        q = q.where(Match.work_id == work_id)
    if not include_suppressed:
        q = q.where(Match.status != MatchStatus.SUPPRESSED)
    return q.order_by(Match.score.desc(), Match.created_at.asc(), Match.id.asc())


def notice_query(account: Account, *, states: tuple[Any, ...] = ()) -> Select[Notice, Any]:
    """Notices the account may list, most confident first, then oldest first.

    Confidence is the best match score among the notice's items.
    """
    best = (
        select(NoticeItem.notice_id, func.max(Match.score).label("best"))
        .join(Match, Match.id == NoticeItem.match_id)
        .group_by(NoticeItem.notice_id)
        .subquery()
    )
    q = (
        select(Notice, func.coalesce(best.c.best, 0.0))
        .outerjoin(best, best.c.notice_id == Notice.id)
        .options(selectinload(Notice.items))
    )
    if not is_staff(account):
        q = q.where(Notice.owner_id == account.id)
    if states:
        q = q.where(Notice.state.in_(states))
    return q.order_by(
        func.coalesce(best.c.best, 0.0).desc(), Notice.created_at.asc(), Notice.id.asc()
    )
