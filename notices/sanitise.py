"""The HTML a notice may carry: a small, inert subset, so what a reviewer sees is what is sent.

An owner's HTML template could otherwise carry a script, a remote tracking
image, a form, a ``javascript:`` link, or text hidden from the reviewer but
not from the recipient's mail client. :func:`safe_html` rebuilds any rendered
notice as our own document shell around a body cleaned by nh3 (the Ammonia
sanitiser) down to text markup: headings, paragraphs, lists, tables, emphasis
and ``http``/``https``/``mailto`` links. No images, no styles (CSS can hide
text or fetch URLs), no forms, no scripts, no ``hidden`` attributes: every
character that survives is visible. :func:`disallowed_markup` lists what a
template uses beyond that subset, so the gate can refuse it with a clear
message instead of silently dropping it.
"""

from __future__ import annotations

import re
from html import escape, unescape
from html.parser import HTMLParser
from urllib.parse import urlsplit

import nh3

from notices.content import clean_inline

__all__ = ["ALLOWED_TAGS", "LINK_SCHEMES", "body_of", "disallowed_markup", "html_document", "safe_html"]

ALLOWED_TAGS = frozenset({
    "p", "br", "h1", "h2", "h3", "h4", "ul", "ol", "li", "a", "strong", "em", "b", "i", "u", "blockquote",
    "pre", "code", "hr", "section", "div", "span", "table", "thead", "tbody", "tr", "th", "td",
})
_ATTRIBUTES = {"a": {"href"}, "section": {"class"}, "th": {"colspan", "rowspan"}, "td": {"colspan", "rowspan"}}
LINK_SCHEMES = frozenset({"http", "https", "mailto"})
# The document shell is ours: a template may write it, and it is rebuilt.
_SHELL = {"html": {"lang"}, "head": set(), "body": set(), "title": set(), "meta": {"charset"}}

_HEAD = re.compile(r"<head\b.*?</head\s*>", re.IGNORECASE | re.DOTALL)
_TITLE = re.compile(r"<title\b[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)
_BODY = re.compile(r"<body\b[^>]*>(.*?)</body\s*>", re.IGNORECASE | re.DOTALL)
_DOCUMENT_TAGS = re.compile(r"<!DOCTYPE[^>]*>|</?html\b[^>]*>|</?body\b[^>]*>", re.IGNORECASE)


def body_of(html: str) -> str:
    """What a rendered HTML document shows: its body, or the fragment without head."""
    found = _BODY.search(html)
    if found:
        return found.group(1)
    return _DOCUMENT_TAGS.sub("", _HEAD.sub("", html))


def html_document(title: str, body: str) -> str:
    """Our document shell; ``title`` is plain text, ``body`` already safe markup."""
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{escape(title)}</title></head>\n<body>\n{body.strip()}\n</body></html>\n")


def _clean(fragment: str) -> str:
    return nh3.clean(fragment, tags=set(ALLOWED_TAGS), attributes={k: set(v) for k, v in _ATTRIBUTES.items()},
                     url_schemes=set(LINK_SCHEMES), link_rel="noopener noreferrer nofollow")


def safe_html(document: str) -> str:
    """``document`` rebuilt as our shell around its sanitised body (idempotent)."""
    head = _HEAD.search(document)
    found = _TITLE.search(head.group(0)) if head else None
    title = clean_inline(unescape(re.sub(r"<[^>]*>", "", found.group(1))), 300) if found else ""
    return html_document(title or "Notice", _clean(body_of(document)))


class _Audit(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: dict[str, None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        allowed = _SHELL.get(tag) if tag in _SHELL else (_ATTRIBUTES.get(tag, set()) if tag in ALLOWED_TAGS
                                                          else None)
        if tag == "a" and allowed is not None:
            allowed = allowed | {"rel"}  # the sanitiser sets it on every link
        if allowed is None:
            self.found[f"<{tag}>"] = None
            return
        for name, value in attrs:
            if name not in allowed:
                self.found[f"the {name!r} attribute on <{tag}>"] = None
            elif tag == "a" and name == "href" and value and urlsplit(value.strip()).scheme.lower() not in (
                    *LINK_SCHEMES, ""):
                self.found[f"a {urlsplit(value.strip()).scheme.lower()}: link"] = None

    def handle_comment(self, data: str) -> None:
        self.found["an HTML comment"] = None


def disallowed_markup(html: str) -> list[str]:
    """What rendered ``html`` uses beyond the safe subset, once each, in order of appearance."""
    audit = _Audit()
    audit.feed(html)
    audit.close()
    return list(audit.found)
