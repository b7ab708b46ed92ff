"""Every source parses every recorded payload in tests/data/conformance/sites."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from crawler.errors import MalformedItem
from crawler.sources.bluesky import event_records as bsky_records
from crawler.sources.mastodon import parse_link_header, status_records
from crawler.sources.reddit import post_records
from crawler.sources.rss import parse_feed
from crawler.sources.wikimedia import event_records as wm_records
from crawler.sources.wikimedia import iter_sse

from .conftest import SITES

MASTO = SITES / "mastodon"


def test_mastodon_statuses() -> None:
    one = status_records(json.loads((MASTO / "status_get_with_image.json").read_text()))
    assert len(one) == 1
    r = one[0]
    assert (
        r.image_url.endswith("/original/f80d0eca565a64aa.jpg") and r.post_id == "117020570233811316"
    )
    assert r.page_url == "http://localhost:3000/@mastodonpy_test_2/117020570233811316"
    assert r.author == "mastodonpy_test_2@localhost" and r.text == "oh no!"
    assert r.posted_at == datetime(2026, 8, 1, 13, 49, 57, 172000, tzinfo=UTC)
    two = status_records(json.loads((MASTO / "status_post_with_two_images.json").read_text()))
    assert len(two) == 2 and len({x.image_url for x in two}) == 2
    for name in ("timelines_public.json", "timelines_tag_hoot.json"):
        statuses = json.loads((MASTO / name).read_text())
        assert statuses and all(status_records(s) == [] for s in statuses)  # text-only statuses


def test_mastodon_link_headers() -> None:
    for name in ("timelines_public", "timelines_public_local", "timelines_tag_hoot"):
        meta = json.loads((MASTO / f"{name}.response-meta.json").read_text())
        links = parse_link_header(meta["headers"]["link"][0])
        assert "max_id=" in links["next"] and "min_id=" in links["prev"]
    local = json.loads((MASTO / "timelines_public_local.response-meta.json").read_text())
    assert "local=" in parse_link_header(local["headers"]["link"][0])["next"]


def test_mastodon_docs_media_attachment_in_a_status() -> None:
    media = json.loads((MASTO / "docs_media_attachment_image.json").read_text())
    status = {
        "id": "1",
        "url": "https://mastodon.social/@a/1",
        "content": "<p>x</p>",
        "account": {"acct": "a"},
        "media_attachments": [media],
    }
    [r] = status_records(status)
    assert r.image_url == media["url"] and r.author == "a@mastodon.social"
    with pytest.raises(MalformedItem, match="account"):
        status_records({"id": "2", "media_attachments": [media]})


def _children(name: str) -> list[dict[str, Any]]:
    data = json.loads((SITES / "reddit" / name).read_text())
    listing = data[0] if isinstance(data, list) else data
    return listing["data"]["children"]  # type: ignore[no-any-return]


def test_reddit_listings() -> None:
    hot = {
        c["data"]["name"]: [r.image_url for r in post_records(c)]
        for c in _children("r_popular_hot_trimmed.json")
    }
    assert hot["t3_1skii2f"] == ["https://i.redd.it/rrinwcmrxzug1.jpeg"]
    assert hot["t3_1skbyfv"] == ["https://i.redd.it/u7ld6zcktyug1.gif"]
    assert len(hot["t3_1skft63"]) == 2 and all("preview.redd.it" in u for u in hot["t3_1skft63"])
    assert hot["t3_1sk894v"] == []  # self post
    assert all("&amp;" not in u for urls in hot.values() for u in urls)
    new = {
        c["data"]["name"]: [r.image_url for r in post_records(c)]
        for c in _children("r_all_new_before.json")
    }
    assert new["t3_5jo143"] == ["https://i.imgur.com/zxSSOAS.png"]
    assert new["t3_5jo141"] == []
    [gallery] = _children("comments_gallery_post.json")
    recs = post_records(gallery)
    assert (
        len(recs) == 4 and recs[2].image_url == "https://i.redd.it/vkm62gm6i3c51.gif"
    )  # gallery order
    assert recs[0].author.startswith("u/") and recs[0].page_url.startswith(
        "https://www.reddit.com/r/"
    )


def test_reddit_escaped_urls_unescaped() -> None:
    [gallery] = _children("comments_gallery_post.json")
    escaped = json.loads(json.dumps(gallery).replace("&", "&amp;"))  # as without raw_json=1
    assert [r.image_url for r in post_records(escaped)] == [
        r.image_url for r in post_records(gallery)
    ]


@pytest.mark.parametrize(
    "name,items,images",
    [
        ("rss-parser__guardian.rss", 55, 55),
        ("rss-parser__reddit.rss", 24, 16),
        ("rss-parser__youtube-channel__atom-customfields.atom", 15, 15),
        ("feedparser__media-rss__media_thumbnail.xml", 1, 1),
        ("feedparser__rss__item_enclosure_multiple.xml", 1, 2),
        ("feedparser__rss__item_enclosure_url.xml", 1, 1),
        ("feedparser__atom10__entry_link_rel_enclosure.xml", 0, 0),  # an text/html enclosure only
        ("feedparser__media-rss__media_group.xml", 0, 0),  # no media URL at all
    ],
)
def test_feeds(name: str, items: int, images: int) -> None:
    parsed = parse_feed((SITES / "rss" / name).read_bytes(), "https://feed.test/")
    assert len(parsed) == items and sum(len(r) for _, r in parsed) == images
    assert len({i for i, _ in parsed}) == items  # item ids are unique


def test_feed_details() -> None:
    parsed = parse_feed(
        (SITES / "rss" / "rss-parser__guardian.rss").read_bytes(), "https://feed.test/"
    )
    first = parsed[0][1][0]
    assert "w=460" in first.image_url  # the widest of the two sizes
    assert first.author == "David Smith in Washington" and first.posted_at is not None
    yt = parse_feed(
        (SITES / "rss" / "rss-parser__youtube-channel__atom-customfields.atom").read_bytes(), "x"
    )
    assert yt[0][0] == "yt:video:lR-w1h5ONOY" and yt[0][1][0].image_url.endswith("/hqdefault.jpg")
    thumb = parse_feed(
        (SITES / "rss" / "feedparser__media-rss__media_thumbnail.xml").read_bytes(), "x"
    )
    assert thumb[0][1][0].image_url == "http://example.com/thumbnail.jpg"  # the file's own Expect:
    encl = parse_feed(
        (SITES / "rss" / "feedparser__rss__item_enclosure_multiple.xml").read_bytes(), "x"
    )
    assert [r.image_url for r in encl[0][1]] == ["http://example.com/1", "http://example.com/2"]


def _sse(name: str) -> list[tuple[str | None, dict[str, object]]]:
    text = (SITES / "wikimedia" / name).read_text(encoding="utf-8")
    return [(ev.id, json.loads(ev.data)) for ev in iter_sse(iter(text.splitlines(True)))]


def test_wikimedia_streams() -> None:
    capture = _sse("recentchange_capture_commons_edits.sse")
    assert len(capture) == 3 and all(wm_records(d) == [] for _, d in capture)  # edits, not uploads
    framed = _sse("recentchange_with_upload.sse")
    assert len(framed) == 3 and all(i and i.startswith("[{") for i, _ in framed)
    records = [r for _, d in framed for r in wm_records(d)]
    assert len(records) == 1
    r = records[0]
    assert r.image_url == (
        "https://commons.wikimedia.org/wiki/Special:FilePath/"
        "Wissensturm_Linz%2C_Eingangsbereich_-_Panorama_%2806%29.jpg"
    )
    assert r.author == "1971markus" and r.post_id.startswith("File:Wissensturm")
    assert r.posted_at == datetime(2023, 5, 25, 14, 10, 53, tzinfo=UTC)
    single = json.loads((SITES / "wikimedia" / "recentchange_upload_event.json").read_text())
    assert wm_records(single) == records
    assert (
        wm_records(
            json.loads((SITES / "wikimedia" / "recentchange_categorize_event.json").read_text())
        )
        == []
    )
    assert wm_records(single, wiki="enwiki") == []


def test_bluesky_jetstream() -> None:
    window = [
        json.loads(x)
        for x in (SITES / "bluesky" / "jetstream_v1_window_2026-07-04.jsonl")
        .read_text()
        .splitlines()
    ]
    assert len(window) == 152
    records = [r for e in window for r in bsky_records(e)]
    images = [r for r in records if not r.deleted]
    deletes = [r for r in records if r.deleted]
    assert len(images) == 2 and len(deletes) == 1
    assert images[0].image_url.startswith("https://cdn.bsky.app/img/feed_fullsize/plain/did:plc:")
    assert images[0].page_url.startswith("https://bsky.app/profile/did:plc:")
    assert images[0].text.startswith("Вечерок") and images[0].posted_at is not None
    golden = [
        json.loads(x)
        for x in (SITES / "bluesky" / "jetstream_v1_golden_selection.jsonl")
        .read_text()
        .splitlines()
    ]
    assert all(bsky_records(e) == [] for e in golden)  # likes, follows, profiles, identity...
    picked = [
        json.loads(x)
        for x in (SITES / "bluesky" / "commit_create_post_embed_images.jsonl")
        .read_text()
        .splitlines()
    ]
    assert [r.image_url for e in picked for r in bsky_records(e)] == [r.image_url for r in images]
