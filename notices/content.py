"""The facts a notice states, independent of how a template words them.

Drafting builds a :class:`NoticeContent` from the database; templates render
it; validation checks the rendered text against it. Every string that may have
come from a crawled page or a user passes through :func:`clean_inline` when the
content is built, so no template can emit a stray newline or control character
from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, overload

__all__ = ["INSTRUMENTS", "LAWS", "ItemRef", "NoticeContent", "Notifier", "WorkRef", "clean_inline",
           "part_marker", "sample_content", "web_url"]

LAWS = ("dmca", "dsa", "trademark")

# The legal instrument each law's notice is, as subjects and part markers name it.
INSTRUMENTS = {
    "dmca": "DMCA notice of copyright infringement",
    "dsa": "Notice of illegal content (DSA Article 16)",
    "trademark": "Trademark infringement complaint",
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]+")


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """An aware UTC datetime. SQLite hands back naive values; artwatch only
    ever stores UTC, so naive means UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def clean_inline(value: object, max_length: int = 2000) -> str:
    """One line: controls (newlines included) and bidi overrides become spaces."""
    text = _CONTROL.sub(" ", str(value))
    return re.sub(r"\s{2,}", " ", text).strip()[:max_length]


def web_url(value: object, max_length: int = 2000) -> str:
    """``value`` as one clean line if it is an http(s) URL, else "": what may be
    written as a link (a crawled ``javascript:`` or ``data:`` page URL may not)."""
    from urllib.parse import urlsplit

    text = clean_inline(value or "", max_length)
    try:
        scheme = urlsplit(text).scheme.lower()
    except ValueError:
        return ""
    return text if scheme in ("http", "https") and " " not in text else ""


def clean_block(value: object, max_length: int = 2000) -> str:
    """Several lines (a postal address): each line cleaned, blank lines dropped."""
    lines = [clean_inline(line) for line in str(value).replace("\r\n", "\n").split("\n")]
    return "\n".join(line for line in lines if line)[:max_length]


@dataclass(frozen=True)
class Notifier:
    name: str
    postal_address: str
    phone: str
    email: str


@dataclass(frozen=True)
class WorkRef:
    title: str
    registration_number: str = ""
    kind: str = "artwork"


@dataclass(frozen=True)
class ItemRef:
    """One infringing copy: the image URL locates it, the page URL gives context."""

    url: str
    page_url: str
    work_title: str
    captured_at: str = ""
    author: str = ""


@dataclass(frozen=True)
class NoticeContent:
    law: str
    host_name: str
    host_domain: str
    notifier: Notifier
    works: tuple[WorkRef, ...]
    items: tuple[ItemRef, ...]
    date: str
    extra: dict[str, str] = field(default_factory=dict)

    def template_vars(self) -> dict[str, Any]:
        """What templates see. Plain dicts and strings only: nothing with methods."""
        n = self.notifier
        return {
            "law": self.law,
            "host": {"name": self.host_name, "domain": self.host_domain},
            "notifier": {"name": n.name, "postal_address": n.postal_address,
                         "address_lines": n.postal_address.split("\n"), "phone": n.phone, "email": n.email},
            "works": [{"title": w.title, "registration_number": w.registration_number, "kind": w.kind}
                      for w in self.works],
            "items": [{"url": i.url, "page_url": i.page_url, "work_title": i.work_title,
                       "captured_at": i.captured_at, "author": i.author} for i in self.items],
            "several_works": len(self.works) > 1,
            "date": self.date,
        }


def part_marker(number: int, total: int, law: str) -> str:
    """The line that opens part ``number`` of a notice made of ``total`` parts.

    Validation splits a rendered notice at these lines, so each part is
    checked against its own facts."""
    return f"=== Part {number} of {total}: {INSTRUMENTS.get(law, law)} ==="


def sample_content(law: str) -> NoticeContent:
    """Distinctive example facts used to test-render a customised template."""
    return NoticeContent(
        law=law,
        host_name="Example Host",
        host_domain="host.example",
        notifier=Notifier("Sample Owner Name", "1 Sample Street\nSample City 12345", "+1 555 0100",
                          "sample.owner@example.com"),
        works=(WorkRef("Sample Work One", "VA 1-234-567", "logo" if law == "trademark" else "artwork"),
               WorkRef("Sample Work Two", "", "logo" if law == "trademark" else "artwork")),
        items=(ItemRef("https://host.example/img/sample-1.png", "https://host.example/p/1", "Sample Work One",
                       "2026-01-02 03:04 UTC", "someone"),
               ItemRef("https://host.example/img/sample-2.png", "https://host.example/p/2", "Sample Work Two",
                       "2026-01-02 03:05 UTC", "someone else")),
        date="2026-01-03",
    )
