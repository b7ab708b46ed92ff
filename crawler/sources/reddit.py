"""Reddit listings: ``/r/NAME/new.json``.

URL: ``https://www.reddit.com/r/NAME`` (``/new``, ``/new.json`` accepted).
Images per post: galleries and inline media from ``media_metadata`` (in
``gallery_data`` order), direct image links (``post_hint: image`` or an
image-host URL), otherwise the preview's source image. Reddit HTML-escapes
``&`` as ``&amp;`` in these URLs unless ``raw_json=1``; we ask for raw JSON and
unescape anyway.

Cursor: ``{"seen": [fullnames, newest first], "newest_utc": float}``. A poll
reads the newest page and follows ``after`` until it reaches a post it has
seen or one older than the watermark (at most ``max_pages`` pages). Unlike
``before=<fullname>``, this keeps working when the remembered post is deleted.
Posts shown as removed/deleted produce ``deleted`` records; ``edited`` is
passed through.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from crawler.errors import InvalidSourceConfig, MalformedItem, MalformedPage
from crawler.sources.base import Cursor, Source, UploadRecord, parse_time

__all__ = ["RedditSource", "post_records"]

_SUB_RE = re.compile(r"^/r/([A-Za-z0-9_+]+)(?:/new)?(?:\.json)?/?$")
_IMAGE_EXT = re.compile(r"\.(jpe?g|png|gif|webp|avif|bmp)$", re.IGNORECASE)
_SEEN_KEEP = 500


def _url(value: Any) -> str:
    return html.unescape(value) if isinstance(value, str) else ""


def _images(post: dict[str, Any]) -> list[str]:
    urls: list[str] = []
    meta = post.get("media_metadata")
    if isinstance(meta, dict) and meta:
        order: list[str] = []
        gallery = post.get("gallery_data")
        if isinstance(gallery, dict) and isinstance(gallery.get("items"), list):
            order = [str(i.get("media_id")) for i in gallery["items"] if isinstance(i, dict)]
        order += [k for k in meta if k not in order]
        for mid in order:
            m = meta.get(mid)
            if not isinstance(m, dict) or m.get("status", "valid") != "valid":
                continue
            if m.get("e") not in ("Image", "AnimatedImage"):
                continue
            s: dict[str, Any] = m["s"] if isinstance(m.get("s"), dict) else {}
            u = _url(s.get("u") or s.get("gif"))
            if u:
                urls.append(u)
        if urls:
            return urls
    direct = _url(post.get("url_overridden_by_dest") or post.get("url"))
    host = (urlsplit(direct).hostname or "").lower()
    if direct and (
        post.get("post_hint") == "image"
        or (host in ("i.redd.it", "i.imgur.com") and _IMAGE_EXT.search(urlsplit(direct).path))
    ):
        return [direct]
    if post.get("is_self"):
        return []
    preview = post.get("preview")
    if isinstance(preview, dict):
        for img in preview.get("images") or []:
            src = img.get("source") if isinstance(img, dict) else None
            if isinstance(src, dict) and src.get("url"):
                urls.append(_url(src["url"]))
    return urls


def post_records(child: Any, kind: str = "reddit") -> list[UploadRecord]:
    """Records of one listing child (``kind: t3``); MalformedItem if it is not a post."""
    if not isinstance(child, dict) or child.get("kind") != "t3":
        raise MalformedItem(f"listing child is not a t3 post: {str(child)[:80]!r}")
    post = Source.need(child, "data", dict, "t3 child")
    name = Source.need(post, "name", str, "post")
    permalink = post.get("permalink")
    page_url = f"https://www.reddit.com{permalink}" if isinstance(permalink, str) else ""
    author = str(post.get("author") or "")
    removed = bool(post.get("removed_by_category")) or author == "[deleted]"
    if removed:
        return [UploadRecord(kind, name, page_url, "", deleted=True)]
    title = str(post.get("title") or "")
    body = str(post.get("selftext") or "")
    text = f"{title}\n{body}".strip()
    posted = parse_time(post.get("created_utc"))
    edited = bool(post.get("edited"))
    return [
        UploadRecord(
            kind,
            name,
            page_url,
            url,
            author=f"u/{author}" if author else "",
            text=text,
            posted_at=posted,
            edited=edited,
        )
        for url in _images(post)
    ]


class RedditSource(Source):
    kind = "reddit"

    @classmethod
    def validate(cls, url: str, params: Mapping[str, Any]) -> None:
        super().validate(url, params)
        if not _SUB_RE.match(urlsplit(url).path):
            raise InvalidSourceConfig(
                f"reddit: URL must look like https://www.reddit.com/r/NAME, got {url!r}"
            )

    def _endpoint(self) -> str:
        parts = urlsplit(self.url)
        m = _SUB_RE.match(parts.path)
        assert m is not None
        return f"{parts.scheme}://{parts.netloc}/r/{m.group(1)}/new.json"

    def poll(self, cursor: Cursor | None) -> tuple[list[UploadRecord], Cursor]:
        seen_list = [str(s) for s in (cursor or {}).get("seen", [])]
        seen = set(seen_list)
        watermark = float((cursor or {}).get("newest_utc") or 0.0)
        first_poll = cursor is None or not seen_list
        max_pages = int(
            self.params.get("backfill_pages", 1) if first_poll else self.params.get("max_pages", 5)
        )
        limit = int(self.params.get("limit", 100))
        out: list[UploadRecord] = []
        fresh: list[str] = []
        newest = watermark
        after: str | None = None
        for _ in range(max_pages):
            query: dict[str, Any] = {"limit": limit, "raw_json": 1}
            if after:
                query["after"] = after
            data, page = self.get_json(self._endpoint(), params=query)
            if (
                not isinstance(data, dict)
                or data.get("kind") != "Listing"
                or not isinstance(data.get("data"), dict)
                or not isinstance(data["data"].get("children"), list)
            ):
                raise MalformedPage(f"reddit: {page.url} is not a Listing")
            reached_known = False
            for i, child in enumerate(data["data"]["children"]):
                post = child.get("data") if isinstance(child, dict) else None
                name = post.get("name") if isinstance(post, dict) else None
                created = post.get("created_utc") if isinstance(post, dict) else None
                if isinstance(name, str) and name in seen:
                    reached_known = True
                    continue
                if watermark and isinstance(created, (int, float)) and created < watermark - 3600:
                    reached_known = True  # older than anything new could be
                    continue
                try:
                    out.extend(post_records(child, self.kind))
                except MalformedItem as exc:
                    self.skip_item(f"#{i} ({name!r}) in {page.url}", exc)
                if isinstance(name, str):
                    fresh.append(name)
                    seen.add(name)
                if isinstance(created, (int, float)):
                    newest = max(newest, float(created))
            after = data["data"].get("after")
            if reached_known or not after:
                break
        return out, {"seen": (fresh + seen_list)[:_SEEN_KEEP], "newest_utc": newest}
