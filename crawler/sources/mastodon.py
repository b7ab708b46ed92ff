"""Mastodon-compatible APIs (Mastodon, Pixelfed, GoToSocial...): statuses with image media.

URL: the instance, e.g. ``https://pixelfed.social``. Params pick the timeline:

- none: the public timeline (``local=true`` for the local one only),
- ``tag=NAME``: a hashtag timeline,
- ``account=ID`` (numeric id) or ``acct=user``: one account's statuses.

Cursor: ``{"newest_id": "<id>"}``, the newest status id already handled.
Polling asks for ``min_id=<newest_id>``, which returns the statuses
immediately after it, and follows ``rel="prev"`` in the Link header until
nothing newer is left (at most ``max_pages`` pages per poll, so a large
backlog is worked off over several polls, oldest first, without gaps). The
first poll (no cursor) takes the newest page and follows ``rel="next"``
(``max_id``) for ``backfill_pages`` pages (default 5).

IDs are compared by length and then lexically (numeric ids and ULIDs alike).

Edits and deletions: the cursor also keeps the ``recheck`` (40) most recent
status ids with their ``edited_at``. Each poll asks for them in one
``GET /api/v1/statuses?id[]=...`` (Mastodon 4.3+): a changed ``edited_at``
yields ``edited`` records, a status no longer returned yields a ``deleted``
record. Servers without that endpoint skip the recheck; there
``fetch_upload`` still marks an upload deleted when its media answers 404/410.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from crawler.errors import HTTPStatusError, InvalidSourceConfig, MalformedItem, MalformedPage
from crawler.sources.base import Cursor, Source, UploadRecord, html_to_text, parse_time

__all__ = ["MastodonSource", "parse_link_header", "status_records"]

log = logging.getLogger("crawler.sources")

_LINK_RE = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]+)*)")


def parse_link_header(value: str) -> dict[str, str]:
    """RFC 8288 Link header -> {rel: url}."""
    links: dict[str, str] = {}
    for m in _LINK_RE.finditer(value or ""):
        url, params = m.group(1), m.group(2)
        for p in params.split(";"):
            k, _, v = p.strip().partition("=")
            if k.strip().lower() == "rel":
                for rel in v.strip().strip('"').split():
                    links.setdefault(rel.lower(), url)
    return links


def _id_key(value: str) -> tuple[int, str]:
    """Sort key for status ids: numeric strings (Mastodon, Pixelfed) and ULIDs
    (GoToSocial) both order by length, then lexically; never as plain strings."""
    return len(value), value


def status_records(status: Any, kind: str = "mastodon") -> list[UploadRecord]:
    """Image records of one Status entity; MalformedItem if it is not one."""
    if not isinstance(status, dict):
        raise MalformedItem(f"status is a {type(status).__name__}, not an object")
    sid = Source.need(status, "id", str, "status")
    where = f"status {sid}"
    inner: dict[str, Any] = status["reblog"] if isinstance(status.get("reblog"), dict) else status
    media = Source.need(inner, "media_attachments", list, where)
    account = Source.need(inner, "account", dict, where)
    acct = str(account.get("acct") or account.get("username") or "")
    page_url = str(inner.get("url") or inner.get("uri") or "")
    if acct and "@" not in acct and page_url:
        host = urlsplit(page_url).hostname
        if host:
            acct = f"{acct}@{host}"
    text = html_to_text(str(inner.get("content") or ""))
    spoiler = str(inner.get("spoiler_text") or "")
    if spoiler:
        text = f"{spoiler}\n{text}".strip()
    out: list[UploadRecord] = []
    for att in media:
        if not isinstance(att, dict) or att.get("type") != "image":
            continue
        url = att.get("url") or att.get("remote_url")
        if not isinstance(url, str) or not url:
            raise MalformedItem(f"{where}: image attachment without url")
        out.append(
            UploadRecord(
                source_kind=kind,
                post_id=sid,
                page_url=page_url,
                image_url=url,
                author=acct,
                text=text,
                posted_at=parse_time(inner.get("created_at")),
                edited=bool(inner.get("edited_at")),
            )
        )
    return out


class MastodonSource(Source):
    kind = "mastodon"

    @classmethod
    def validate(cls, url: str, params: Mapping[str, Any]) -> None:
        super().validate(url, params)
        unknown = set(params) - {
            "tag",
            "account",
            "acct",
            "local",
            "limit",
            "max_pages",
            "backfill_pages",
        }
        if unknown:
            raise InvalidSourceConfig(f"mastodon: unknown params {sorted(unknown)}")
        if sum(k in params for k in ("tag", "account", "acct")) > 1:
            raise InvalidSourceConfig("mastodon: give at most one of tag, account, acct")
        if "account" in params and not str(params["account"]).isdigit():
            raise InvalidSourceConfig(
                "mastodon: account must be a numeric id (use acct=NAME for a handle)"
            )

    def _base(self) -> str:
        p = urlsplit(self.url)
        return f"{p.scheme}://{p.netloc}"

    def _endpoint(self) -> str:
        base = self._base()
        if "tag" in self.params:
            return f"{base}/api/v1/timelines/tag/{str(self.params['tag']).lstrip('#')}"
        if "account" in self.params:
            return f"{base}/api/v1/accounts/{self.params['account']}/statuses"
        if "acct" in self.params:
            data, page = self.get_json(
                f"{base}/api/v1/accounts/lookup", params={"acct": self.params["acct"]}
            )
            if not isinstance(data, dict) or not isinstance(data.get("id"), str):
                raise MalformedPage(f"mastodon: account lookup at {page.url} returned no id")
            self.params["account"] = data["id"]
            return f"{base}/api/v1/accounts/{data['id']}/statuses"
        return f"{base}/api/v1/timelines/public"

    def _query(self) -> dict[str, Any]:
        q: dict[str, Any] = {"only_media": "true", "limit": int(self.params.get("limit", 40))}
        if str(self.params.get("local", "")).lower() in ("1", "true", "yes"):
            q["local"] = "true"
        return q

    def _page(self, url: str, query: Mapping[str, Any] | None) -> tuple[list[Any], dict[str, str]]:
        data, page = self.get_json(url, params=query)
        if not isinstance(data, list):
            raise MalformedPage(
                f"mastodon: {page.url} returned a {type(data).__name__}, expected a list of statuses"
            )
        return data, parse_link_header(page.headers.get("link", ""))

    def _same_origin(self, link: str | None) -> str | None:
        # Only follow Link URLs on the instance we were asked to crawl.
        if link and urlsplit(link).netloc == urlsplit(self._base()).netloc:
            return link
        return None

    def _records(self, statuses: list[Any]) -> tuple[list[UploadRecord], list[str]]:
        records: list[UploadRecord] = []
        ids: list[str] = []
        for i, st in enumerate(statuses):
            sid = st.get("id") if isinstance(st, dict) else None
            if isinstance(sid, str) and sid:
                ids.append(sid)
                self._edited_at[sid] = str(st.get("edited_at") or "")
            try:
                records.extend(status_records(st, self.kind))
            except MalformedItem as exc:
                self.skip_item(f"#{i} (id {sid!r})", exc)
        return records, ids

    def poll(self, cursor: Cursor | None) -> tuple[list[UploadRecord], Cursor]:
        self._edited_at: dict[str, str] = {}
        records, next_cursor = self._poll_new(cursor)
        known: dict[str, str] = {
            str(k): str(v) for k, v in dict((cursor or {}).get("recent", {})).items()
        }
        limit = int(self.params.get("recheck", 40))
        if limit <= 0:
            return records, next_cursor
        if known:
            records += self._recheck(known)
        for rec in records:
            if not rec.deleted and rec.post_id not in known:
                known[rec.post_id] = self._edited_at.get(rec.post_id, "")
        newest = sorted(known, key=_id_key, reverse=True)[:limit]
        return records, {**next_cursor, "recent": {k: known[k] for k in newest}}

    def _recheck(self, known: dict[str, str]) -> list[UploadRecord]:
        """Edits and deletions among the recent statuses we recorded.

        One ``GET /api/v1/statuses?id[]=...`` (Mastodon 4.3+); a status no
        longer returned is gone (deleted or no longer public). Servers without
        that endpoint answer 4xx, and then edits/deletions are left to
        ``fetch_upload`` noticing 404s. Updates ``known`` in place."""
        base = self._base()
        ids = sorted(known, key=_id_key)
        try:
            data, _page = self.get_json(f"{base}/api/v1/statuses", params=[("id[]", i) for i in ids])
        except (HTTPStatusError, MalformedPage) as exc:
            log.debug("mastodon: %s: no multi-status recheck (%s)", base, exc)
            return []
        if not isinstance(data, list):
            return []
        found: dict[str, Any] = {
            str(st["id"]): st
            for st in data
            if isinstance(st, dict) and isinstance(st.get("id"), str)
        }
        out: list[UploadRecord] = []
        for sid in ids:
            st = found.get(sid)
            if st is None:
                out.append(UploadRecord(self.kind, sid, "", "", deleted=True))
                del known[sid]
                continue
            edited_at = str(st.get("edited_at") or "")
            if edited_at and edited_at != known[sid]:
                try:
                    out.extend(status_records(st, self.kind))
                except MalformedItem as exc:
                    self.skip_item(f"recheck of {sid}", exc)
                known[sid] = edited_at
        return out

    def _poll_new(self, cursor: Cursor | None) -> tuple[list[UploadRecord], Cursor]:
        endpoint = self._endpoint()
        max_pages = int(self.params.get("max_pages", 10))
        newest = str((cursor or {}).get("newest_id") or "")
        out: list[UploadRecord] = []
        if not newest:
            seen: set[str] = set()
            url: str | None = endpoint
            query: dict[str, Any] | None = self._query()
            top: str | None = None
            for _ in range(max(1, int(self.params.get("backfill_pages", 5)))):
                if url is None:
                    break
                statuses, links = self._page(url, query)
                if not statuses:
                    break
                recs, ids = self._records(statuses)
                out.extend(r for r in recs if r.post_id not in seen)
                seen.update(ids)
                top = max([*([top] if top else []), *ids], key=_id_key, default=None)
                url, query = self._same_origin(links.get("next")), None
            return out, ({"newest_id": top} if top else {})
        top = newest
        url = endpoint
        query = {**self._query(), "min_id": newest}
        for _ in range(max_pages):
            statuses, links = self._page(url, query)
            recs, ids = self._records(statuses)
            fresh = [i for i in ids if _id_key(i) > _id_key(top)]
            out.extend(r for r in recs if _id_key(r.post_id) > _id_key(top))
            if not fresh:
                break
            top = max(fresh, key=_id_key)
            prev = self._same_origin(links.get("prev"))
            if prev is not None and parse_qs(urlsplit(prev).query).get("min_id", [""])[0] == top:
                url, query = prev, None
            else:
                url, query = endpoint, {**self._query(), "min_id": top}
        return out, {"newest_id": top}
