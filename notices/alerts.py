"""Owner email alerts: one email per new match (instant) or one per day (digest).

Each owner picks ``instant``, ``digest`` or ``off`` (``Account.alert_mode``).
A match is alerted at most once: it is claimed by setting ``alerted_at`` with
a conditional UPDATE that is committed *before* the email goes out, so two
workers racing on the same match send one email. If sending fails the claim
is released and the error propagates, so the task's retry sends it later.

Every email carries thumbnails of the work and the upload as inline images,
a link to the evidence page, and an unsubscribe link that needs no login
(a signed token, also offered as RFC 8058 one-click ``List-Unsubscribe``).
Suppressed matches (licensed sites) and dismissed ones are never alerted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import jinja2
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from config.settings import Settings
from notices.content import clean_inline
from notices.images import thumbnail_png
from storage.blobs import BlobNotFound, BlobStore
from storage.models import Account, Match, MatchStatus
from storage.secret_key import UNSUBSCRIBE_SALT, resolve_secret_key

__all__ = [
    "ALERT_MODES",
    "digest_due_since",
    "send_digests",
    "send_instant_alert",
    "unsubscribe_url",
]

log = logging.getLogger(__name__)

ALERT_MODES = ("instant", "digest", "off")
DIGEST_MAX_MATCHES = 50  # more are summarised with a link to the full list

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates" / "email"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=True),
    keep_trailing_newline=True,
)
_env.filters["pct"] = lambda v: f"{float(v) * 100:.0f}%"
_env.filters["when"] = lambda d: d.strftime("%Y-%m-%d %H:%M UTC") if d else "unknown time"
# Crawled strings reach the email body: one line each, no CR/LF to forge lines.
_env.filters["oneline"] = clean_inline


def unsubscribe_url(settings: Settings, account_id: int) -> str:
    # The token webapp.security.Signer.unsubscribe_account reads back.
    token = URLSafeTimedSerializer(resolve_secret_key(settings), salt=UNSUBSCRIBE_SALT).dumps({"a": account_id})
    return f"{settings.web.base_url.rstrip('/')}/unsubscribe/{token}"


@dataclass
class _Item:
    match: Match
    evidence_url: str
    work_cid: str | None
    upload_cid: str | None


def _claim(session: Session, match_ids: list[int], now: datetime) -> list[int]:
    """Mark unalerted matches as alerted now; return the ids this call won."""
    won = []
    for mid in match_ids:
        result = session.execute(
            update(Match)
            .where(Match.id == mid, Match.alerted_at.is_(None))
            .values(alerted_at=now)
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) == 1:
            won.append(mid)
    session.commit()
    return won


def _release(session: Session, match_ids: list[int]) -> None:
    session.rollback()
    session.execute(
        update(Match)
        .where(Match.id.in_(match_ids))
        .values(alerted_at=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def _thumb(blobs: BlobStore, sha: str | None) -> bytes | None:
    if not sha:
        return None
    try:
        return thumbnail_png(blobs.get(sha), box=200)
    except BlobNotFound:
        return None


def _compose(
    settings: Settings,
    blobs: BlobStore,
    account: Account,
    matches: list[Match],
    *,
    digest: bool,
    now: datetime,
) -> EmailMessage:
    from notices.mail import build_message, safe_header

    base = settings.web.base_url.rstrip("/")
    images: list[tuple[str, bytes]] = []
    items = []
    for m in matches[:DIGEST_MAX_MATCHES]:
        cids: list[str | None] = []
        for sha in (m.work.blob_sha256, m.upload.blob_sha256):
            png = _thumb(blobs, sha)
            if png is None:
                cids.append(None)
                continue
            cid = make_msgid(domain="artwatch.local")
            images.append((cid, png))
            cids.append(cid[1:-1])
        items.append(_Item(m, f"{base}/matches/{m.id}", cids[0], cids[1]))
    unsub = unsubscribe_url(settings, account.id)
    context: dict[str, Any] = {
        "account": account,
        "items": items,
        "digest": digest,
        "now": now,
        "unsubscribe": unsub,
        "more": max(0, len(matches) - DIGEST_MAX_MATCHES),
        "matches_url": f"{base}/matches",
        "profile_url": f"{base}/profile",
    }
    if digest:
        works = {m.work_id for m in matches}
        subject = (
            f"artwatch daily digest: {len(matches)} new match{'es' if len(matches) != 1 else ''} "
            f"of {len(works)} work{'s' if len(works) != 1 else ''}"
        )
    else:
        m = matches[0]
        subject = (
            f"artwatch: a copy of \u201c{m.work.title}\u201d on {m.upload.host or 'an image site'}"
        )
    text = _env.get_template("alert.txt").render(context)
    html = _env.get_template("alert.html").render(context)
    msg = build_message(settings.notices, account.email, safe_header(subject), text, html)
    html_part = msg.get_body(preferencelist=("html",))
    assert isinstance(html_part, EmailMessage)
    for cid, png in images:
        html_part.add_related(
            png, maintype="image", subtype="png", cid=cid, filename="thumbnail.png"
        )
    msg["List-Unsubscribe"] = f"<{unsub}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    return msg


def _deliver(
    session: Session,
    settings: Settings,
    blobs: BlobStore,
    account: Account,
    match_ids: list[int],
    *,
    digest: bool,
    now: datetime,
) -> bool:
    from notices.mail import AddressError, send_email, single_address

    try:
        single_address(account.email)
    except AddressError:
        # Rows older than the address check may hold a list ("a@x, b@y") that
        # would add recipients; such an owner gets no email until it is fixed.
        log.warning("no alert for account %s: its email is not one valid address", account.id,
                    extra={"account_id": account.id})
        return False
    won = _claim(session, match_ids, now)
    if not won:
        return False
    matches = list(
        session.scalars(
            select(Match).where(Match.id.in_(won)).order_by(Match.score.desc(), Match.id)
        )
    )
    try:
        send_email(
            settings.notices, _compose(settings, blobs, account, matches, digest=digest, now=now)
        )
    except BaseException:
        _release(session, won)
        raise
    log.info(
        "alert sent to account %s for %d match(es)",
        account.id,
        len(won),
        extra={"account_id": account.id, "match_ids": won},
    )
    return True


def send_instant_alert(
    session: Session, blobs: BlobStore, settings: Settings, match_id: int
) -> bool:
    """Email the owner about one new match if they chose instant alerts.

    Returns True when an email was sent; False when the match is gone, not
    flagged (suppressed or dismissed), already alerted, or the owner chose a
    digest or no alerts (a digest owner hears about it in the next digest).
    Raises notices.errors.MailError when the SMTP server refuses (the claim
    is released first, so a retry sends it). Commits the session.
    """
    match = session.get(Match, match_id)
    if match is None or match.status in (MatchStatus.SUPPRESSED, MatchStatus.DISMISSED) or match.alerted_at is not None:
        return False
    account = session.get(Account, match.owner_id)
    if account is None or account.alert_mode != "instant":
        return False
    return _deliver(
        session, settings, blobs, account, [match.id], digest=False, now=datetime.now(UTC)
    )


def digest_due_since(settings: Settings, now: datetime) -> datetime:
    """The latest daily digest time at or before ``now`` (UTC)."""
    now = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    at = now.replace(hour=settings.alerts.digest_hour_utc, minute=0, second=0, microsecond=0)
    return at if at <= now else at - timedelta(days=1)


def send_digests(session: Session, blobs: BlobStore, settings: Settings, now: datetime) -> int:
    """Send the daily digest to each digest-mode owner who is due one and has news.

    An owner is due once per day, from ``settings.alerts.digest_hour_utc``
    on: beat may call this every hour, and each owner still gets at most one
    digest a day, holding every unalerted new match found up to ``now``.
    Returns the number of emails sent; running it again sends nothing new.
    One owner's failure does not stop the others; the first error is raised
    at the end so the task can retry (the sent ones stay sent). Commits the
    session.
    """
    due = digest_due_since(settings, now)
    owners = session.scalars(
        select(Account)
        .where(Account.alert_mode == "digest")
        .where(or_(Account.last_digest_at.is_(None), Account.last_digest_at < due))
        .where(
            Account.id.in_(
                select(Match.owner_id).where(
                    Match.alerted_at.is_(None),
                    Match.status.notin_((MatchStatus.SUPPRESSED, MatchStatus.DISMISSED)),
                    Match.created_at <= now,
                )
            )
        )
        .order_by(Account.id)
    ).all()
    sent = 0
    first_error: BaseException | None = None
    for account in owners:
        ids = list(
            session.scalars(
                select(Match.id)
                .where(
                    Match.owner_id == account.id,
                    Match.alerted_at.is_(None),
                    Match.status.notin_((MatchStatus.SUPPRESSED, MatchStatus.DISMISSED)),
                    Match.created_at <= now,
                )
                .order_by(Match.id)
            )
        )
        try:
            if _deliver(session, settings, blobs, account, ids, digest=True, now=now):
                account.last_digest_at = now
                session.commit()
                sent += 1
        except Exception as exc:  # noqa: BLE001 - reported after the other owners are served
            log.warning("digest for account %s failed: %s", account.id, exc)
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return sent
