"""Plain HTML pages and image sitemaps.

``html``: one page URL; images from ``<img src>``, ``srcset`` (the largest
candidate), ``<picture><source srcset>``, and ``og:image`` /
``twitter:image`` meta tags, resolved against ``<base href>`` or the page.
``sitemap``: an image sitemap (``<image:image><image:loc>``), or a sitemap
index whose child sitemaps on the same host are read too (``max_sitemaps``).

Both re-read their document each poll with a conditional GET and yield the
image URLs not seen before. Cursor: ``{"seen": [image URLs], "etag",
"last_modified"}``.
"""

from __future__ import annotations

from collections.abc import Callable
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from crawler.errors import CrawlError, MalformedItem, MalformedPage
from crawler.politeness import conditional_headers, validators
from crawler.sources.base import Cursor, Source, UploadRecord, html_to_text

__all__ = ["HtmlPageSource", "SitemapSource", "page_images", "parse_sitemap"]

_SEEN_KEEP = 5000
_SM = "{http://www.sitemaps.org/schemas/sitemap/0.9}"
_IMG = "{http://www.google.com/schemas/sitemap-image/1.1}"


def _largest_srcset(value: str) -> str | None:
    best: tuple[float, str] | None = None
    for cand in value.split(","):
        bits = cand.strip().split()
        if not bits:
            continue
        size = 1.0
        if len(bits) > 1:
            d = bits[1].lower()
            try:
                size = float(d[:-1]) * (
                    1.0 if d.endswith("w") else 10000.0 if d.endswith("x") else 1.0
                )
            except ValueError:
                size = 1.0
        if best is None or size > best[0]:
            best = (size, bits[0])
    return best[1] if best else None


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.base: str | None = None
        self.images: list[str] = []
        self.title = ""
        self.description = ""
        self.author = ""
        self._in_title = False
        self._picture_sources = -1  # sources seen in the open <picture>, -1 outside one

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "base" and a.get("href") and self.base is None:
            self.base = a["href"]
        elif tag == "picture":
            self._picture_sources = 0
        elif tag == "img":
            if self._picture_sources > 0:
                return  # the fallback of a <picture> whose <source> we already took
            src = (
                (a.get("srcset") and _largest_srcset(a["srcset"]))
                or a.get("src")
                or a.get("data-src")
            )
            if src:
                self.images.append(src)
        elif tag == "source" and a.get("srcset"):
            src = _largest_srcset(a["srcset"])
            if src and self._picture_sources <= 0:
                self.images.append(src)
            if self._picture_sources >= 0:
                self._picture_sources += 1
        elif tag == "meta":
            key = (a.get("property") or a.get("name") or "").lower()
            content = a.get("content", "")
            if key in (
                "og:image",
                "og:image:url",
                "og:image:secure_url",
                "twitter:image",
                "twitter:image:src",
            ):
                if content:
                    self.images.append(content)
            elif key in ("og:description", "description") and not self.description:
                self.description = content
            elif key == "author" and not self.author:
                self.author = content
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "picture":
            self._picture_sources = -1
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def page_images(
    body: str, page_url: str, on_error: Callable[[str, Exception], None] | None = None
) -> tuple[list[str], str, str]:
    """(absolute image URLs in page order without repeats, page text, author).
    An unusable image reference is reported to ``on_error`` and skipped."""
    p = _PageParser()
    p.feed(body)
    p.close()
    base = urljoin(page_url, p.base) if p.base else page_url
    out: list[str] = []
    for src in p.images:
        if src.startswith("data:"):
            continue
        try:
            full = urljoin(base, src.strip()).split("#", 1)[0]
            _ = urlsplit(full).port  # raises ValueError for a bad port or IPv6 literal
        except ValueError as exc:
            if on_error is not None:
                on_error(f"image {src[:80]!r} on {page_url}", MalformedItem(str(exc)))
            continue
        if urlsplit(full).scheme in ("http", "https") and full not in out:
            out.append(full)
    text = "\n".join(x for x in (p.title.strip(), html_to_text(p.description)) if x)
    return out, text, p.author


def parse_sitemap(
    body: bytes,
    url: str,
    on_error: Callable[[str, Exception], None] | None = None,
) -> tuple[list[tuple[str, str, str]], list[str]]:
    """((page, image, caption) triples, child sitemap URLs). MalformedPage if
    not a sitemap; an unusable entry goes to ``on_error`` and is skipped."""
    try:
        root = SafeET.fromstring(body)
    except (SafeET.ParseError, DefusedXmlException, ValueError) as exc:
        raise MalformedPage(f"sitemap: {url} is not well-formed XML: {exc}") from None
    if root.tag == f"{_SM}sitemapindex":
        return [], [(el.text or "").strip() for el in root.iter(f"{_SM}loc") if el.text]
    if root.tag != f"{_SM}urlset":
        raise MalformedPage(f"sitemap: {url} is not a sitemap (root {root.tag!r})")
    triples: list[tuple[str, str, str]] = []
    for entry in root.findall(f"{_SM}url"):
        page = (entry.findtext(f"{_SM}loc") or "").strip()
        for img in entry.findall(f"{_IMG}image"):
            loc = (img.findtext(f"{_IMG}loc") or "").strip()
            caption = (img.findtext(f"{_IMG}caption") or img.findtext(f"{_IMG}title") or "").strip()
            try:
                if not loc:
                    raise MalformedItem("image:image without image:loc")
                page_abs = urljoin(url, page) if page else url
                image_abs = urljoin(page_abs, loc)
                _ = urlsplit(image_abs).port  # raises ValueError if unusable
            except (ValueError, MalformedItem) as exc:
                if on_error is not None:
                    on_error(f"entry {page or '?'} in {url}", exc)
                continue
            triples.append((page_abs, image_abs, caption))
    return triples, []


class _SeenSource(Source):
    def _fresh(
        self, cursor: Cursor, candidates: list[UploadRecord]
    ) -> tuple[list[UploadRecord], list[str]]:
        seen_list = [str(s) for s in cursor.get("seen", [])]
        seen = set(seen_list)
        out: list[UploadRecord] = []
        fresh: list[str] = []
        for rec in candidates:
            if rec.image_url in seen:
                continue
            seen.add(rec.image_url)
            fresh.append(rec.image_url)
            out.append(rec)
        return out, (fresh + seen_list)[:_SEEN_KEEP]


class HtmlPageSource(_SeenSource):
    kind = "html"

    def poll(self, cursor: Cursor | None) -> tuple[list[UploadRecord], Cursor]:
        cursor = dict(cursor or {})
        page = self.get_page(
            self.url, headers={**conditional_headers(cursor), "Accept": "text/html,*/*"}
        )
        if page.not_modified:
            return [], cursor
        ctype = page.headers.get("content-type", "text/html")
        if "html" not in ctype and "xml" not in ctype:
            raise MalformedPage(f"html: {page.url} is {ctype!r}, not HTML")
        images, text, author = page_images(page.text(), page.url, self.skip_item)
        records = [
            UploadRecord(self.kind, page.url, page.url, u, author=author, text=text) for u in images
        ]
        out, seen = self._fresh(cursor, records)
        return out, {"seen": seen, **validators(page.headers)}


class SitemapSource(_SeenSource):
    kind = "sitemap"

    def poll(self, cursor: Cursor | None) -> tuple[list[UploadRecord], Cursor]:
        cursor = dict(cursor or {})
        page = self.get_page(self.url, headers=conditional_headers(cursor))
        if page.not_modified:
            return [], cursor
        triples, children = parse_sitemap(page.body, page.url, self.skip_item)
        host = urlsplit(page.url).netloc
        for child in children[: int(self.params.get("max_sitemaps", 20))]:
            if urlsplit(child).netloc != host:
                self.skip_item(child, MalformedPage("child sitemap on another host"))
                continue
            try:
                sub = self.get_page(child)
                more, _ = parse_sitemap(sub.body, sub.url, self.skip_item)
            except CrawlError as exc:
                raise MalformedPage(f"sitemap: child {child} failed: {exc}") from exc
            triples += more
        records = [UploadRecord(self.kind, p, p, i, text=c) for p, i, c in triples]
        out, seen = self._fresh(cursor, records)
        return out, {"seen": seen, **validators(page.headers)}
