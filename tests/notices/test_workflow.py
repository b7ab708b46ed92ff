"""The review workflow on SQLite and on the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import pytest
from sqlalchemy import select

from config.settings import NoticeSettings
from notices import workflow
from notices.business_days import add_business_days, is_business_day
from notices.content import as_utc
from notices.drafting import draft_for_match
from notices.errors import ApprovalRefused, IllegalTransition, NoticeNotFound
from storage.db import session_scope
from storage.models import AuditEvent, NoticeState, WorkKind

from . import factory as f

REVIEWER = "rev@artwatch.test"
OK = {"commentary_or_criticism": "no", "parody": "no", "small_portion": "no", "transformative": "no",
      "none_applies": "yes"}


@pytest.fixture
def notice_id(sessions: Any) -> int:
    with session_scope(sessions) as s:
        acc = f.owner(s)
        m = f.match(s, f.upload(s, "https://i.imgur.com/w.png", "https://imgur.com/gallery/w"), f.work(s, acc)).id
    with session_scope(sessions) as s:
        n = draft_for_match(s, m, NoticeSettings())
        assert n is not None
        return n.id


def _events(s: Any, nid: int) -> list[AuditEvent]:
    return list(s.scalars(select(AuditEvent).where(AuditEvent.entity == "notice", AuditEvent.entity_id == nid)
                          .order_by(AuditEvent.id)))


def test_full_path_is_audited_with_who_and_when(sessions: Any, notice_id: int) -> None:
    sent_at = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
    with session_scope(sessions) as s:
        workflow.submit(s, notice_id, REVIEWER)
        workflow.approve(s, notice_id, REVIEWER, OK)
        n = workflow.mark_sent(s, notice_id, "sender@artwatch.test", via="web_form", followup_days=7, now=sent_at)
        assert as_utc(n.followup_due_at) == datetime(2026, 11, 9, 12, 0, tzinfo=UTC)
        workflow.resolve(s, notice_id, "followup", "removed")
    with session_scope(sessions) as s:
        ev = _events(s, notice_id)
        trail = [(e.action, e.actor, e.detail.get("from"), e.detail.get("to")) for e in ev]
        assert trail == [
            ("drafted", "artwatch", None, None),
            ("item_added", "artwatch", None, None),
            ("submitted", REVIEWER, "draft", "in_review"),
            ("approved", REVIEWER, "in_review", "approved"),
            ("sent", "sender@artwatch.test", "approved", "sent"),
            ("resolved", "followup", "sent", "resolved"),
        ]
        assert all(e.at is not None for e in ev)
        assert ev[3].detail["fair_use"]["none_applies"] is True and ev[3].detail["fair_use"]["reviewer"] == REVIEWER
        assert ev[5].detail["resolution"] == "removed"


FAIR_USE_CASES = [
    ({}, 'answer yes or no to “Is the use commentary or criticism of the work?”, “Is the use a parody of the '
         'work?”, “Does the use take only a small portion of the work?”, “Does the use transform the work (new '
         'expression, meaning or purpose)?”, “Having considered the questions above, are you satisfied that none '
         'of them applies?”'),
    ({**OK, "parody": "maybe"}, 'answer yes or no to “Is the use a parody of the work?”'),
    ({**OK, "parody": "yes", "none_applies": "no"}, 'answered yes to “Is the use a parody of the work?”; the use '
                                                    "may be fair"),
    ({**OK, "none_applies": "no"}, 'are you satisfied that none of them applies?” must be yes'),
    ({**OK, "vibes": "no"}, "unknown question(s) vibes"),
]


def test_fair_use_checklist_must_be_complete(sessions: Any, notice_id: int) -> None:
    for answers, expect in FAIR_USE_CASES:
        with session_scope(sessions) as s:
            with pytest.raises(ApprovalRefused) as info:
                workflow.approve(s, notice_id, REVIEWER, answers)
            assert any(expect in m for m in info.value.missing), info.value.missing
            assert workflow.get_notice(s, notice_id).state == NoticeState.DRAFT


def test_edits_keep_a_diff_and_approval_lists_missing_elements(sessions: Any, notice_id: int) -> None:
    with session_scope(sessions) as s:
        n = workflow.get_notice(s, notice_id)
        cut = n.body_text.replace("under penalty of perjury, ", "").replace("+31 20 555 0101", "")
        workflow.edit(s, notice_id, REVIEWER, body_text=cut, subject="Copyright notice")
    with session_scope(sessions) as s:
        n = workflow.get_notice(s, notice_id)
        assert n.edited and "perjury" not in n.body_html and "&lt;" not in n.subject
        [ev] = [e for e in _events(s, notice_id) if e.action == "edited"]
        assert ev.actor == REVIEWER
        assert "-I swear, under penalty of perjury, that" in ev.detail["diff"]["body_text"]
        assert "+I swear, that" in ev.detail["diff"]["body_text"]
        assert "+Copyright notice" in ev.detail["diff"]["subject"]
        with pytest.raises(ApprovalRefused) as info:
            workflow.approve(s, notice_id, REVIEWER, OK)
        assert info.value.missing == ["contact details: telephone number",
                                      "accuracy statement under penalty of perjury"]
        assert "missing: contact details: telephone number; accuracy statement" in str(info.value)


def _art_and_logo_notice(sessions: Any, host: str = "art.example.eu") -> int:
    """One notice for an artwork and a logo copied on an unknown host (so dmca, two parts)."""
    with session_scope(sessions) as s:
        acc = f.owner(s)
        art, logo = f.work(s, acc, "Heron"), f.work(s, acc, "Acme Bird Logo", WorkKind.LOGO)
        ms = [f.match(s, f.upload(s, f"https://{host}/i/art.png"), art).id,
              f.match(s, f.upload(s, f"https://{host}/i/logo.png"), logo).id]
    with session_scope(sessions) as s:
        ids = {n.id for n in (draft_for_match(s, m, NoticeSettings()) for m in ms) if n is not None}
        assert len(ids) == 1
        nid = ids.pop()
        workflow.edit(s, nid, REVIEWER, recipient=f"legal@{host}")
        return nid


def test_an_edited_away_trademark_statement_is_reported_with_its_part(sessions: Any) -> None:
    nid = _art_and_logo_notice(sessions)
    with session_scope(sessions) as s:
        n = workflow.get_notice(s, nid)
        assert workflow.approval_gaps(s, n, OK) == []
        cut = n.body_text.replace("I declare that the information in this complaint is accurate and that",
                                  "I declare that")
        assert cut != n.body_text
        workflow.edit(s, nid, REVIEWER, body_text=cut)
        with pytest.raises(ApprovalRefused) as info:
            workflow.approve(s, nid, REVIEWER, OK)
        assert info.value.missing == ["part 2 of 2 (Trademark infringement complaint): accuracy statement"]
        # markers edited away: each part is checked against the whole text
        unmarked = n.body_text.replace("=== Part 2 of 2: Trademark infringement complaint ===", "")
        workflow.edit(s, nid, REVIEWER, body_text=unmarked.replace("https://art.example.eu/i/logo.png", ""))
        with pytest.raises(ApprovalRefused) as info:
            workflow.approve(s, nid, REVIEWER, OK)
        assert info.value.missing == [
            ("part 2 of 2 (Trademark infringement complaint): identification of the infringing material: "
             "https://art.example.eu/i/logo.png")]


def test_changing_the_law_keeps_the_trademark_part_and_the_open_key(sessions: Any) -> None:
    nid = _art_and_logo_notice(sessions)
    with session_scope(sessions) as s:
        n = workflow.get_notice(s, nid)
        key = n.open_key
        assert n.law == "dmca" and n.subject.startswith("DMCA notice of copyright infringement and trademark")
        workflow.edit(s, nid, REVIEWER, law="dsa")
        assert n.law == "dsa" and n.open_key == key
        assert n.body_text.startswith("=== Part 1 of 2: Notice of illegal content (DSA Article 16) ===")
        assert "=== Part 2 of 2: Trademark infringement complaint ===" in n.body_text
        with pytest.raises(IllegalTransition, match="law must be dmca or dsa"):
            workflow.edit(s, nid, REVIEWER, law="trademark")
        workflow.approve(s, nid, REVIEWER, OK)


def test_new_item_after_edit_must_be_added_by_the_reviewer(sessions: Any, notice_id: int) -> None:
    with session_scope(sessions) as s:
        n = workflow.get_notice(s, notice_id)
        workflow.edit(s, notice_id, REVIEWER, body_text=n.body_text.replace("Please remove", "Kindly remove"))
        w = n.items[0].work_id
        from storage.models import Work
        work = s.get(Work, w)
        assert work is not None
        m = f.match(s, f.upload(s, "https://i.imgur.com/late.png"), work).id
    with session_scope(sessions) as s:
        n2 = draft_for_match(s, m, NoticeSettings())
        assert n2 is not None and n2.id == notice_id and "items_added_after_edit" in n2.flags
        assert "https://i.imgur.com/late.png" not in n2.body_text
        with pytest.raises(ApprovalRefused, match=r"identification of the infringing material: "
                                                  r"https://i\.imgur\.com/late\.png"):
            workflow.approve(s, notice_id, REVIEWER, OK)


def test_reject_needs_a_reason_and_illegal_steps_are_refused(sessions: Any, notice_id: int) -> None:
    with session_scope(sessions) as s:
        with pytest.raises(IllegalTransition, match="needs a reason"):
            workflow.reject(s, notice_id, REVIEWER, "  ")
        with pytest.raises(IllegalTransition, match="is draft; sent needs it to be approved"):
            workflow.mark_sent(s, notice_id, REVIEWER, via="smtp", followup_days=7)
        with pytest.raises(IllegalTransition, match="is draft; resolved needs it to be sent"):
            workflow.resolve(s, notice_id, REVIEWER, "still_online")
        n = workflow.reject(s, notice_id, REVIEWER, "licensed via agency, see ticket 12")
        assert n.state == NoticeState.REJECTED and n.reject_reason.startswith("licensed")
        assert n.open_key is None
    with session_scope(sessions) as s:
        steps: list[Callable[[], object]] = [
            lambda: workflow.submit(s, notice_id, REVIEWER),
            lambda: workflow.approve(s, notice_id, REVIEWER, OK),
            lambda: workflow.edit(s, notice_id, REVIEWER, subject="x"),
            lambda: workflow.record_counter_notice(s, notice_id, REVIEWER, date(2026, 11, 3)),
        ]
        for step in steps:
            with pytest.raises(IllegalTransition):
                step()
        with pytest.raises(NoticeNotFound):
            workflow.submit(s, 424242, REVIEWER)
        [ev] = [e for e in _events(s, notice_id) if e.action == "rejected"]
        assert ev.detail == {"from": "draft", "to": "rejected", "reason": "licensed via agency, see ticket 12"}


def test_recipient_must_be_an_address_or_web_form(sessions: Any, notice_id: int) -> None:
    with session_scope(sessions) as s, pytest.raises(IllegalTransition, match="neither an email address nor an https"):
        workflow.edit(s, notice_id, REVIEWER, recipient="javascript:alert(1)")


def test_counter_notice_sets_the_10_to_14_business_day_window(sessions: Any, notice_id: int) -> None:
    with session_scope(sessions) as s:
        workflow.approve(s, notice_id, REVIEWER, OK)
        workflow.mark_sent(s, notice_id, REVIEWER, via="export", followup_days=7,
                           now=datetime(2026, 11, 2, tzinfo=UTC))
        workflow.resolve(s, notice_id, "followup", "removed")
        # Thursday 19 Nov 2026; Thanksgiving (26 Nov) is not a business day.
        n = workflow.record_counter_notice(s, notice_id, REVIEWER, date(2026, 11, 19))
        assert n.resolution == "counter_noticed" and n.state == NoticeState.RESOLVED
        assert n.restore_not_before is not None and n.restore_deadline is not None
        assert n.restore_not_before.date() == date(2026, 12, 4)
        assert n.restore_deadline.date() == date(2026, 12, 10)
        with pytest.raises(IllegalTransition, match="once"):
            workflow.record_counter_notice(s, notice_id, REVIEWER, date(2026, 11, 20))


def test_business_days() -> None:
    assert add_business_days(date(2026, 1, 2), 1) == date(2026, 1, 5)         # Friday -> Monday
    assert not is_business_day(date(2026, 7, 3))                                # July 4 on Saturday: observed Fri
    assert not is_business_day(date(2026, 11, 26))                              # Thanksgiving
    assert not is_business_day(date(2027, 12, 31))                              # New Year 2028 is a Saturday
    assert is_business_day(date(2026, 12, 24))
    assert add_business_days(date(2026, 12, 21), 10) == date(2027, 1, 6)        # skips 25 Dec and 1 Jan
    span = [add_business_days(date(2026, 3, 2), n) for n in (10, 14)]
    assert span == [date(2026, 3, 16), date(2026, 3, 20)]


def test_reviewer_chooses_the_law_for_an_unknown_host_and_confirms_recipients(sessions: Any) -> None:
    with session_scope(sessions) as s:
        acc = f.owner(s)
        w = f.work(s, acc)
        unknown = f.match(s, f.upload(s, "https://art.example.eu/i/1.png"), w).id
        known = f.match(s, f.upload(s, "https://i.imgur.com/k.png"), w).id
    with session_scope(sessions) as s:
        n = draft_for_match(s, unknown, NoticeSettings())
        assert n is not None and n.law == "dmca" and n.flags == ["unknown_host"]
        workflow.edit(s, n.id, REVIEWER, law="dsa", recipient="legal@art.example.eu")
        assert n.law == "dsa" and n.open_key == f"{acc.id}:art.example.eu" and n.flags == []
        assert "Article 16 of Regulation (EU) 2022/2065" in n.body_text
        with pytest.raises(IllegalTransition, match="law must be dmca or dsa"):
            workflow.edit(s, n.id, REVIEWER, law="trademark")
        workflow.approve(s, n.id, REVIEWER, OK)
        k = draft_for_match(s, known, NoticeSettings())
        assert k is not None and k.flags == ["verify_recipient"]
        workflow.edit(s, k.id, REVIEWER, recipient=k.recipient)  # confirm as drafted
        assert k.flags == []
        actions = [e.action for e in _events(s, k.id)]
        assert actions[-1] == "recipient_confirmed" and "edited" not in actions


def _match_status(s: Any, notice_id: int) -> str:
    n = workflow.get_notice(s, notice_id)
    return str(n.items[0].match.status.value)


def test_match_status_follows_its_notice_and_each_change_is_audited(sessions: Any, notice_id: int) -> None:
    with session_scope(sessions) as s:
        assert _match_status(s, notice_id) == "new"
        workflow.approve(s, notice_id, REVIEWER, OK)
        assert _match_status(s, notice_id) == "notice_approved"
        workflow.reject(s, notice_id, REVIEWER, "licensed after all")
        assert _match_status(s, notice_id) == "new"  # the notice's own status is undone, nothing else
        mid = workflow.get_notice(s, notice_id).items[0].match_id
        changes = s.scalars(select(AuditEvent).where(AuditEvent.entity == "match", AuditEvent.entity_id == mid)
                            .order_by(AuditEvent.id)).all()
        assert [(e.actor, e.detail["from"], e.detail["to"], e.detail["notice"]) for e in changes] == [
            (REVIEWER, "new", "notice_approved", notice_id), (REVIEWER, "notice_approved", "new", notice_id)]


def test_host_reply_resolves_or_waits_and_a_dismissed_match_keeps_its_status(sessions: Any, notice_id: int) -> None:
    from storage.models import MatchStatus

    with session_scope(sessions) as s:
        workflow.approve(s, notice_id, REVIEWER, OK)
        workflow.mark_sent(s, notice_id, REVIEWER, via="web_form", followup_days=7)
        assert _match_status(s, notice_id) == "notice_sent"
        with pytest.raises(IllegalTransition, match="unknown reply"):
            workflow.record_reply(s, notice_id, REVIEWER, "maybe")
        workflow.record_reply(s, notice_id, REVIEWER, "no_answer", note="chased on Monday")
        assert workflow.get_notice(s, notice_id).state == NoticeState.SENT
        workflow.get_notice(s, notice_id).items[0].match.status = MatchStatus.DISMISSED
        workflow.record_reply(s, notice_id, REVIEWER, "refused")
        n = workflow.get_notice(s, notice_id)
        assert n.state == NoticeState.RESOLVED and n.resolution == "still_online"
        assert _match_status(s, notice_id) == "dismissed"
        replies = [e.detail for e in _events(s, notice_id) if e.action == "host_replied"]
        assert replies == [{"reply": "no_answer", "note": "chased on Monday"}, {"reply": "refused", "note": ""}]
