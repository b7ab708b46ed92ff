"""The contract every source must meet, run against real servers on 127.0.0.1
serving the recorded payloads in tests/data/conformance/sites.

Each harness knows how to publish its site's payloads and how to add, break,
delete and edit items; the tests below are the same for every source.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from typing import Any, ClassVar

import httpx
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import CrawlerSettings
from crawler.errors import CrawlError, MalformedPage
from crawler.localsite import LocalSite
from crawler.service import SOURCE_KINDS, build_client, poll_source
from crawler.sources.base import Source, StreamingSource, UploadRecord
from crawler.sources.wikimedia import iter_sse
from storage.models import Base, Upload
from storage.models import Source as SourceRow

from .conftest import SITES, png
from .servers import JetstreamServer, PayloadServer, Reply, sse_frames

# -- harnesses ----------------------------------------------------------------


class Harness:
    kind: ClassVar[str]
    page_size: ClassVar[int | None] = None  # polling sources that paginate
    deletion_event: ClassVar[bool] = False  # the source itself reports deletions
    edit_event: ClassVar[bool] = False  # the source itself reports edits

    def __init__(self, http: PayloadServer, ws: JetstreamServer, site: LocalSite) -> None:
        self.http, self.ws, self.site = http, ws, site
        self.n = 0

    def configure(self) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def initial(self) -> set[str]:
        raise NotImplementedError

    def publish(self, count: int) -> set[str]:
        raise NotImplementedError

    def break_item(self) -> None:
        raise NotImplementedError

    def break_page(self) -> None:
        raise NotImplementedError

    def fix_page(self) -> None:
        pass

    def delete(self) -> str:
        raise NotImplementedError

    def edit(self) -> str:
        raise NotImplementedError


class MastodonHarness(Harness):
    kind = "mastodon"
    page_size = 2
    deletion_event = True  # via the multi-status recheck of recent statuses
    edit_event = True

    def configure(self) -> tuple[str, dict[str, Any]]:
        for name in ("status_get_with_image.json", "status_post_with_two_images.json"):
            self.site.add_status_json(json.loads((SITES / "mastodon" / name).read_text()))
        for status in json.loads((SITES / "mastodon" / "timelines_public.json").read_text()):
            self.site.add_status_json(status)  # no media: filtered out
        return self.site.url, {"limit": self.page_size, "backfill_pages": 10}

    def initial(self) -> set[str]:
        urls = set()
        for name in ("status_get_with_image.json", "status_post_with_two_images.json"):
            st = json.loads((SITES / "mastodon" / name).read_text())
            urls |= {m["url"] for m in st["media_attachments"]}
        assert len(urls) == 3
        return urls

    def publish(self, count: int) -> set[str]:
        out = set()
        for _ in range(count):
            self.n += 1
            sid = self.site.add_post(png(f"m{self.n}"), text=f"new {self.n}", author="carol")
            out.add(self.site.media_url(sid))
        return out

    def break_item(self) -> None:
        bad = self.site.add_post(None, text="placeholder")
        self.site.delete_post(bad)
        self.site.add_status_json(
            {"id": bad, "media_attachments": [{"type": "image", "url": "http://x/y.png"}]}
        )

    def break_page(self) -> None:
        self.site.fail_next("/api/v1/timelines", 200, body=b"<html>maintenance</html>")

    def delete(self) -> str:
        self.site.delete_post("117020570233811316")
        return "117020570233811316"

    def edit(self) -> str:
        self.site.edit_post(self._two_images(), "edited text")
        return self._two_images()

    def _two_images(self) -> str:
        return str(
            json.loads((SITES / "mastodon" / "status_post_with_two_images.json").read_text())["id"]
        )


class RedditHarness(Harness):
    kind = "reddit"
    page_size = 3

    def configure(self) -> tuple[str, dict[str, Any]]:
        children = json.loads((SITES / "reddit" / "r_popular_hot_trimmed.json").read_text())[
            "data"
        ]["children"]
        children += json.loads((SITES / "reddit" / "r_all_new_before.json").read_text())["data"][
            "children"
        ]
        gallery = json.loads((SITES / "reddit" / "comments_gallery_post.json").read_text())
        children += gallery[0]["data"]["children"]
        self.children: list[dict[str, Any]] = children
        self.broken = False
        self.http.routes["/r/art/new.json"] = self._listing
        return self.http.url + "/r/art", {"limit": self.page_size, "backfill_pages": 20}

    def _listing(self, path: str, query: dict[str, str], headers: dict[str, str]) -> Reply:
        if self.broken:
            self.broken = False
            return Reply(
                200, {"Content-Type": "application/json"}, b'{"kind": "Listing", "data": nul'
            )
        ordered = sorted(
            self.children, key=lambda c: -float(c.get("data", {}).get("created_utc", 1e12))
        )
        limit = int(query.get("limit", 25))
        start = 0
        if "after" in query:
            names = [c.get("data", {}).get("name") for c in ordered]
            start = names.index(query["after"]) + 1
        page = ordered[start : start + limit]
        after = (
            page[-1]["data"].get("name")
            if len(page) == limit and start + limit < len(ordered)
            else None
        )
        body = {
            "kind": "Listing",
            "data": {"after": after, "before": None, "dist": len(page), "children": page},
        }
        return Reply(
            200, {"Content-Type": "application/json; charset=UTF-8"}, json.dumps(body).encode()
        )

    def initial(self) -> set[str]:
        from crawler.sources.reddit import post_records

        return {r.image_url for c in self.children for r in post_records(c)}

    def publish(self, count: int) -> set[str]:
        out = set()
        template = next(c for c in self.children if c["data"].get("post_hint") == "image")
        newest = max(float(c["data"]["created_utc"]) for c in self.children)
        for _ in range(count):
            self.n += 1
            c = copy.deepcopy(template)
            c["data"].update(
                name=f"t3_new{self.n}",
                id=f"new{self.n}",
                created_utc=newest + self.n,
                url=f"https://i.redd.it/new{self.n}.jpeg",
                url_overridden_by_dest=f"https://i.redd.it/new{self.n}.jpeg",
                permalink=f"/r/art/comments/new{self.n}/x/",
            )
            self.children.append(c)
            out.add(c["data"]["url"])
        return out

    def break_item(self) -> None:
        newest = max(float(c["data"].get("created_utc", 0)) for c in self.children)
        self.children.append(
            {"kind": "t3", "data": {"title": "no name", "created_utc": newest + 0.5}}
        )

    def break_page(self) -> None:
        self.broken = True

    def delete(self) -> str:
        c = next(c for c in self.children if c["data"].get("post_hint") == "image")
        c["data"].update(removed_by_category="deleted", author="[deleted]")
        return str(c["data"]["name"])

    def edit(self) -> str:
        c = next(c for c in self.children if c["data"].get("post_hint") == "image")
        c["data"].update(selftext="edited text", edited=1776000000.0)
        return str(c["data"]["name"])


_RSS_NEW = (
    "<item><title>new {n}</title><link>http://feed.test/new/{n}</link><guid>http://feed.test/new/{n}</guid>"
    '<media:content width="460" url="https://img.test/new/{n}.jpg"/></item>'
)


class FeedHarness(Harness):
    kind = "rss"

    def configure(self) -> tuple[str, dict[str, Any]]:
        text = (SITES / "rss" / "rss-parser__guardian.rss").read_text(encoding="utf-8")
        first, last = text.index("<item>"), text.rindex("</item>") + len("</item>")
        self.head, self.tail = text[:first], text[last:]
        self.items = re.findall(r"<item>.*?</item>", text[first:last], re.DOTALL)
        self.broken = False
        self.http.routes["/feed.xml"] = self._feed
        return self.http.url + "/feed.xml", {}

    def _feed(self, path: str, query: dict[str, str], headers: dict[str, str]) -> Reply:
        if self.broken:
            return Reply(
                200, {"Content-Type": "application/rss+xml"}, b"<rss><channel><item><title>cut"
            )
        body = (self.head + "".join(self.items) + self.tail).encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if headers.get("if-none-match") == etag:
            return Reply(304, {"ETag": etag})
        return Reply(
            200, {"Content-Type": "application/rss+xml; charset=utf-8", "ETag": etag}, body
        )

    def initial(self) -> set[str]:
        from crawler.sources.rss import parse_feed

        return {
            r.image_url
            for _, recs in parse_feed(
                (self.head + "".join(self.items) + self.tail).encode(), self.http.url
            )
            for r in recs
        }

    def publish(self, count: int) -> set[str]:
        out = set()
        for _ in range(count):
            self.n += 1
            self.items.insert(0, _RSS_NEW.format(n=self.n))
            out.add(f"https://img.test/new/{self.n}.jpg")
        return out

    def break_item(self) -> None:
        self.items.insert(
            0, '<item><title>bad</title><guid>bad-1</guid><enclosure type="image/jpeg"/></item>'
        )

    def break_page(self) -> None:
        self.broken = True

    def fix_page(self) -> None:
        self.broken = False

    def delete(self) -> str:
        gone = self.items.pop(3)
        return re.search(r"<guid[^>]*>(.*?)</guid>", gone, re.DOTALL).group(1)  # type: ignore[union-attr]

    def edit(self) -> str:
        self.items[2] = re.sub(
            r"<title>.*?</title>",
            "<title>edited title</title>",
            self.items[2],
            count=1,
            flags=re.DOTALL,
        )
        return re.search(r"<guid[^>]*>(.*?)</guid>", self.items[2], re.DOTALL).group(1)  # type: ignore[union-attr]


class HtmlHarness(Harness):
    kind = "html"

    def configure(self) -> tuple[str, dict[str, Any]]:
        self.imgs = [
            '<img src="/img/a.png">',
            '<img src="b.jpg" srcset="b-small.jpg 100w, b-large.jpg 1200w">',
            '<picture><source srcset="/img/c.webp 1x, /img/c@2x.webp 2x"><img src="/img/c.jpg"></picture>',
        ]
        self.title = "Gallery"
        self.broken = False
        self.http.routes["/gallery/"] = self._page
        return self.http.url + "/gallery/", {}

    def _page(self, path: str, query: dict[str, str], headers: dict[str, str]) -> Reply:
        if self.broken:
            return Reply(200, {"Content-Type": "image/png"}, png("not html"))
        body = (
            f"<!doctype html><html><head><title>{self.title}</title>"
            f'<meta property="og:image" content="https://cdn.test/og.jpg"></head>'
            f"<body>{''.join(self.imgs)}</body></html>"
        ).encode()
        return Reply(
            200,
            {
                "Content-Type": "text/html; charset=utf-8",
                "Last-Modified": "Wed, 01 Jul 2026 00:00:00 GMT",
            },
            body,
        )

    def initial(self) -> set[str]:
        u = self.http.url
        return {
            "https://cdn.test/og.jpg",
            f"{u}/img/a.png",
            f"{u}/gallery/b-large.jpg",
            f"{u}/img/c@2x.webp",
        }

    def publish(self, count: int) -> set[str]:
        out = set()
        for _ in range(count):
            self.n += 1
            self.imgs.append(f'<img src="/img/new{self.n}.png">')
            out.add(f"{self.http.url}/img/new{self.n}.png")
        return out

    def break_item(self) -> None:
        self.imgs.append('<img src="http://[broken/x.png">')

    def break_page(self) -> None:
        self.broken = True

    def fix_page(self) -> None:
        self.broken = False

    def delete(self) -> str:
        self.imgs.pop(0)
        return self.http.url + "/gallery/"

    def edit(self) -> str:
        self.title = "Gallery (edited)"
        return self.http.url + "/gallery/"


class SitemapHarness(Harness):
    kind = "sitemap"

    def configure(self) -> tuple[str, dict[str, Any]]:
        self.entries: dict[str, list[tuple[str, str]]] = {
            "/sitemap-1.xml": [("/p/1", "/i/1.jpg"), ("/p/2", "/i/2.jpg")],
            "/sitemap-2.xml": [("/p/3", "/i/3.jpg")],
        }
        self.broken = False
        u = self.http.url
        index = (
            '<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            f"<sitemap><loc>{u}/sitemap-1.xml</loc></sitemap><sitemap><loc>{u}/sitemap-2.xml</loc></sitemap>"
            "</sitemapindex>"
        )
        self.http.routes["/sitemap.xml"] = lambda p, q, h: (
            Reply(200, {"Content-Type": "application/xml"}, b"<urlset")
            if self.broken
            else Reply(200, {"Content-Type": "application/xml"}, index.encode())
        )
        for path in self.entries:
            self.http.routes[path] = self._child
        return u + "/sitemap.xml", {}

    def _child(self, path: str, query: dict[str, str], headers: dict[str, str]) -> Reply:
        urls = "".join(
            f"<url><loc>{p}</loc><image:image><image:loc>{i}</image:loc></image:image></url>"
            for p, i in self.entries[path]
        )
        body = (
            '<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9" '
            f'xmlns:image="http://www.google.com/schemas/sitemap-image/1.1">{urls}</urlset>'
        )
        return Reply(200, {"Content-Type": "application/xml"}, body.encode())

    def initial(self) -> set[str]:
        return {self.http.url + i for e in self.entries.values() for _, i in e}

    def publish(self, count: int) -> set[str]:
        out = set()
        for _ in range(count):
            self.n += 1
            self.entries["/sitemap-2.xml"].append((f"/p/new{self.n}", f"/i/new{self.n}.jpg"))
            out.add(f"{self.http.url}/i/new{self.n}.jpg")
        return out

    def break_item(self) -> None:
        self.entries["/sitemap-1.xml"].append(("/p/bad", "http://[bad/x.jpg"))

    def break_page(self) -> None:
        self.broken = True

    def fix_page(self) -> None:
        self.broken = False

    def delete(self) -> str:
        self.entries["/sitemap-1.xml"].pop(0)
        return self.http.url + "/p/1"

    def edit(self) -> str:
        return self.http.url + "/p/2"


def _wikimedia_events() -> list[tuple[str, str]]:
    text = (SITES / "wikimedia" / "recentchange_with_upload.sse").read_text(encoding="utf-8")
    return [(ev.id or "", ev.data) for ev in iter_sse(iter(text.splitlines(True)))]


class WikimediaHarness(Harness):
    kind = "wikimedia"
    deletion_event = True
    edit_event = True

    def configure(self) -> tuple[str, dict[str, Any]]:
        self.events = _wikimedia_events()
        self.upload: dict[str, Any] = json.loads(self.events[-1][1])
        assert self.upload["log_type"] == "upload"
        self.offset = int(self.upload["meta"]["offset"])
        self.broken = False
        for _ in range(2):
            self.publish(1)
        self.http.routes["/v2/stream/recentchange"] = self._stream
        return self.http.url + "/v2/stream/recentchange", {"poll_idle_seconds": 0.25}

    def _stream(self, path: str, query: dict[str, str], headers: dict[str, str]) -> Reply:
        if self.broken:
            return Reply(200, {"Content-Type": "text/html"}, b"<html>down for maintenance</html>")
        return Reply(
            200,
            {"Content-Type": "text/event-stream; charset=utf-8"},
            stream=sse_frames(list(self.events), headers.get("last-event-id"), hold=0.1),
        )

    def _emit(self, **changes: Any) -> dict[str, Any]:
        self.offset += 1
        ev = copy.deepcopy(self.upload)
        ev.update(changes)
        ev["meta"]["offset"] = self.offset
        self.events.append(
            (
                json.dumps(
                    [
                        {
                            "topic": "eqiad.mediawiki.recentchange",
                            "partition": 0,
                            "offset": self.offset,
                        }
                    ]
                ),
                json.dumps(ev),
            )
        )
        return ev

    def initial(self) -> set[str]:
        from crawler.sources.wikimedia import event_records

        return {r.image_url for _, d in self.events for r in event_records(json.loads(d))}

    def publish(self, count: int) -> set[str]:
        out = set()
        for _ in range(count):
            self.n += 1
            ev = self._emit(title=f"File:Artwatch test {self.n}.jpg", log_id=900000 + self.n)
            out.add(f"{ev['server_url']}/wiki/Special:FilePath/Artwatch_test_{self.n}.jpg")
        return out

    def break_item(self) -> None:
        self.offset += 1
        self.events.append((f'[{{"offset":{self.offset}}}]', '{"type": "log", "title": '))

    def break_page(self) -> None:
        self.broken = True

    def fix_page(self) -> None:
        self.broken = False

    def delete(self) -> str:
        title = self.upload["title"]
        self._emit(log_type="delete", log_action="delete")
        return str(title)

    def edit(self) -> str:
        title = "File:Artwatch test 1.jpg"
        self._emit(
            title=title, log_action="overwrite", parsedcomment="overwritten with a new version"
        )
        return title


class BlueskyHarness(Harness):
    kind = "bluesky"
    deletion_event = True
    edit_event = True

    def configure(self) -> tuple[str, dict[str, Any]]:
        lines = (
            (SITES / "bluesky" / "jetstream_v1_window_2026-07-04.jsonl").read_text().splitlines()
        )
        self.ws.events = [json.loads(line) for line in lines if line.strip()]
        self.image_posts = [e for e in self.ws.events if "app.bsky.embed.images" in json.dumps(e)]
        assert len(self.image_posts) == 2
        return self.ws.url, {"poll_idle_seconds": 0.25}

    def initial(self) -> set[str]:
        from crawler.sources.bluesky import event_records

        return {r.image_url for e in self.ws.events for r in event_records(e) if not r.deleted}

    def _next_time(self) -> int:
        return int(max(e["time_us"] for e in self.ws.events)) + 1000

    def publish(self, count: int, images: int = 1) -> set[str]:
        out = set()
        for _ in range(count):
            self.n += 1
            ev = copy.deepcopy(self.image_posts[0])
            ev["time_us"] = self._next_time()
            ev["commit"]["rkey"] = f"3new{self.n}"
            imgs = ev["commit"]["record"]["embed"]["images"]
            template = imgs[0]
            ev["commit"]["record"]["embed"]["images"] = []
            for k in range(images):
                img = copy.deepcopy(template)
                img["image"]["ref"]["$link"] = f"bafkreinew{self.n}x{k}"
                ev["commit"]["record"]["embed"]["images"].append(img)
                out.add(
                    f"https://cdn.bsky.app/img/feed_fullsize/plain/{ev['did']}/bafkreinew{self.n}x{k}@jpeg"
                )
            self.ws.events.append(ev)
        return out

    def break_item(self) -> None:
        self.ws.events.append(
            {
                "time_us": self._next_time(),
                "kind": "commit",
                "did": "did:plc:broken",
                "commit": {
                    "operation": "create",
                    "collection": "app.bsky.feed.post",
                    "rkey": "bad",
                    "record": {
                        "embed": {"$type": "app.bsky.embed.images", "images": [{"image": {}}]}
                    },
                },
            }
        )

    def break_page(self) -> None:
        self.ws.reject_next = 1

    def delete(self) -> str:
        ev = self.image_posts[0]
        self.ws.events.append(
            {
                "did": ev["did"],
                "time_us": self._next_time(),
                "kind": "commit",
                "commit": {
                    "rev": "x",
                    "operation": "delete",
                    "collection": "app.bsky.feed.post",
                    "rkey": ev["commit"]["rkey"],
                },
            }
        )
        return f"at://{ev['did']}/app.bsky.feed.post/{ev['commit']['rkey']}"

    def edit(self) -> str:
        ev = copy.deepcopy(self.image_posts[1])
        ev["time_us"] = self._next_time()
        ev["commit"]["operation"] = "update"
        ev["commit"]["record"]["text"] = "edited text"
        self.ws.events.append(ev)
        return f"at://{ev['did']}/app.bsky.feed.post/{ev['commit']['rkey']}"


HARNESSES: list[type[Harness]] = [
    MastodonHarness,
    RedditHarness,
    FeedHarness,
    HtmlHarness,
    SitemapHarness,
    WikimediaHarness,
    BlueskyHarness,
]


def test_every_registered_kind_has_a_harness() -> None:
    assert {h.kind for h in HARNESSES} == set(SOURCE_KINDS)
    assert {h.kind for h in PAGED} == {"mastodon", "reddit"}
    assert {h.kind for h in STREAMED} == {"wikimedia", "bluesky"}


# -- fixtures -----------------------------------------------------------------


@pytest.fixture
def settings() -> CrawlerSettings:
    return CrawlerSettings(
        allow_internal=["127.0.0.1"],
        requests_per_second=0,
        read_timeout=5,
        user_agent="artwatch-test/1",
        contact_url="https://artwatch.test/contact",
    )


@pytest.fixture
def crawl_client(settings: CrawlerSettings) -> Iterator[httpx.Client]:
    with build_client(settings) as c:
        yield c


def _serve(cls: type[Harness]) -> Iterator[Harness]:
    http = PayloadServer().start()
    ws = JetstreamServer().start()
    with LocalSite() as site:
        yield cls(http, ws, site)
    http.stop()
    ws.stop()


@pytest.fixture(params=HARNESSES, ids=[h.kind for h in HARNESSES])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    yield from _serve(request.param)


PAGED = [h for h in HARNESSES if h.page_size is not None]
STREAMED = [h for h in HARNESSES if SOURCE_KINDS[h.kind].streaming]


@pytest.fixture(params=PAGED, ids=[h.kind for h in PAGED])
def paged_harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """Sources whose site paginates (the others read one document or a stream)."""
    yield from _serve(request.param)


@pytest.fixture(params=STREAMED, ids=[h.kind for h in STREAMED])
def stream_harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """Streaming sources (polling ones are covered by test_crash_and_restart_from_saved_cursor)."""
    yield from _serve(request.param)


@pytest.fixture
def sessions() -> sessionmaker[Session]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    return sessionmaker(engine, expire_on_commit=False)


def _source(h: Harness, client: httpx.Client, url: str, params: dict[str, Any]) -> Source:
    return SOURCE_KINDS[h.kind](url, params, client)


def _drain(
    src: Source, cursor: dict[str, Any] | None
) -> tuple[list[UploadRecord], dict[str, Any] | None]:
    """Poll until a poll brings nothing new, as the scheduler would over time."""
    out: list[UploadRecord] = []
    for _ in range(10):
        records, cursor = src.poll(cursor)
        if not records:
            return out, cursor
        out.extend(records)
    raise AssertionError("source never ran dry")


def _images(records: list[UploadRecord]) -> list[str]:
    return [r.image_url for r in records if not r.deleted]


# -- the contract ---------------------------------------------------------------


def test_every_upload_yielded_once(harness: Harness, crawl_client: httpx.Client) -> None:
    url, params = harness.configure()
    src = _source(harness, crawl_client, url, params)
    records, cursor = _drain(src, None)
    images = _images(records)
    assert len(images) == len(set(images)), "an image was yielded twice"
    assert set(images) == harness.initial()
    assert all(r.source_kind == harness.kind and r.post_id and r.page_url for r in records)
    new = harness.publish(3)
    more, cursor = _drain(src, cursor)
    assert sorted(_images(more)) == sorted(new)
    assert src.poll(cursor)[0] == []


def test_crash_and_restart_from_saved_cursor(harness: Harness, settings: CrawlerSettings) -> None:
    url, params = harness.configure()
    with build_client(settings) as c1:
        _, saved = _drain(_source(harness, c1, url, params), None)
    new = harness.publish(4)
    # The process crashes after polling but before committing: the next process
    # starts from the same saved cursor and must see the same new uploads.
    with build_client(settings) as c2:
        lost, _ = _drain(_source(harness, c2, url, params), saved)
    with build_client(settings) as c3:
        src = _source(harness, c3, url, params)
        again, after = _drain(src, saved)
        assert sorted(_images(again)) == sorted(_images(lost)) == sorted(new)
        assert src.poll(after)[0] == []


def test_crash_mid_stream_resumes_exactly(
    stream_harness: Harness, crawl_client: httpx.Client
) -> None:
    harness = stream_harness
    url, params = harness.configure()
    if isinstance(harness, BlueskyHarness):
        expected = harness.initial() | harness.publish(1, images=3) | harness.publish(1)
    else:
        expected = harness.initial() | harness.publish(3)
    src = _source(harness, crawl_client, url, params)
    assert isinstance(src, StreamingSource)
    got: list[str] = []
    cursor: dict[str, Any] | None = None
    for crash_after in (1, 2, 1, 100):  # restart several times, once inside a multi-image post
        n = 0
        for record, cur in src.stream(cursor, idle_timeout=0.5):
            cursor = cur
            if record is None or record.deleted:
                continue
            got.append(record.image_url)
            n += 1
            if n == crash_after:
                break
    assert len(got) == len(set(got)), "a record was yielded twice across restarts"
    assert set(got) == expected


def test_pagination(paged_harness: Harness, crawl_client: httpx.Client) -> None:
    harness = paged_harness
    assert harness.page_size is not None
    url, params = harness.configure()
    src = _source(harness, crawl_client, url, params)
    _, cursor = _drain(src, None)
    new = harness.publish(harness.page_size * 3 + 1)
    first_request = len(harness.http.requests) + len(harness.site.requests)
    records, cursor = src.poll(cursor)  # one poll walks every page
    assert sorted(_images(records)) == sorted(new)
    pages = len(harness.http.requests) + len(harness.site.requests) - first_request
    assert pages >= 4


def test_malformed_item_logged_and_rest_continue(
    harness: Harness, crawl_client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    url, params = harness.configure()
    src = _source(harness, crawl_client, url, params)
    _, cursor = _drain(src, None)
    before = harness.publish(1)
    harness.break_item()
    after = harness.publish(1)
    with caplog.at_level(logging.ERROR, logger="crawler.sources"):
        records, cursor = _drain(src, cursor)
    assert set(_images(records)) == before | after
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and "malformed item" in errors[0].getMessage()
    assert harness.kind in errors[0].getMessage()


def test_malformed_page_recorded_and_retried(
    harness: Harness,
    crawl_client: httpx.Client,
    settings: CrawlerSettings,
    sessions: sessionmaker[Session],
) -> None:
    url, params = harness.configure()
    with sessions() as s:
        row = SourceRow(name="t", kind=harness.kind, url=url, params=params)
        s.add(row)
        s.commit()
        first = poll_source(s, row, crawl_client, settings)
        s.commit()
        assert row.last_error is None and len(first) == len(harness.initial())
        saved = copy.deepcopy(row.cursor)
        new = harness.publish(2)
        harness.break_page()
        assert poll_source(s, row, crawl_client, settings) == []
        s.commit()
        assert row.last_error and row.last_error_at is not None
        assert row.cursor == saved, "a failed poll must not move the cursor"
        harness.fix_page()
        retried = poll_source(s, row, crawl_client, settings)
        s.commit()
        assert row.last_error is None
        got = {s.get(Upload, i).image_url for i in retried}
        assert got == new


def test_direct_poll_of_malformed_page_raises_clear_error(
    harness: Harness, crawl_client: httpx.Client
) -> None:
    url, params = harness.configure()
    src = _source(harness, crawl_client, url, params)
    harness.break_page()
    with pytest.raises(CrawlError) as info:
        src.poll(None)
    if not isinstance(harness, BlueskyHarness):  # a refused websocket is a transient fetch error
        assert isinstance(info.value, MalformedPage)
    assert harness.kind in str(info.value) or url.split("//")[1].split("/")[0] in str(info.value)


def test_deleted_and_edited_posts(
    harness: Harness,
    crawl_client: httpx.Client,
    settings: CrawlerSettings,
    sessions: sessionmaker[Session],
) -> None:
    url, params = harness.configure()
    with sessions() as s:
        row = SourceRow(name="t", kind=harness.kind, url=url, params=params)
        s.add(row)
        s.commit()
        poll_source(s, row, crawl_client, settings)
        s.commit()
        count = s.scalar(select(func.count()).select_from(Upload))
        assert count is not None
        deleted = harness.delete()
        edited = harness.edit()
        for _ in range(3):
            poll_source(s, row, crawl_client, settings)
            s.commit()
            assert row.last_error is None
        rows = list(s.scalars(select(Upload)))
        assert len({r.canonical_url for r in rows}) == len(rows)
        if harness.deletion_event:
            gone = [r for r in rows if r.post_id == deleted]
            assert gone and all(r.deleted_at is not None for r in gone)
        if harness.edit_event:
            assert s.scalar(select(func.count()).select_from(Upload)) == count, (
                "an edit created new uploads"
            )
            changed = [r for r in rows if r.post_id == edited]
            assert changed and all(r.deleted_at is None for r in changed)
            assert any("edited" in r.post_text or "overwritten" in r.post_text for r in changed)
        else:
            # An edited item is not a new upload; a deleted one is not yielded again.
            total = s.scalar(select(func.count()).select_from(Upload))
            assert total is not None and total <= count + 1
