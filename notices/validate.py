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
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from notices.content import NoticeContent

__all__ = ["REQUIRED_ELEMENTS", "html_visible_text", "missing_elements"]

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


def missing_elements(content: NoticeContent, text: str | None = None, html: str | None = None) -> list[str]:
    """Every required element absent from the rendered ``text`` and/or ``html``.

    An element missing from only one variant is reported with "(in the text
    version)" or "(in the HTML version)". An empty list means complete."""
    found: dict[str, set[str]] = {}
    checked = 0
    for label, raw in (("text", text), ("HTML", None if html is None else html_visible_text(html))):
        if raw is None:
            continue
        checked += 1
        for item in _check(content, raw):
            found.setdefault(item, set()).add(label)
    out = []
    for item, where in found.items():
        out.append(item if len(where) == checked else f"{item} (in the {next(iter(where))} version)")
    return out
