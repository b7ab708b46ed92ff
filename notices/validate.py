"""Checking that a rendered notice carries every element its law requires.

The check reads the rendered output (plain text, and the visible text of the
HTML), never the template's name: an edited or customised notice is held to
the same standard as a bundled one. Each element is looked for by the facts it
must state (the notifier's name, every infringing URL, ...) and by the wording
the statute asks for (good faith, penalty of perjury, ...).

Required elements by law:

- ``dmca`` (17 U.S.C. §512(c)(3)(A)(i)-(vi)): signature; identification of the
  copyrighted work (every work, or a representative list naming at least one);
  identification of the infringing material (every URL); contact details
  (name, postal address, telephone, email); good-faith statement; accuracy
  statement under penalty of perjury; authority to act.
- ``dsa`` (Regulation (EU) 2022/2065, Art. 16(2)(a)-(d)): explanation of why
  the content is illegal (naming the works); exact URLs; notifier's name and
  email; statement of good faith (bona fide belief, accurate and complete).
- ``trademark``: the mark(s); the infringing URLs; why it infringes (likely
  confusion); contact details; good-faith statement; accuracy and authority;
  signature.

A notice for one host may join a copyright part and a trademark part (see
:func:`notices.drafting.content_for_notice`); :func:`missing_in_parts` holds
each part to its own law.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from html.parser import HTMLParser

from notices.content import INSTRUMENTS, NoticeContent

__all__ = ["REQUIRED_ELEMENTS", "html_visible_text", "missing_elements", "missing_in_parts", "split_parts"]

REQUIRED_ELEMENTS: dict[str, tuple[str, ...]] = {
    "dmca": ("signature", "identification of the copyrighted work", "identification of the infringing material",
             "contact details", "good-faith statement", "accuracy statement under penalty of perjury",
             "authority to act"),
    "dsa": ("explanation of why the content is illegal", "exact URLs", "notifier's name and email",
            "statement of good faith"),
    "trademark": ("identification of the trademark", "identification of the infringing material",
                  "explanation of the infringement", "contact details", "good-faith statement",
                  "accuracy statement", "authority to act", "signature"),
}


def _norm(text: str) -> str:
    text = text.replace("\u2019", "'").replace("\u201c", '"').replace("\u201d", '"').replace("\xa0", " ")
    return re.sub(r"\s+", " ", text).strip().casefold()


class _Visible(HTMLParser):
    """Collects text a reader would see: skips head, script, style, template,
    and elements marked hidden or styled invisible."""

    _SKIP = frozenset({"head", "script", "style", "template", "noscript", "title"})
    _VOID = frozenset({"br", "img", "hr", "meta", "link", "input", "wbr", "source", "area", "base", "col", "embed",
             "param", "track"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._stack: list[bool] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._VOID:
            self.parts.append(" ")
            return
        a = {k: (v or "") for k, v in attrs}
        style = re.sub(r"\s+", "", a.get("style", "").lower())
        hidden = (tag in self._SKIP or "hidden" in a or a.get("aria-hidden") == "true"
                  or "display:none" in style or "visibility:hidden" in style or "font-size:0" in style
                  or "opacity:0" in style)
        self._stack.append(hidden or bool(self._stack and self._stack[-1]))
        self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._VOID:
            return
        if self._stack:
            self._stack.pop()
        self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not (self._stack and self._stack[-1]):
            self.parts.append(data)


def html_visible_text(html: str) -> str:
    parser = _Visible()
    parser.feed(html)
    parser.close()
    return "".join(parser.parts)


def _has(text: str, *patterns: str) -> bool:
    return all(re.search(p, text) for p in patterns)


def _contains(text: str, fact: str) -> bool:
    """``fact`` appears in the normalised text; a multi-line fact (an address)
    may appear with its lines joined by commas or on separate lines."""
    lines = [_norm(line) for line in fact.split("\n") if line.strip()]
    return bool(lines) and all(line in text for line in lines)


def _check(content: NoticeContent, raw: str) -> list[str]:
    t = _norm(raw)
    n = content.notifier
    missing: list[str] = []
    signature = bool(n.name) and re.search(r"/s/\s*" + re.escape(_norm(n.name)), t) is not None
    urls = [i.url for i in content.items if not _contains(t, i.url)]
    url_missing = [f"identification of the infringing material: {u}" for u in urls]
    titles = [w.title for w in content.works]
    named = [x for x in titles if _contains(t, x)]
    contact = [label for label, value in (("name", n.name), ("postal address", n.postal_address),
                                         ("telephone number", n.phone), ("email address", n.email))
               if not _contains(t, value)]
    if content.law == "dmca":
        if not signature:
            missing.append("signature (/s/ followed by the notifier's name)")
        representative = "representative list" in t and named
        if not (len(named) == len(titles) or representative):
            missing.append("identification of the copyrighted work: "
                           + ", ".join(f'"{x}"' for x in titles if x not in named))
        missing += url_missing
        if contact:
            missing.append("contact details: " + ", ".join(contact))
        if not _has(t, r"good[- ]faith belief", r"not authori[sz]ed by the copyright owner, its agent,? or the law"):
            missing.append("good-faith statement (use not authorized by the copyright owner, its agent, or the law)")
        if not _has(t, r"under penalty of perjury", r"information in th(is|e) (notification|notice) is accurate"):
            missing.append("accuracy statement under penalty of perjury")
        if not _has(t, r"authori[sz]ed to act on behalf of the owner"):
            missing.append("authority to act (authorized to act on behalf of the owner)")
    elif content.law == "dsa":
        if not (_has(t, r"\billegal\b") and re.search(r"infring|without (the )?authori[sz]ation", t)
                and len(named) == len(titles)):
            missing.append("explanation of why the content is illegal (naming every work)")
        missing += [m.replace("identification of the infringing material", "exact URL") for m in url_missing]
        lacking = [label for label, value in (("name", n.name), ("email address", n.email))
                   if not _contains(t, value)]
        if lacking:
            missing.append("notifier's " + " and ".join(lacking))
        if not _has(t, r"bona fide belief", r"accurate and complete"):
            missing.append("statement of good faith (bona fide belief that the notice is accurate and complete)")
    elif content.law == "trademark":
        if len(named) != len(titles):
            missing.append("identification of the trademark: "
                           + ", ".join(f'"{x}"' for x in titles if x not in named))
        missing += url_missing
        if not _has(t, r"likely to cause confusion|likelihood of confusion"):
            missing.append("explanation of the infringement (likelihood of confusion)")
        if contact:
            missing.append("contact details: " + ", ".join(contact))
        if not _has(t, r"good[- ]faith belief", r"not authori[sz]ed by the trademark owner"):
            missing.append("good-faith statement (use not authorized by the trademark owner, its agent, or the law)")
        if not _has(t, r"information in th(is|e) (complaint|notice|notification) is accurate"):
            missing.append("accuracy statement")
        if not _has(t, r"authori[sz]ed to act on (the )?(owner's )?behalf"):
            missing.append("authority to act")
        if not signature:
            missing.append("signature (/s/ followed by the notifier's name)")
    else:
        missing.append(f"a known law (got {content.law!r})")
    return missing


def _missing(content: NoticeContent, variants: list[tuple[str, str | None]]) -> list[str]:
    found: dict[str, set[str]] = {}
    checked = 0
    for label, raw in variants:
        if raw is None:
            continue
        checked += 1
        for item in _check(content, raw):
            found.setdefault(item, set()).add(label)
    out = []
    for item, where in found.items():
        out.append(item if len(where) == checked else f"{item} (in the {next(iter(where))} version)")
    return out


def missing_elements(content: NoticeContent, text: str | None = None, html: str | None = None) -> list[str]:
    """Every required element absent from the rendered ``text`` and/or ``html``.

    An element missing from only one variant is reported with "(in the text
    version)" or "(in the HTML version)". An empty list means complete."""
    return _missing(content, [("text", text), ("HTML", None if html is None else html_visible_text(html))])


_MARKER = re.compile(r"===\s*Part\s+(\d+)\s+of\s+(\d+)\b[^=\n]*===", re.IGNORECASE)


def split_parts(raw: str, total: int) -> list[str] | None:
    """The ``total`` segments of ``raw`` that follow its part markers (see
    :func:`notices.content.part_marker`), or None unless parts 1 to ``total``
    are all marked, in order, and nothing else is."""
    found = list(_MARKER.finditer(raw))
    if [(int(m[1]), int(m[2])) for m in found] != [(k, total) for k in range(1, total + 1)]:
        return None
    ends = [m.start() for m in found[1:]] + [len(raw)]
    return [raw[m.end():end] for m, end in zip(found, ends, strict=True)]


def missing_in_parts(parts: Sequence[NoticeContent], text: str | None = None,
                     html: str | None = None) -> list[str]:
    """:func:`missing_elements` for a notice made of ``parts`` (one per law).

    One part is checked exactly as :func:`missing_elements` does. With
    several, each variant is split at its part markers and each segment is
    checked against its own part; where the markers were edited away, each
    part is checked against the whole variant instead. Every gap is prefixed
    with its part's label, e.g. "part 2 of 2 (Trademark infringement
    complaint): accuracy statement"."""
    if len(parts) == 1:
        return missing_elements(parts[0], text, html)
    total = len(parts)
    variants: list[tuple[str, list[str | None]]] = []
    for label, raw in (("text", text), ("HTML", None if html is None else html_visible_text(html))):
        segments = split_parts(raw, total) if raw is not None else None
        variants.append((label, list(segments) if segments is not None else [raw] * total))
    out: list[str] = []
    for k, part in enumerate(parts):
        prefix = f"part {k + 1} of {total} ({INSTRUMENTS.get(part.law, part.law)}): "
        out += [prefix + gap for gap in _missing(part, [(label, segs[k]) for label, segs in variants])]
    return out
