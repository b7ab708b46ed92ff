"""RSS 2.0 and Atom feeds.

Images per item: ``media:content`` (image medium or type, or an image file
extension; sizes of one image collapse to the widest), ``enclosure`` /
Atom ``link rel="enclosure"`` with an image type, ``<img>`` inside the
description/content, and ``media:thumbnail`` only when nothing else was found
(it is usually a smaller copy of the same picture). XML is parsed with
defusedxml (no entity expansion, no external entities).

Cursor: ``{"seen": [item ids, newest first], "etag", "last_modified"}``.
Feeds have no pagination: new items are those not seen before. The feed is
fetched with a conditional GET; 304 means nothing new.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from crawler.errors import MalformedItem, MalformedPage
from crawler.politeness import conditional_headers, validators
from crawler.sources.base import Cursor, Source, UploadRecord, html_to_text, parse_time

__all__ = ["FeedSource", "parse_feed"]

_SEEN_KEEP = 2000
_MEDIA = "{http://search.yahoo.com/mrss/}"
_ATOM = "{http://www.w3.org/2005/Atom}"
_ATOM03 = "{http://purl.org/atom/ns#}"
_CONTENT = "{http://purl.org/rss/1.0/modules/content/}encoded"
_DC_CREATOR = "{http://purl.org/dc/elements/1.1/}creator"
_IMG_EXT = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".avif", ".bmp")


class _ImgCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            for k, v in attrs:
                if k == "src" and v and not v.startswith("data:"):
                    self.srcs.append(v)


def imgs_in_html(fragment: str) -> list[str]:
    p = _ImgCollector()
    p.feed(fragment)
    p.close()
    return p.srcs


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _is_image(url: str, mime: str | None, medium: str | None) -> bool:
    if medium:
        return medium == "image"
    if mime:
        return mime.lower().startswith("image/")
    return urlsplit(url).path.lower().endswith(_IMG_EXT)


def _text(el: Element | None) -> str:
    return (el.text or "").strip() if el is not None else ""


def _item_images(item: Element, base: str) -> list[str]:
    content: list[tuple[str, int]] = []
    thumbs: list[str] = []
    for el in item.iter():
        tag = el.tag if isinstance(el.tag, str) else ""
        if tag == f"{_MEDIA}content":
            url = el.get("url") or ""
            if url and _is_image(url, el.get("type"), el.get("medium")):
                content.append(
                    (url, int(el.get("width") or 0) if (el.get("width") or "").isdigit() else 0)
                )
        elif tag == f"{_MEDIA}thumbnail":
            if el.get("url"):
                thumbs.append(el.get("url") or "")
        elif _local(tag) == "enclosure" and tag in ("enclosure", f"{_ATOM}enclosure"):
            url = el.get("url") or ""
            if not url:
                raise MalformedItem("enclosure without url")
            if _is_image(url, el.get("type"), None):
                content.append((url, 0))
        elif tag == f"{_ATOM}link" and el.get("rel") == "enclosure":
            url = el.get("href") or ""
            if url and _is_image(url, el.get("type"), None):
                content.append((url, 0))
    # One image in several sizes (same path, different query): keep the widest.
    by_path: dict[str, tuple[str, int]] = {}
    for url, width in content:
        key = url.split("?", 1)[0]
        if key not in by_path or width > by_path[key][1]:
            by_path[key] = (url, width)
    urls = [u for u, _ in by_path.values()]
    for tag in ("description", _CONTENT, f"{_ATOM}content", f"{_ATOM}summary"):
        body_el = item.find(tag)
        if body_el is not None and body_el.text and "<img" in body_el.text:
            urls += imgs_in_html(body_el.text)
    if not urls:
        urls = thumbs
    out: list[str] = []
    for u in urls:
        full = urljoin(base, u.strip())
        if full not in out and urlsplit(full).scheme in ("http", "https"):
            out.append(full)
    return out


def _entries(root: Element) -> tuple[list[Element], bool]:
    if _local(root.tag) == "rss":
        channel = root.find("channel")
        return (list(channel.findall("item")) if channel is not None else []), False
    if root.tag == f"{_ATOM}feed":
        return list(root.findall(f"{_ATOM}entry")), True
    if _local(root.tag) == "RDF":
        return [el for el in root if _local(el.tag) == "item"], False
    raise MalformedPage(f"not an RSS or Atom feed (root element {root.tag!r})")


def _entry_record_fields(item: Element, atom: bool, base: str) -> tuple[str, str, str, str, Any]:
    if atom:
        link = ""
        for ln in item.findall(f"{_ATOM}link"):
            if ln.get("rel", "alternate") == "alternate":
                link = ln.get("href") or ""
                break
        ident = _text(item.find(f"{_ATOM}id")) or link
        author = _text(item.find(f"{_ATOM}author/{_ATOM}name"))
        title = _text(item.find(f"{_ATOM}title"))
        body = _text(item.find(f"{_ATOM}summary")) or _text(item.find(f"{_ATOM}content"))
        posted = _text(item.find(f"{_ATOM}published")) or _text(item.find(f"{_ATOM}updated"))
    else:
        link = _text(item.find("link"))
        ident = _text(item.find("guid")) or link
        author = _text(item.find(_DC_CREATOR)) or _text(item.find("author"))
        title = _text(item.find("title"))
        body = _text(item.find("description"))
        posted = _text(item.find("pubDate"))
    text = "\n".join(x for x in (title, html_to_text(body)) if x)
    return ident, urljoin(base, link) if link else "", author, text, parse_time(posted)


def parse_feed(
    body: bytes, base: str, kind: str = "rss", on_error: Any = None
) -> list[tuple[str, list[UploadRecord]]]:
    """(item id, records) per feed item, in feed order. MalformedPage if the
    document is not a feed; ``on_error(where, exc)`` is called for bad items."""
    try:
        root = SafeET.fromstring(body)
    except (SafeET.ParseError, DefusedXmlException, ValueError) as exc:
        raise MalformedPage(f"{kind}: {base} is not well-formed XML: {exc}") from None
    for el in root.iter():  # Atom 0.3 uses another namespace for the same elements
        if isinstance(el.tag, str) and el.tag.startswith(_ATOM03):
            el.tag = _ATOM + el.tag[len(_ATOM03) :]
    entries, atom = _entries(root)
    out: list[tuple[str, list[UploadRecord]]] = []
    for i, item in enumerate(entries):
        try:
            ident, link, author, text, posted = _entry_record_fields(item, atom, base)
            images = _item_images(item, link or base)
            if not ident:
                if not images:
                    continue  # nothing to record and nothing to remember
                ident = "sha256:" + hashlib.sha256("|".join(images).encode()).hexdigest()[:32]
            out.append(
                (
                    ident,
                    [
                        UploadRecord(
                            kind, ident, link, url, author=author, text=text, posted_at=posted
                        )
                        for url in images
                    ],
                )
            )
        except MalformedItem as exc:
            if on_error is not None:
                on_error(f"item #{i} in {base}", exc)
    return out


class FeedSource(Source):
    kind = "rss"

    def poll(self, cursor: Cursor | None) -> tuple[list[UploadRecord], Cursor]:
        cursor = dict(cursor or {})
        page = self.get_page(
            self.url,
            headers={
                **conditional_headers(cursor),
                "Accept": "application/rss+xml, application/atom+xml, */*",
            },
        )
        if page.not_modified:
            return [], cursor
        items = parse_feed(page.body, page.url, self.kind, on_error=self.skip_item)
        seen_list = [str(s) for s in cursor.get("seen", [])]
        seen = set(seen_list)
        fresh: list[str] = []
        out: list[UploadRecord] = []
        for ident, records in items:
            if ident in seen:
                continue
            seen.add(ident)
            fresh.append(ident)
            out.extend(records)
        return out, {"seen": _merge(fresh, seen_list), **validators(page.headers)}


def _merge(fresh: Iterable[str], old: list[str]) -> list[str]:
    return (list(fresh) + old)[:_SEEN_KEEP]
