"""Lists (paging, filters, search, sort, thumbnails, CSV) and match triage, through the web app."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta

from PIL import Image
from sqlalchemy import select
from webapp_testkit import World, csrf_from, logo_png, product_shot

from storage.models import AuditEvent, Match, MatchStatus, NoticeItem, Role, Source, Work
from webapp.listing import ListQuery, csv_cell


def _ids(html: str) -> list[int]:
    """Match ids in page order (each row links its score to the match page)."""
    return [int(m) for m in re.findall(r'<a href="/matches/(\d+)" data-key="e">', html)]


def _owner_with_matches(world: World, n: int, host: str = "pics.example") -> tuple[int, int, list[int]]:
    owner = world.account("ann@example.com")
    wid = world.work(owner, logo_png(1), "Acme")
    shot, region = product_shot(logo_png(1))
    mids = [
        world.match(wid, shot, url=f"https://{host}/p/{i}", region=region, score=0.5 + i / 100,
                    age=timedelta(minutes=n - i))
        for i in range(n)
    ]
    return owner, wid, mids


def test_matches_are_paged_in_sql_with_counts_and_links(world: World) -> None:
    _, _, mids = _owner_with_matches(world, 30)
    client = world.client("ann@example.com")
    first = client.get("/matches?per=25").text
    assert len(_ids(first)) == 25 and "1\u201325 of 30" in first and "page 1 of 2" in first
    assert _ids(first)[0] == mids[-1]  # highest score first by default
    assert 'href="/matches?page=2&amp;per=25&amp;sort=score' in first
    second = client.get("/matches?per=25&page=2").text
    assert len(_ids(second)) == 5 and "26\u201330 of 30" in second
    assert set(_ids(first)) | set(_ids(second)) == set(mids)
    # A page past the end shows the last page, not an empty one.
    assert _ids(client.get("/matches?per=25&page=99").text) == _ids(second)
    # Sorted by date, oldest first.
    by_date = client.get("/matches?sort=date&order=asc").text
    assert _ids(by_date)[:3] == mids[:3]
    # Thumbnails are small, lazily loaded and come from the match's image route.
    assert f'src="/matches/{mids[-1]}/image?thumb=1" loading="lazy"' in first


def test_match_filters_search_and_literal_wildcards(world: World) -> None:
    owner, _, mids = _owner_with_matches(world, 3)
    art = world.work(owner, logo_png(2, "ART"), "Sunset painting", kind="artwork")
    shot, region = product_shot(logo_png(2, "ART"))
    other = world.match(art, shot, url="https://shop.other.example/x_1", region=region)
    client = world.client("ann@example.com")
    assert _ids(client.get("/matches?site=other.example").text) == [other]  # subdomains count
    assert _ids(client.get("/matches?site=pics.example&sort=score&order=asc").text) == mids
    assert _ids(client.get("/matches?kind=artwork").text) == [other]
    assert _ids(client.get("/matches?q=sunset").text) == [other]
    assert _ids(client.get("/matches?q=p/1").text) == [mids[1]]  # URL search
    assert _ids(client.get("/matches?q=x_1").text) == [other]
    assert _ids(client.get("/matches?q=%25").text) == []  # a literal %, not "anything"
    assert "No matches fit these filters" in client.get("/matches?q=nothing-like-this").text
    with world.sessions() as s:
        m = s.get(Match, mids[0])
        assert m is not None
        m.status = MatchStatus.DISMISSED
        s.commit()
    assert mids[0] not in _ids(client.get("/matches").text)  # the default list: still to look at
    assert _ids(client.get("/matches?status=dismissed").text) == [mids[0]]
    assert mids[0] in _ids(client.get("/matches?status=all").text)


def test_list_query_clamps_what_it_reads() -> None:
    lq = ListQuery.parse({"page": "-4", "per": "7", "sort": "drop table", "order": "sideways", "q": " x "})
    assert (lq.page, lq.per, lq.sort, lq.order, lq.q) == (1, 50, "score", "desc", "x")
    assert ListQuery.parse({"page": "abc"}).page == 1
    assert lq.link(page=3) == "?page=3&q=x&sort=score"


def test_one_decision_from_the_match_page_drafts_a_notice_and_is_audited(world: World) -> None:
    _, _, mids = _owner_with_matches(world, 2)
    client = world.client("ann@example.com")
    page = client.get(f"/matches/{mids[0]}").text
    # The actions come before the evidence on the page.
    assert page.index(f'action="/matches/{mids[0]}/decide"') < page.index('class="evidence"')
    token = csrf_from(page)
    r = client.post(f"/matches/{mids[0]}/decide", data={"csrf_token": token, "decision": "infringing",
                                                        "next": f"/matches/{mids[0]}"})
    assert r.status_code == 303 and r.headers["location"].startswith(f"/matches/{mids[0]}?")
    assert "1 match marked infringing; 1 notice draft updated" in client.get(r.headers["location"]).text
    with world.sessions() as s:
        m = s.get(Match, mids[0])
        assert m is not None and m.status == MatchStatus.INFRINGING
        assert s.scalar(select(NoticeItem.notice_id).where(NoticeItem.match_id == mids[0])) is not None
        event = s.scalar(select(AuditEvent).where(AuditEvent.entity == "match", AuditEvent.entity_id == mids[0]))
        assert event is not None and event.action == "triage_infringing" and event.actor == "ann@example.com"
        other = s.get(Match, mids[1])
        assert other is not None and other.status == MatchStatus.NEW


def test_licensed_adds_the_site_and_suppresses_its_open_matches(world: World) -> None:
    _, wid, mids = _owner_with_matches(world, 2, host="www.shop.example")
    shot, region = product_shot(logo_png(1))
    elsewhere = world.match(wid, shot, url="https://pics.example/q/1", region=region)
    client = world.client("ann@example.com")
    token = csrf_from(client.get("/matches").text)
    r = client.post(f"/matches/{mids[0]}/decide", data={"csrf_token": token, "decision": "licensed",
                                                        "next": "/matches?site=shop.example"})
    assert r.status_code == 303
    assert r.headers["location"].startswith("/matches?site=shop.example&done=1&decision=licensed")
    assert "1 other match on the same site suppressed" in client.get(r.headers["location"]).text
    with world.sessions() as s:
        work = s.get(Work, wid)
        assert work is not None and work.licensed_sites == ["shop.example"]
        statuses = {mid: s.get(Match, mid).status for mid in [*mids, elsewhere]}  # type: ignore[union-attr]
    assert statuses == {mids[0]: MatchStatus.SUPPRESSED, mids[1]: MatchStatus.SUPPRESSED,
                        elsewhere: MatchStatus.NEW}


def test_bulk_decisions_need_csrf_and_return_where_they_came_from(world: World) -> None:
    _, _, mids = _owner_with_matches(world, 3)
    client = world.client("ann@example.com")
    html = client.get("/matches").text
    assert 'id="bulk-matches"' in html and f'name="ids" value="{mids[0]}" form="bulk-matches"' in html
    refused = client.post("/matches/decide", data={"ids": [str(mids[0])], "decision": "ignore"})
    assert refused.status_code == 403
    token = csrf_from(html)
    r = client.post("/matches/decide", data={"csrf_token": token, "ids": [str(mids[0]), str(mids[2])],
                                             "decision": "ignore", "next": "//evil.example/"})
    assert r.status_code == 303 and r.headers["location"].startswith("/matches?done=2&decision=ignore")
    r = client.post("/matches/decide", data={"csrf_token": token, "ids": [str(mids[1])], "decision": "unsure",
                                             "next": "/matches?status=all"})
    assert r.headers["location"].startswith("/matches?status=all&done=1")
    with world.sessions() as s:
        got = {mid: s.get(Match, mid).status for mid in mids}  # type: ignore[union-attr]
    assert got == {mids[0]: MatchStatus.DISMISSED, mids[1]: MatchStatus.UNSURE, mids[2]: MatchStatus.DISMISSED}
    bad = client.post("/matches/decide", data={"csrf_token": token, "ids": [str(mids[1])], "decision": "burn"})
    assert bad.status_code == 422 and "unknown decision" in bad.text


def test_csv_export_is_owner_scoped_and_defuses_formulas(world: World) -> None:
    owner = world.account("ann@example.com")
    wid = world.work(owner, logo_png(1), "=HYPERLINK(\"https://evil.example\")")
    shot, region = product_shot(logo_png(1))
    mid = world.match(wid, shot, url="https://pics.example/p/1", region=region)
    nid = world.notice(owner, [mid], host="pics.example")
    bob = world.account("bob@example.com")
    bwid = world.work(bob, logo_png(2), "Bob secret")
    world.match(bwid, shot, url="https://bob.example/p/1", region=region)
    r = world.client("ann@example.com").get("/matches.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0][:3] == ["match_id", "score", "status"] and len(rows) == 2
    assert rows[1][0] == str(mid) and rows[1][4] == "'=HYPERLINK(\"https://evil.example\")"
    assert "Bob secret" not in r.text and "bob.example" not in r.text
    notices = list(csv.reader(io.StringIO(world.client("ann@example.com").get("/notices.csv").text)))
    assert notices[0][0] == "notice_id" and [row[0] for row in notices[1:]] == [str(nid)]
    assert world.client("bob@example.com").get("/notices.csv").text.count("\n") == 1  # the header only
    assert csv_cell("+1") == "'+1" and csv_cell("-2") == "'-2" and csv_cell("@x") == "'@x" and csv_cell("a=b") == "a=b"


def test_notice_works_and_source_lists_filter_and_page(world: World) -> None:
    owner = world.account("ann@example.com")
    world.account("root@example.com", Role.ADMIN)
    wid = world.work(owner, logo_png(1), "Acme")
    for i in range(3):
        world.work(owner, logo_png(2 + i), f"Other {i}", kind="artwork")
    shot, region = product_shot(logo_png(1))
    m1 = world.match(wid, shot, url="https://pics.example/p/1", region=region)
    m2 = world.match(wid, shot, url="https://other.example/p/1", region=region)
    n1 = world.notice(owner, [m1], host="pics.example")
    n2 = world.notice(owner, [m2], host="other.example")
    client = world.client("ann@example.com")
    html = client.get("/notices?site=other.example").text
    assert f'href="/notices/{n2}"' in html and f'href="/notices/{n1}"' not in html
    assert f'src="/matches/{m2}/image?thumb=1"' in html
    html = client.get("/notices?q=pics").text
    assert f'href="/notices/{n1}"' in html and f'href="/notices/{n2}"' not in html
    assert f'href="/notices/{n1}"' not in client.get("/notices?status=sent").text
    works = client.get("/works?kind=artwork&per=25").text
    assert works.count('class="thumb"') == 3 and "Acme" not in works
    assert "Acme" in client.get("/works?q=acm").text and "Other" not in client.get("/works?q=acm").text
    with world.sessions() as s:
        s.add_all([Source(name="feed-a", kind="rss", url="https://a.example/rss"),
                   Source(name="feed-b", kind="rss", url="https://b.example/rss", enabled=False,
                          last_error="boom")])
        s.commit()
    admin = world.client("root@example.com")
    assert "feed-b" in admin.get("/admin/sources?status=failing").text
    assert "feed-a" not in admin.get("/admin/sources?status=failing").text
    assert "feed-b" not in admin.get("/admin/sources?q=a.example").text
    queue = admin.get("/review").text
    assert f'data-go-a="/notices/{n1}#approve-form"' in queue and 'id="shortcut-help"' in queue


def test_thumbnails_are_small_pngs_from_the_same_routes(world: World) -> None:
    _, wid, mids = _owner_with_matches(world, 1)
    client = world.client("ann@example.com")
    for url in (f"/matches/{mids[0]}/image?thumb=1", f"/works/{wid}/image?thumb=1"):
        r = client.get(url)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(r.content)) as im:
            assert max(im.size) <= 96
    assert world.client("bob@example.com").get(f"/matches/{mids[0]}/image?thumb=1").status_code in (303, 404)


def test_infringing_waits_for_an_incomplete_profile_then_drafts(world: World) -> None:
    from notices.drafting import draft_pending
    from storage.db import session_scope
    from storage.models import Account

    owner = world.account("ann@example.com")
    with world.sessions() as s:
        acct = s.get(Account, owner)
        assert acct is not None
        acct.postal_address = ""
        s.commit()
    wid = world.work(owner, logo_png(1), "Acme")
    shot, region = product_shot(logo_png(1))
    mid = world.match(wid, shot, url="https://pics.example/p/1", region=region)
    client = world.client("ann@example.com")
    token = csrf_from(client.get("/matches").text)
    r = client.post(f"/matches/{mid}/decide", data={"csrf_token": token, "decision": "infringing"})
    assert r.status_code == 303 and "blocked=profile" in r.headers["location"]
    assert "complete your" in client.get(r.headers["location"]).text
    with world.sessions() as s:
        assert s.get(Match, mid).status == MatchStatus.INFRINGING  # type: ignore[union-attr]
        assert s.scalar(select(NoticeItem.id).where(NoticeItem.match_id == mid)) is None
    with session_scope(world.sessions) as s:
        acct = s.get(Account, owner)
        assert acct is not None
        acct.postal_address = "1 Test Street"
        touched, blocked = draft_pending(s, world.settings)
        assert touched and not blocked
    with world.sessions() as s:
        assert s.scalar(select(NoticeItem.id).where(NoticeItem.match_id == mid)) is not None


def test_the_summary_after_a_decision_echoes_only_numbers_and_known_words(world: World) -> None:
    _, _, mids = _owner_with_matches(world, 1)
    html = world.client("ann@example.com").get(
        f"/matches/{mids[0]}?done=1&decision=<b>pwned</b>&blocked=<i>x</i>"
    ).text
    assert "pwned" not in html and "<i>x</i>" not in html and "1 match marked decided" in html


def test_staff_see_every_owners_matches_unfiltered(world: World) -> None:
    world.account("root@example.com", Role.ADMIN)
    _, _, mids = _owner_with_matches(world, 2)
    admin = world.client("root@example.com")
    assert sorted(_ids(admin.get("/matches?status=all").text)) == mids  # no filter at all still works
    assert admin.get("/matches.csv?status=all").text.count("\n") == 3
