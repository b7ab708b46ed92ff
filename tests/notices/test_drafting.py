"""Drafting on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from config.settings import NoticeSettings
from notices import workflow
from notices.drafting import content_for_notice, draft_for_match, open_key_for, save_owner_template
from notices.errors import ApprovalRefused, ProfileIncomplete, TemplateRejected
from notices.render import TEMPLATE_DIR
from notices.validate import html_visible_text, missing_in_parts
from storage.db import session_scope
from storage.models import (
    Account,
    AuditEvent,
    MatchStatus,
    Notice,
    NoticeItem,
    NoticeState,
    WorkKind,
)

from . import factory as f

SETTINGS = NoticeSettings()
YES_NO = {"commentary_or_criticism": "no", "parody": "no", "small_portion": "no", "transformative": "no",
          "none_applies": "yes"}


def _items(s: Any, notice_id: int) -> list[str]:
    return list(s.scalars(select(NoticeItem.url).where(NoticeItem.notice_id == notice_id).order_by(NoticeItem.id)))


def test_matches_on_one_host_share_one_draft_and_each_url_is_listed_once(sessions: Any) -> None:
    with session_scope(sessions) as s:
        acc = f.owner(s)
        w1, w2 = f.work(s, acc, "Blue Heron"), f.work(s, acc, "Red Fox")
        u1 = f.upload(s, "https://i.redd.it/abc.jpg", "https://www.reddit.com/r/art/comments/1/")
        u2 = f.upload(s, "https://preview.redd.it/def.png", "https://old.reddit.com/r/pics/comments/2/")
        m1, m2, m3 = f.match(s, u1, w1), f.match(s, u2, w1), f.match(s, u2, w2)
        ids = (m1.id, m2.id, m3.id)
    notice_ids = set()
    for mid in ids + ids:  # every task runs twice
        with session_scope(sessions) as s:
            n = draft_for_match(s, mid, SETTINGS)
            assert n is not None
            notice_ids.add(n.id)
    assert len(notice_ids) == 1
    with session_scope(sessions) as s:
        n = s.get(Notice, notice_ids.pop())
        assert n is not None
        assert (n.host, n.law, n.state) == ("reddit.com", "dmca", NoticeState.DRAFT)
        assert n.recipient == "https://www.reddit.com/report" and n.flags == ["verify_recipient"]
        assert _items(s, n.id) == ["https://i.redd.it/abc.jpg", "https://preview.redd.it/def.png",
                                   "https://preview.redd.it/def.png"]
        assert s.scalar(select(func.count(NoticeItem.id))) == 3
        text = n.body_text
        assert text.count("https://i.redd.it/abc.jpg") == 1
        assert "A representative list of the works" in text and '"Red Fox"' in text
        assert missing_in_parts(content_for_notice(s, n), n.body_text, n.body_html) == []
        actions = list(s.scalars(select(AuditEvent.action).where(AuditEvent.entity_id == n.id)))
        assert actions == ["drafted", "item_added", "item_added", "item_added"]


def test_new_matches_join_until_approved_then_start_a_new_draft(sessions: Any) -> None:
    with session_scope(sessions) as s:
        acc = f.owner(s)
        w = f.work(s, acc)
        ms = [f.match(s, f.upload(s, f"https://i.imgur.com/{k}.png"), w).id for k in range(3)]
    with session_scope(sessions) as s:
        first = draft_for_match(s, ms[0], SETTINGS)
        assert first is not None
        workflow.submit(s, first.id, "rev@artwatch.test")
    with session_scope(sessions) as s:
        joined = draft_for_match(s, ms[1], SETTINGS)
        assert joined is not None and joined.id == first.id and joined.state == NoticeState.IN_REVIEW
        workflow.approve(s, first.id, "rev@artwatch.test", YES_NO)
    with session_scope(sessions) as s:
        later = draft_for_match(s, ms[2], SETTINGS)
        assert later is not None and later.id != first.id and later.state == NoticeState.DRAFT
        assert _items(s, first.id) == ["https://i.imgur.com/0.png", "https://i.imgur.com/1.png"]
        assert _items(s, later.id) == ["https://i.imgur.com/2.png"]
        # re-running the first match still finds the approved notice: never drafted twice
        again = draft_for_match(s, ms[0], SETTINGS)
        assert again is not None and again.id == first.id


def test_suppressed_and_dismissed_matches_are_never_drafted(sessions: Any) -> None:
    with session_scope(sessions) as s:
        acc = f.owner(s)
        w = f.work(s, acc)
        a = f.match(s, f.upload(s, "https://i.imgur.com/a.png"), w, MatchStatus.SUPPRESSED).id
        b = f.match(s, f.upload(s, "https://i.imgur.com/b.png"), w, MatchStatus.DISMISSED).id
    with session_scope(sessions) as s:
        assert draft_for_match(s, a, SETTINGS) is None
        assert draft_for_match(s, b, SETTINGS) is None
        assert draft_for_match(s, 999_999, SETTINGS) is None
        assert s.scalar(select(func.count(Notice.id))) == 0


def test_unknown_host_is_flagged_and_has_no_recipient(sessions: Any) -> None:
    with session_scope(sessions) as s:
        acc = f.owner(s)
        m = f.match(s, f.upload(s, "https://cdn.some-forum.test/x.jpg", "https://some-forum.test/t/1"),
                    f.work(s, acc)).id
    with session_scope(sessions) as s:
        n = draft_for_match(s, m, SETTINGS)
        assert n is not None
        assert n.flags == ["unknown_host"] and n.recipient == "" and n.host == "some-forum.test"
        with pytest.raises(ApprovalRefused, match=r"recipient \(unknown host: choose the recipient\)"):
            workflow.approve(s, n.id, "rev@artwatch.test", YES_NO)
    with session_scope(sessions) as s:
        workflow.edit(s, n.id, "rev@artwatch.test", recipient="abuse@some-forum.test")
        n2 = workflow.approve(s, n.id, "rev@artwatch.test", YES_NO)
        assert n2.flags == [] and n2.recipient == "abuse@some-forum.test"


def test_artwork_and_logo_on_one_host_share_one_notice_with_two_parts(sessions: Any) -> None:
    with session_scope(sessions) as s:
        acc = f.owner(s)
        art, logo = f.work(s, acc, "Heron"), f.work(s, acc, "Acme Bird Logo", WorkKind.LOGO)
        m_art = f.match(s, f.upload(s, "https://files.mastodon.social/media/1.png",
                                    "https://mastodon.social/@x/1"), art).id
        m_logo = f.match(s, f.upload(s, "https://files.mastodon.social/media/2.png",
                                     "https://mastodon.social/@x/2"), logo).id
        m_later = f.match(s, f.upload(s, "https://files.mastodon.social/media/3.png",
                                      "https://mastodon.social/@x/3"), logo).id
        acc_id = acc.id
    with session_scope(sessions) as s:
        first, second = draft_for_match(s, m_logo, SETTINGS), draft_for_match(s, m_art, SETTINGS)
        assert first is not None and second is not None and first.id == second.id
        n = first
        assert (n.law, n.open_key) == ("dsa", f"{acc_id}:mastodon.social")
        parts = content_for_notice(s, n)
        assert [p.law for p in parts] == ["dsa", "trademark"]
        assert [w.title for w in parts[0].works] == ["Heron"]
        assert [i.url for i in parts[1].items] == ["https://files.mastodon.social/media/2.png"]
        assert n.subject == ("Notice of illegal content (DSA Article 16) and trademark infringement complaint: "
                             "2 items on mastodon.social")
        dsa_text, tm_text = n.body_text.split("=== Part 2 of 2: Trademark infringement complaint ===")
        assert dsa_text.startswith("=== Part 1 of 2: Notice of illegal content (DSA Article 16) ===")
        assert "Article 16 of Regulation (EU) 2022/2065" in dsa_text and "Acme Bird Logo" not in dsa_text
        assert "likely to cause confusion" in tm_text and '"Acme Bird Logo" (logo)' in tm_text
        assert missing_in_parts(parts, n.body_text, n.body_html) == []
        assert workflow.approval_gaps(s, n, YES_NO) == []
        workflow.approve(s, n.id, "rev@artwatch.test", YES_NO)
    with session_scope(sessions) as s:
        later = draft_for_match(s, m_later, SETTINGS)
        assert later is not None and later.id != n.id and later.state == NoticeState.DRAFT
        assert later.law == "dsa" and later.open_key == f"{acc_id}:mastodon.social"
        assert [p.law for p in content_for_notice(s, later)] == ["trademark"]
        assert later.subject == "Trademark infringement complaint: 1 item on mastodon.social"
        assert "=== Part" not in later.body_text and "likely to cause confusion" in later.body_text
        assert _items(s, n.id) == ["https://files.mastodon.social/media/2.png",
                                   "https://files.mastodon.social/media/1.png"]


def test_approval_needs_the_profile_fields_of_every_part(sessions: Any) -> None:
    with session_scope(sessions) as s:
        acc = f.owner(s)
        art, logo = f.work(s, acc, "Heron"), f.work(s, acc, "Acme Bird Logo", WorkKind.LOGO)
        ms = [f.match(s, f.upload(s, f"https://files.mastodon.social/media/{k}.png"), w).id
              for k, w in enumerate((art, logo))]
        acc_id = acc.id
    with session_scope(sessions) as s:
        dsa_only = draft_for_match(s, ms[0], SETTINGS)
        assert dsa_only is not None
        owner = s.get(Account, acc_id)
        assert owner is not None
        owner.phone = ""  # a DSA notice does not need it, a trademark complaint does
        assert workflow.approval_gaps(s, dsa_only, YES_NO) == []
        with pytest.raises(ProfileIncomplete, match="phone number"):
            draft_for_match(s, ms[1], SETTINGS)
        owner.phone = "+31 20 555 0101"
        both = draft_for_match(s, ms[1], SETTINGS)
        assert both is not None and both.id == dsa_only.id
        owner.phone = ""
        assert workflow.approval_gaps(s, both, YES_NO)[0] == "owner profile: phone number"


def test_incomplete_profile_blocks_drafting_and_says_what_to_fill_in(sessions: Any) -> None:
    with session_scope(sessions) as s:
        acc = f.owner(s, complete=False)
        m = f.match(s, f.upload(s, "https://i.imgur.com/p.png"), f.work(s, acc)).id
        dsa_m = f.match(s, f.upload(s, "https://mastodon.social/media/p.png"), f.work(s, acc, "B")).id
    with session_scope(sessions) as s:
        with pytest.raises(ProfileIncomplete) as info:
            draft_for_match(s, m, SETTINGS)
        assert info.value.missing == ["legal name", "postal address", "phone number"]
        assert "fill in legal name, postal address, phone number" in str(info.value)
        with pytest.raises(ProfileIncomplete, match="fill in legal name in the owner's profile"):
            draft_for_match(s, dsa_m, SETTINGS)
        assert s.scalar(select(func.count(Notice.id))) == 0


def test_crawled_strings_are_escaped_and_single_line(sessions: Any) -> None:
    evil_page = "https://imgur.com/gallery/x?q=<script>alert(1)</script>&n=%0d%0a"
    with session_scope(sessions) as s:
        acc = f.owner(s)
        w = f.work(s, acc, "Heron\r\nBcc: victim@example.com <b>bold</b>\u202e")
        m = f.match(s, f.upload(s, "https://i.imgur.com/e.png", evil_page, author="bob\nFAKE LINE"), w).id
    with session_scope(sessions) as s:
        n = draft_for_match(s, m, SETTINGS)
        assert n is not None
        assert "<script>" not in n.body_html and "&lt;script&gt;" in n.body_html
        assert "<b>bold</b>" not in n.body_html
        assert '"Heron Bcc: victim@example.com <b>bold</b>"' in n.body_text
        assert "\r" not in n.body_text and "\u202e" not in n.body_text
        assert "\n" not in n.subject and "\r" not in n.subject
        assert "Heron Bcc" in html_visible_text(n.body_html)


def test_owner_template_is_validated_and_used(sessions: Any) -> None:
    custom = (TEMPLATE_DIR / "dmca.txt.j2").read_text().replace("To the designated", "Dear designated")
    with session_scope(sessions) as s:
        acc = f.owner(s)
        with pytest.raises(TemplateRejected, match="line 2: syntax error"):
            save_owner_template(s, acc.id, "dmca", "text", "ok\n{% for %}", "ada@artist.test")
        with pytest.raises(TemplateRejected, match="lacks required elements: signature"):
            save_owner_template(s, acc.id, "dmca", "text", custom.replace("/s/", ""), "ada@artist.test")
        save_owner_template(s, acc.id, "dmca", "text", custom, "ada@artist.test")
        m = f.match(s, f.upload(s, "https://i.imgur.com/c.png"), f.work(s, acc)).id
    with session_scope(sessions) as s:
        n = draft_for_match(s, m, SETTINGS)
        assert n is not None and n.body_text.startswith("Dear designated copyright agent of Imgur")
        assert "To the designated" in n.body_html  # html variant not customised


def test_open_notice_is_unique_per_owner_and_host(sessions: Any) -> None:
    with session_scope(sessions) as s:
        acc = f.owner(s)
        assert open_key_for(acc.id, "imgur.com") == f"{acc.id}:imgur.com"
        s.add(Notice(owner_id=acc.id, host="imgur.com", law="dmca", open_key=open_key_for(acc.id, "imgur.com")))
    with pytest.raises(IntegrityError), session_scope(sessions) as s:
        s.add(Notice(owner_id=1, host="imgur.com", law="dsa", open_key=open_key_for(1, "imgur.com")))


@pytest.mark.postgres
def test_concurrent_drafting_on_postgres_makes_one_notice(postgres_url: str) -> None:
    """Two workers draft matches for the same host at the same moment."""
    from storage.db import make_engine, make_sessionmaker
    from storage.models import Base

    engine = make_engine(postgres_url)
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    with session_scope(sessions) as s:
        acc = f.owner(s)
        w = f.work(s, acc)
        ids = [f.match(s, f.upload(s, f"https://i.imgur.com/race{k}.png"), w).id for k in range(2)]
    barrier = threading.Barrier(2)
    results: list[int] = []
    errors: list[BaseException] = []

    def run(mid: int) -> None:
        try:
            with session_scope(sessions) as s:
                barrier.wait(5)
                n = draft_for_match(s, mid, SETTINGS)
                assert n is not None
                results.append(n.id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(mid,)) for mid in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    engine.dispose()
    assert errors == []
    assert len(set(results)) == 1
    engine = make_engine(postgres_url)
    with session_scope(make_sessionmaker(engine)) as s:
        assert s.scalar(select(func.count(Notice.id))) == 1
        assert s.scalar(select(func.count(NoticeItem.id))) == 2
    engine.dispose()


def test_admin_override_file_in_the_data_dir_is_honoured(sqlite_sessions: Any, tmp_path: Any) -> None:
    from config.settings import Settings

    data = tmp_path / "data"
    data.mkdir()
    (data / "hosts.override.toml").write_text(
        '[hosts."forum.test"]\nname = "Forum"\ndomains = ["forum.test"]\nlaw = "dsa"\n'
        'email = "legal@forum.test"\nverify = false\n')
    settings = Settings(data_dir=data)
    with session_scope(sqlite_sessions) as s:
        acc = f.owner(s)
        m = f.match(s, f.upload(s, "https://cdn.forum.test/1.png", "https://forum.test/t/1"), f.work(s, acc)).id
    with session_scope(sqlite_sessions) as s:
        n = draft_for_match(s, m, settings)
        assert n is not None
        assert (n.host, n.law, n.recipient, n.flags) == ("forum.test", "dsa", "legal@forum.test", [])
