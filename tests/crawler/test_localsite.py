"""LocalSite behaves like a Mastodon server where the crawler and demo rely on it."""

from __future__ import annotations

import httpx

from crawler.localsite import LocalSite
from crawler.sources.mastodon import MastodonSource, parse_link_header

from .conftest import png


def test_pagination_semantics(site: LocalSite, client: httpx.Client) -> None:
    ids = [site.add_post(png(i)) for i in range(5)]
    api = site.url + "/api/v1/timelines/public"
    newest = client.get(api, params={"limit": 2}).json()
    assert [s["id"] for s in newest] == [ids[4], ids[3]]
    after = client.get(api, params={"min_id": ids[0], "limit": 2}).json()
    assert [s["id"] for s in after] == [ids[2], ids[1]]  # immediately after min_id, newest first
    older = client.get(api, params={"max_id": ids[3]}).json()
    assert [s["id"] for s in older] == [ids[2], ids[1], ids[0]]
    since = client.get(api, params={"since_id": ids[2]}).json()
    assert [s["id"] for s in since] == [ids[4], ids[3]]
    links = parse_link_header(client.get(api, params={"limit": 2}).headers["link"])
    assert links["next"].endswith(f"max_id={ids[3]}") and links["prev"].endswith(f"min_id={ids[4]}")
    assert "link" not in client.get(api, params={"min_id": ids[4]}).headers


def test_media_served_and_deleted(site: LocalSite, client: httpx.Client) -> None:
    sid = site.add_post(
        png("a"), content_type="image/png", text="hello", author="bob", tags=["Art"]
    )
    status = client.get(f"{site.url}/api/v1/statuses/{sid}").json()
    assert status["account"]["acct"] == "bob" and status["content"] == "<p>hello</p>"
    media = status["media_attachments"][0]
    assert media["type"] == "image"
    r = client.get(media["url"])
    assert r.content == png("a") and r.headers["content-type"] == "image/png"
    assert [s["id"] for s in client.get(site.url + "/api/v1/timelines/tag/art").json()] == [sid]
    site.delete_post(sid)
    assert client.get(media["url"]).status_code == 404
    assert client.get(f"{site.url}/api/v1/statuses/{sid}").status_code == 404


def test_mastodon_source_polls_localsite(site: LocalSite, client: httpx.Client) -> None:
    first = [site.add_post(png(i), author="alice") for i in range(3)]
    src = MastodonSource(site.url, {"limit": 2, "backfill_pages": 1}, client)
    records, cursor = src.poll(None)
    assert {r.post_id for r in records} == {first[2], first[1]}  # first poll: newest page only
    assert records[0].author == "alice@127.0.0.1"
    later = [site.add_post(png(f"n{i}")) for i in range(5)]
    records, cursor = src.poll(cursor)
    assert sorted(r.post_id for r in records) == later  # all of them, over several pages
    assert cursor["newest_id"] == later[-1]
    assert src.poll(cursor) == ([], cursor)


def test_fail_next_and_request_log(site: LocalSite, client: httpx.Client) -> None:
    site.fail_next("/api/", 429, headers={"Retry-After": "1"})
    r = client.get(site.url + "/api/v1/timelines/public")
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert client.get(site.url + "/api/v1/timelines/public").status_code == 200
    assert [q.path for q in site.requests][-2:] == ["/api/v1/timelines/public"] * 2


def test_constructed_from_posts() -> None:
    with LocalSite([{"image": png(1), "text": "a"}, {"image": png(2), "author": "zed"}]) as s:
        data = httpx.get(s.url + "/api/v1/timelines/public").json()
        assert [d["account"]["acct"] for d in data] == ["zed", "artist"]


def test_mastodon_tag_and_account_timelines(site: LocalSite, client: httpx.Client) -> None:
    art = site.add_post(png("t1"), author="alice", tags=["Art"])
    site.add_post(png("t2"), author="bob")
    mine = site.add_post(png("t3"), author="alice")
    tag = MastodonSource(site.url, {"tag": "#art"}, client)
    assert [r.post_id for r in tag.poll(None)[0]] == [art]
    by_handle = MastodonSource(site.url, {"acct": "alice"}, client)
    records, _ = by_handle.poll(None)
    assert sorted(r.post_id for r in records) == sorted([art, mine])
    account_id = by_handle.params["account"]
    by_id = MastodonSource(site.url, {"account": account_id}, client)
    assert sorted(r.post_id for r in by_id.poll(None)[0]) == sorted([art, mine])
    assert any("/api/v1/accounts/lookup" in q.path for q in site.requests)


def test_status_ids_compared_by_length_then_lexically(
    site: LocalSite, client: httpx.Client
) -> None:
    from crawler.sources.mastodon import _id_key

    assert _id_key("999") < _id_key("1000")  # "999" > "1000" as plain strings
    assert _id_key("01F8MH1H7YV1Z7D2C8K2730QBF") < _id_key("01F8MH5NBDF2MV7CTC4Q5128HF")  # ULIDs

    def status(sid: str) -> dict[str, object]:
        return {
            "id": sid,
            "url": f"{site.url}/@a/{sid}",
            "content": "",
            "account": {"acct": "a"},
            "media_attachments": [{"type": "image", "url": f"{site.url}/m/{sid}.png"}],
        }

    site.add_status_json(status("998"))
    site.add_status_json(status("999"))
    src = MastodonSource(site.url, {}, client)
    records, cursor = src.poll(None)
    assert cursor["newest_id"] == "999" and len(records) == 2
    site.add_status_json(status("1000"))
    records, cursor = src.poll(cursor)
    assert [r.post_id for r in records] == ["1000"] and cursor["newest_id"] == "1000"


def test_mastodon_recheck_finds_edits_and_deletions(site: LocalSite, client: httpx.Client) -> None:
    keep, gone, edit = (site.add_post(png(f"r{i}"), text=f"t{i}") for i in range(3))
    src = MastodonSource(site.url, {}, client)
    _, cursor = src.poll(None)
    assert set(cursor["recent"]) == {keep, gone, edit}
    site.delete_post(gone)
    site.edit_post(edit, "new words")
    records, cursor = src.poll(cursor)
    assert [(r.post_id, r.deleted) for r in records if r.deleted] == [(gone, True)]
    [edited] = [r for r in records if r.edited]
    assert edited.post_id == edit and edited.text == "new words"
    assert set(cursor["recent"]) == {keep, edit}
    assert src.poll(cursor)[0] == []  # each change reported once
    site.fail_next("/api/v1/statuses", 404)  # a server without the multi-status endpoint
    site.delete_post(keep)
    assert src.poll(cursor)[0] == []
