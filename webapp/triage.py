"""Triage: a person's decision on a match, one at a time or many at once.

Four decisions, as the triage inboxes of Pixsy or Copytrack offer them:

- ``infringing``: confirmed; the match goes down the drafting path as a new
  match does (``notices.drafting.draft_for_match``), now or, when drafting is
  blocked (the owner's profile is incomplete), at the next ``draft_pending``.
- ``licensed``: the upload's site joins the work's licensed sites, and this and
  every other open match of that work on the site is suppressed, as the
  pipeline suppresses matches on licensed sites.
- ``unsure``: kept for a second look.
- ``ignore``: dismissed.

Each decision writes an audit event (entity ``match``). Matches listed in a
notice keep their notice; a decision does not withdraw a notice already drafted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, joinedload

from storage.models import Account, AuditEvent, Match, MatchStatus, Upload
from webapp.access import is_staff
from webapp.errors import InvalidInput

__all__ = ["DECISIONS", "Outcome", "decide", "summary"]

#: decision -> (button label, status it sets)
DECISIONS: dict[str, tuple[str, MatchStatus]] = {
    "infringing": ("Infringing", MatchStatus.INFRINGING),
    "licensed": ("Licensed", MatchStatus.SUPPRESSED),
    "unsure": ("Not sure", MatchStatus.UNSURE),
    "ignore": ("Ignore", MatchStatus.DISMISSED),
}
#: Statuses a licensed decision sweeps up on the same site.
_OPEN = (MatchStatus.NEW, MatchStatus.UNSURE)
MAX_BULK = 500


@dataclass
class Outcome:
    """What a decision did."""

    decided: list[int] = field(default_factory=list)
    drafted: list[int] = field(default_factory=list)  # notice ids
    blocked: str = ""  # why drafting waits, if it does
    blocked_profile: bool = False  # ... because the owner's profile is incomplete
    licensed: list[str] = field(default_factory=list)  # sites added to allowlists
    suppressed: list[int] = field(default_factory=list)  # other matches swept up by "licensed"


def _site(upload: Upload) -> str:
    host = (upload.host or "").strip().lower()
    return host[4:] if host.startswith("www.") else host


def _audit(session: Session, actor: str, match: Match, decision: str, **detail: Any) -> None:
    session.add(
        AuditEvent(
            actor=actor,
            action=f"triage_{decision}",
            entity="match",
            entity_id=match.id,
            detail={"decision": decision, "work_id": match.work_id, **detail},
        )
    )


def decide(
    session: Session, account: Account, match_ids: Sequence[int], decision: str, settings: Any
) -> Outcome:
    """Apply one decision to the matches the account may see (others are skipped silently)."""
    if decision not in DECISIONS:
        raise InvalidInput(f"unknown decision {decision!r}; choose one of {', '.join(DECISIONS)}")
    ids = sorted({int(i) for i in match_ids})[:MAX_BULK]
    if not ids:
        raise InvalidInput("choose at least one match")
    q = select(Match).options(joinedload(Match.upload), joinedload(Match.work)).where(Match.id.in_(ids))
    if not is_staff(account):
        q = q.where(Match.owner_id == account.id)
    out = Outcome()
    status = DECISIONS[decision][1]
    for match in session.scalars(q).unique().all():
        if decision == "licensed":
            _license(session, account, match, out)
        else:
            match.status = status
            match.status_reason = f"{DECISIONS[decision][0].lower()}: decided by {account.email}"
            _audit(session, account.email, match, decision)
        out.decided.append(match.id)
    session.flush()
    if decision == "infringing":
        _draft(session, out, settings)
    return out


def _license(session: Session, account: Account, match: Match, out: Outcome) -> None:
    work, site = match.work, _site(match.upload)
    if not site:
        raise InvalidInput(f"match {match.id}: the upload has no site to allow")
    sites = [str(s) for s in (work.licensed_sites or [])]
    if site not in (s.strip().lower() for s in sites):
        work.licensed_sites = [*sites, site]  # a new list, so the JSON column sees the change
        out.licensed.append(site)
    reason = f"licensed site: {site} (decided by {account.email})"
    match.status, match.status_reason = MatchStatus.SUPPRESSED, reason
    _audit(session, account.email, match, "licensed", site=site)
    same_site = session.scalars(
        select(Match)
        .join(Upload, Upload.id == Match.upload_id)
        .where(
            Match.work_id == work.id,
            Match.id != match.id,
            Match.status.in_(_OPEN),
            or_(Upload.host == site, Upload.host.endswith("." + site, autoescape=True)),
        )
    ).all()
    for other in same_site:
        other.status, other.status_reason = MatchStatus.SUPPRESSED, reason
        out.suppressed.append(other.id)


def _draft(session: Session, out: Outcome, settings: Any) -> None:
    from notices.drafting import draft_for_match
    from notices.errors import NoticeError, ProfileIncomplete

    for match_id in out.decided:
        try:
            with session.begin_nested():
                notice = draft_for_match(session, match_id, settings)
        except NoticeError as exc:
            out.blocked = str(exc)
            out.blocked_profile = out.blocked_profile or isinstance(exc, ProfileIncomplete)
            continue
        if notice is not None and notice.id not in out.drafted:
            out.drafted.append(notice.id)


def summary(params: Mapping[str, str]) -> dict[str, Any]:
    """The decision's summary as the redirect after it carries it (numbers and fixed words only)."""

    def _n(name: str) -> int:
        try:
            return max(0, int(params.get(name, "0")))
        except ValueError:
            return 0

    decision = params.get("decision", "")
    blocked = params.get("blocked", "")
    return {
        "done": _n("done"),
        "decision": decision if decision in DECISIONS else "",
        "drafted": _n("drafted"),
        "swept": _n("swept"),
        "blocked": blocked if blocked in ("profile", "other") else "",
    }
