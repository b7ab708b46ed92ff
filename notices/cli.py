"""``artwatch notices``: review, send and follow up notices from the shell.

Mounted on the ``artwatch`` group by the lead. Commands read
``ctx.obj.settings`` (config.Settings), ``ctx.obj.sessions`` (a SQLAlchemy
sessionmaker) and ``ctx.obj.blobs`` (the blob store). Every
:class:`~notices.errors.NoticeError` is printed as a clear message (exit
status 2), never as a traceback.
"""

from __future__ import annotations

import getpass
import sys
from datetime import date
from pathlib import Path
from typing import Any

import click
import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from notices.errors import ApprovalRefused, NoticeError, SendRefused, UnknownReviewer
from storage.db import session_scope
from storage.models import Account, AuditEvent, Notice, NoticeItem, NoticeState, Role

__all__ = ["notices_group"]


class _NoticesGroup(click.Group):
    """Prints NoticeError messages (one problem per line) and exits with status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApprovalRefused as exc:
            click.secho("error: notice cannot be approved yet; missing:", fg="red", err=True)
            for gap in exc.missing:
                click.echo(f"  - {gap}", err=True)
            ctx.exit(2)
        except NoticeError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(2)


def _obj(ctx: click.Context) -> Any:
    obj = ctx.find_root().obj if ctx.obj is None else ctx.obj
    if obj is None:
        raise click.UsageError("artwatch notices must run under the artwatch command")
    return obj


def _default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no user name on this machine
        return "cli"


def _actor(session: Session, given: str | None, notice_id: int | None = None) -> str:
    """Who to record in the audit trail: ``cli:<user>`` when --reviewer is not given.

    A given --reviewer must be an account (matched case-insensitively) and,
    for a notice, a reviewer, an admin or the notice's owner: the trail must
    name someone who can answer for the step. Raises UnknownReviewer."""
    if not given:
        return _default_actor()
    email = given.strip()
    acct = session.scalar(select(Account).where(func.lower(Account.email) == email.lower()))
    if acct is None:
        raise UnknownReviewer(f"no account for {email}: --reviewer must name an existing account "
                              f"(create one with `artwatch users add {email} --role reviewer`)")
    if notice_id is not None and acct.role not in (Role.REVIEWER, Role.ADMIN):
        notice = session.get(Notice, notice_id)
        if notice is not None and notice.owner_id != acct.id:
            raise UnknownReviewer(f"{acct.email} is neither a reviewer nor the owner of notice {notice_id}")
    return acct.email


def _client(settings: Any) -> httpx.Client:
    from crawler.limits import host_limits
    from crawler.service import build_client

    return build_client(settings.crawler, host_limits(settings))


_actor_option = click.option("--reviewer", "actor", default=None, metavar="EMAIL",
                             help="Who does this (recorded in the audit log): an account's email. "
                                  "Default: cli:<user>.")


@click.group("notices", cls=_NoticesGroup)
def notices_group() -> None:
    """Review, send and follow up takedown notices."""


@notices_group.command("list")
@click.option("--state", type=click.Choice([s.value for s in NoticeState]), help="Only notices in this state.")
@click.pass_context
def list_cmd(ctx: click.Context, state: str | None) -> None:
    """One line per notice, newest first."""
    from notices.drafting import notice_laws

    obj = _obj(ctx)
    with session_scope(obj.sessions) as s:
        counts: dict[int, int] = {nid: int(c) for nid, c in s.execute(
            select(NoticeItem.notice_id, func.count(NoticeItem.id)).group_by(NoticeItem.notice_id))}
        q = select(Notice).order_by(Notice.id.desc())
        if state:
            q = q.where(Notice.state == NoticeState(state))
        rows = list(s.scalars(q))
        if not rows:
            click.echo("no notices" + (f" in state {state}" if state else ""))
            return
        laws = notice_laws(s, rows)
        click.echo(f"{'ID':>5}  {'STATE':<10} {'LAW':<14} {'ITEMS':>5}  {'HOST':<24} RECIPIENT / FLAGS")
        for n in rows:
            extra = n.recipient or "(none)"
            if n.flags:
                extra += "  [" + ", ".join(n.flags) + "]"
            law = "+".join(laws[n.id])
            click.echo(f"{n.id:>5}  {n.state.value:<10} {law:<14} {counts.get(n.id, 0):>5}  {n.host[:24]:<24} {extra}")


@notices_group.command("show")
@click.argument("notice_id", type=int)
@click.option("--html", "show_html", is_flag=True, help="Print the HTML body instead of the text.")
@click.pass_context
def show_cmd(ctx: click.Context, notice_id: int, show_html: bool) -> None:
    """The notice, its items, what approval still needs, and its audit trail."""
    from notices.drafting import notice_laws
    from notices.workflow import approval_gaps, get_notice

    obj = _obj(ctx)
    with session_scope(obj.sessions) as s:
        n = get_notice(s, notice_id)
        owner = s.get(Account, n.owner_id)
        click.echo(f"notice {n.id}: {n.state.value}{' (' + n.resolution + ')' if n.resolution else ''}")
        click.echo(f"  owner:     {owner.email if owner else n.owner_id}")
        click.echo(f"  host:      {n.host}   law: {' + '.join(notice_laws(s, [n])[n.id])}")
        click.echo(f"  recipient: {n.recipient or '(none: choose one with `notices edit --recipient`)'}")
        if n.flags:
            click.echo(f"  flags:     {', '.join(n.flags)}")
        if "verify_recipient" in n.flags:
            click.echo("             the host directory marks this recipient for checking before sending")
        if n.reject_reason:
            click.echo(f"  rejected:  {n.reject_reason}")
        for label, value in (("sent", n.sent_at), ("follow-up", n.followup_due_at),
                             ("counter-notice", n.counter_notice_at), ("restore from", n.restore_not_before),
                             ("restore by", n.restore_deadline)):
            if value is not None:
                click.echo(f"  {label + ':':<10} {value:%Y-%m-%d %H:%M} UTC")
        click.echo("  items:")
        for item in n.items:
            click.echo(f"    - {item.url}  {item.online or 'not checked'}")
        if n.state in (NoticeState.DRAFT, NoticeState.IN_REVIEW):
            gaps = approval_gaps(s, n)
            click.echo("  approval needs: " + ("the fair-use checklist" if not gaps else ""))
            for gap in gaps:
                click.echo(f"    - {gap}")
        click.echo(f"\nSubject: {n.subject}\n")
        click.echo(n.body_html if show_html else n.body_text)
        click.echo("audit trail:")
        for ev in s.scalars(select(AuditEvent).where(AuditEvent.entity == "notice", AuditEvent.entity_id == n.id)
                            .order_by(AuditEvent.id)):
            extra = ""
            if "from" in ev.detail:
                extra = f" {ev.detail['from']} -> {ev.detail['to']}"
            if "reason" in ev.detail:
                extra += f" ({ev.detail['reason']})"
            click.echo(f"  {ev.at:%Y-%m-%d %H:%M:%S}  {ev.actor:<24} {ev.action}{extra}")


@notices_group.command("submit")
@click.argument("notice_id", type=int)
@_actor_option
@click.pass_context
def submit_cmd(ctx: click.Context, notice_id: int, actor: str | None) -> None:
    """Move a draft into review."""
    from notices.workflow import submit

    with session_scope(_obj(ctx).sessions) as s:
        submit(s, notice_id, _actor(s, actor, notice_id))
    click.echo(f"notice {notice_id} is in review")


def _parse_fair_use(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, answer = v.partition("=")
        if not sep:
            raise click.BadParameter(f"{v!r}: expected key=yes or key=no", param_hint="--fair-use")
        out[key.strip()] = answer.strip()
    return out


@notices_group.command("approve")
@click.argument("notice_id", type=int)
@click.option("--reviewer", "actor", required=False, metavar="EMAIL",
              help="The reviewer approving (required): the email of a reviewer's, an admin's or the owner's account.")
@click.option("--fair-use", "fair_use", multiple=True, metavar="KEY=yes|no",
              help="One answer of the fair-use checklist; repeat for each: commentary_or_criticism, parody, "
                   "small_portion, transformative, none_applies.")
@click.option("--interactive/--no-interactive", default=None,
              help="Ask for missing answers (default: when stdin is a terminal).")
@click.pass_context
def approve_cmd(ctx: click.Context, notice_id: int, actor: str | None, fair_use: tuple[str, ...],
                interactive: bool | None) -> None:
    """Approve a notice after the fair-use checklist."""
    from notices.workflow import FAIR_USE_QUESTIONS, approve

    answers = _parse_fair_use(fair_use)
    if interactive is None:
        interactive = sys.stdin.isatty()
    if interactive:
        if not actor:
            actor = click.prompt("Reviewer email")
        for key, question in FAIR_USE_QUESTIONS.items():
            if key not in answers:
                answers[key] = click.prompt(f"{question} [{key}]", type=click.Choice(["yes", "no"]))
    if not actor:
        raise click.UsageError("--reviewer EMAIL is required to approve")
    with session_scope(_obj(ctx).sessions) as s:
        actor = _actor(s, actor, notice_id)
        approve(s, notice_id, actor, answers)
    click.echo(f"notice {notice_id} approved by {actor}")


@notices_group.command("reject")
@click.argument("notice_id", type=int)
@click.option("--reason", required=True, help="Why the notice must not be sent.")
@_actor_option
@click.pass_context
def reject_cmd(ctx: click.Context, notice_id: int, reason: str, actor: str | None) -> None:
    """Reject a notice, with a reason."""
    from notices.workflow import reject

    with session_scope(_obj(ctx).sessions) as s:
        reject(s, notice_id, _actor(s, actor, notice_id), reason)
    click.echo(f"notice {notice_id} rejected")


@notices_group.command("edit")
@click.argument("notice_id", type=int)
@click.option("--body-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="New text body from this file (otherwise $EDITOR opens when nothing else is given).")
@click.option("--subject", help="New subject line.")
@click.option("--recipient", help="Where to send: the agent's email or the host's web form URL "
                                   "(giving the drafted one confirms it).")
@click.option("--law", type=click.Choice(["dmca", "dsa"]), help="The copyright law the notice invokes (unknown hosts); "
                                                              "logos keep their trademark part.")
@_actor_option
@click.pass_context
def edit_cmd(ctx: click.Context, notice_id: int, body_file: Path | None, subject: str | None,
             recipient: str | None, law: str | None, actor: str | None) -> None:
    """Edit the wording, subject or recipient (a diff is kept in the audit log)."""
    from notices.workflow import approval_gaps, edit, get_notice

    obj = _obj(ctx)
    body: str | None = None
    if body_file is not None:
        body = body_file.read_text(encoding="utf-8")
    elif subject is None and recipient is None and law is None:
        with session_scope(obj.sessions) as s:
            current = get_notice(s, notice_id).body_text
        body = click.edit(current, extension=".txt", require_save=True)
        if body is None:
            click.echo("no changes")
            return
    with session_scope(obj.sessions) as s:
        edit(s, notice_id, _actor(s, actor, notice_id), body_text=body, subject=subject, recipient=recipient,
             law=law)
        missing = approval_gaps(s, get_notice(s, notice_id))
    click.echo(f"notice {notice_id} updated")
    for gap in missing:
        click.echo(f"  still missing: {gap}")


@notices_group.command("send")
@click.argument("notice_id", type=int)
@_actor_option
@click.pass_context
def send_cmd(ctx: click.Context, notice_id: int, actor: str | None) -> None:
    """Re-check the content is online, then email an approved notice."""
    from notices.sending import send_notice

    obj = _obj(ctx)
    with _client(obj.settings) as client, session_scope(obj.sessions) as s:
        result = send_notice(s, obj.blobs, notice_id, _actor(s, actor, notice_id), obj.settings, client)
    if result.outcome == "blocked":  # raised only now: the record on the notice is committed
        raise SendRefused(f"notice {notice_id} not sent: {result.reason}; this is recorded on the notice "
                          f"(artwatch notices show {notice_id})")
    if result.outcome == "sent":
        click.echo(f"notice {notice_id} sent")
    elif result.outcome == "all_removed":
        click.echo(f"notice {notice_id} not sent: the content is already gone; resolved as removed")
    else:
        click.echo(f"notice {notice_id} not sent: some content is already gone, so it went back to review:")
        for url in result.removed:
            click.echo(f"  removed: {url}")


@notices_group.command("mark-sent")
@click.argument("notice_id", type=int)
@click.option("--via", type=click.Choice(["web_form", "export"]), default="web_form", show_default=True)
@_actor_option
@click.pass_context
def mark_sent_cmd(ctx: click.Context, notice_id: int, via: str, actor: str | None) -> None:
    """Record that an approved notice was submitted by hand (web form or export)."""
    from notices.workflow import mark_sent

    obj = _obj(ctx)
    with session_scope(obj.sessions) as s:
        mark_sent(s, notice_id, _actor(s, actor, notice_id), via=via,
                  followup_days=obj.settings.notices.followup_days)
    click.echo(f"notice {notice_id} recorded as sent via {via}")


@notices_group.command("export")
@click.argument("notice_id", type=int)
@click.option("--eml", type=click.Path(dir_okay=False, writable=True, path_type=Path), help="Write an .eml file.")
@click.option("--pdf", type=click.Path(dir_okay=False, writable=True, path_type=Path), help="Write a PDF.")
@click.option("--bundle", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Write the evidence zip.")
@click.pass_context
def export_cmd(ctx: click.Context, notice_id: int, eml: Path | None, pdf: Path | None, bundle: Path | None) -> None:
    """Export the notice as .eml, PDF and/or the evidence bundle."""
    from notices.evidence import build_bundle
    from notices.sending import export_eml, export_pdf
    from notices.workflow import record_export

    if not (eml or pdf or bundle):
        raise click.UsageError("give at least one of --eml, --pdf, --bundle")
    obj = _obj(ctx)
    with session_scope(obj.sessions) as s:
        outputs = []
        if eml:
            outputs.append((eml, export_eml(s, obj.blobs, notice_id, obj.settings)))
            record_export(s, notice_id, _default_actor(), "eml")
        if pdf:
            outputs.append((pdf, export_pdf(s, notice_id)))
            record_export(s, notice_id, _default_actor(), "pdf")
        if bundle:
            outputs.append((bundle, build_bundle(s, obj.blobs, notice_id)))
            record_export(s, notice_id, _default_actor(), "bundle")
    for path, data in outputs:
        try:
            path.write_bytes(data)
        except OSError as exc:
            raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from None
        click.echo(f"wrote {path} ({len(data)} bytes)")


@notices_group.command("followup")
@_actor_option
@click.pass_context
def followup_cmd(ctx: click.Context, actor: str | None) -> None:
    """Re-check sent notices whose follow-up is due; resolve each."""
    from notices.sending import run_followups

    obj = _obj(ctx)
    with _client(obj.settings) as client, session_scope(obj.sessions) as s:
        results = run_followups(s, client, obj.settings, _actor(s, actor) if actor else "artwatch-followup")
    if not results:
        click.echo("no follow-ups due")
    for r in results:
        line = f"notice {r.notice_id}: {r.outcome}"
        if r.still_online:
            line += " (" + ", ".join(r.still_online) + ")"
        if r.error:
            line += f": {r.error}"
        click.echo(line)


@notices_group.command("reply")
@click.argument("notice_id", type=int)
@click.argument("reply", type=click.Choice(["removed", "refused", "no_answer"]))
@click.option("--note", default="", help="What the host wrote, briefly.")
@_actor_option
@click.pass_context
def reply_cmd(ctx: click.Context, notice_id: int, reply: str, note: str, actor: str | None) -> None:
    """Record the host's reply to a sent notice: removed, refused (still online) or no_answer."""
    from notices.workflow import record_reply

    with session_scope(_obj(ctx).sessions) as s:
        n = record_reply(s, notice_id, _actor(s, actor, notice_id), reply, note)
        state, resolution = n.state.value, n.resolution
    click.echo(f"notice {notice_id}: reply recorded; {state}" + (f" ({resolution})" if resolution else ""))


@notices_group.command("counter")
@click.argument("notice_id", type=int)
@click.option("--date", "received", required=True, type=click.DateTime(["%Y-%m-%d"]),
              help="When the counter-notice was received (YYYY-MM-DD).")
@_actor_option
@click.pass_context
def counter_cmd(ctx: click.Context, notice_id: int, received: Any, actor: str | None) -> None:
    """Record a counter-notice and print the restore window (10-14 business days)."""
    from notices.workflow import record_counter_notice

    day: date = received.date()
    with session_scope(_obj(ctx).sessions) as s:
        n = record_counter_notice(s, notice_id, _actor(s, actor, notice_id), day)
        start, end = n.restore_not_before, n.restore_deadline
    assert start is not None and end is not None
    click.echo(f"counter-notice recorded for notice {notice_id}; the host may restore the material from "
               f"{start:%Y-%m-%d} and must by {end:%Y-%m-%d} unless the owner files an action")


@notices_group.command("redraft")
@click.option("--owner", "owner_email", default=None, help="Only this owner's matches.")
@click.pass_context
def redraft_cmd(ctx: click.Context, owner_email: str | None) -> None:
    """Draft new matches that no notice lists yet (e.g. after an owner filled in their profile)."""
    from notices.drafting import draft_pending

    obj = _obj(ctx)
    with session_scope(obj.sessions) as s:
        owner_id = None
        if owner_email:
            owner = s.scalar(select(Account).where(Account.email == owner_email))
            if owner is None:
                raise click.ClickException(f"no account with email {owner_email}")
            owner_id = owner.id
        touched, blocked = draft_pending(s, obj.settings, owner_id)
    click.echo(
        f"{len(touched)} notice(s) drafted or extended" + (f": {', '.join(map(str, touched))}" if touched else "")
    )
    for why in blocked.values():
        click.echo(f"still blocked: {why}")


@notices_group.command("template")
@click.argument("owner_email")
@click.argument("law", type=click.Choice(["dmca", "dsa", "trademark"]))
@click.argument("variant", type=click.Choice(["text", "html"]))
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_actor_option
@click.pass_context
def template_cmd(ctx: click.Context, owner_email: str, law: str, variant: str, source: Path,
                 actor: str | None) -> None:
    """Store an owner's own template after checking it renders a complete notice."""
    from notices.drafting import save_owner_template

    with session_scope(_obj(ctx).sessions) as s:
        owner = s.scalar(select(Account).where(Account.email == owner_email))
        if owner is None:
            raise click.ClickException(f"no account with email {owner_email}")
        save_owner_template(s, owner.id, law, variant, source.read_text(encoding="utf-8"), _actor(s, actor))
    click.echo(f"{law} {variant} template stored for {owner_email}")
