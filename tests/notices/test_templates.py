"""Bundled templates carry every required element; customised ones are checked."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from notices.content import ItemRef, NoticeContent, Notifier, WorkRef, sample_content
from notices.errors import TemplateRejected
from notices.render import TEMPLATE_DIR, check_template, render_notice
from notices.validate import html_visible_text, missing_elements, missing_in_parts, split_parts


def _content(law: str, works: int = 1) -> NoticeContent:
    ws = tuple(WorkRef(f"Blue Heron {k}", f"VA 2-000-00{k}" if k == 1 else "") for k in range(1, works + 1))
    items = tuple(ItemRef(f"https://i.host.test/{k}.jpg", f"https://host.test/post/{k}", ws[k % works].title,
                          "2026-11-01 10:00 UTC") for k in range(3))
    return NoticeContent(law, "Host", "host.test",
                         Notifier("Ada Artist", "12 Canal Street\nAmsterdam 1012", "+31 20 555 0101",
                                  "ada@artist.test"), ws, items, "2026-11-28")


@pytest.mark.parametrize("law", ["dmca", "dsa", "trademark"])
def test_bundled_templates_are_complete(law: str) -> None:
    c = _content(law, works=2)
    r = render_notice(c)
    assert missing_elements(c, r.text, r.html) == []
    for text in (r.text, html_visible_text(r.html)):
        for item in c.items:
            assert item.url in text


def test_dmca_has_all_six_512c3_elements_worded_as_the_statute_asks() -> None:
    c = _content("dmca", works=3)
    text = re.sub(r"\s+", " ", render_notice(c).text)
    assert "/s/ Ada Artist" in text                                           # (i) signature
    assert "A representative list of the works" in text                      # (ii) several works on one site
    assert all(f'"{w.title}"' in text for w in c.works)
    assert "Each URL below is sufficient to locate it" in text                # (iii)
    assert all(i.url in text for i in c.items)
    for fact in ("12 Canal Street", "Amsterdam 1012", "+31 20 555 0101", "ada@artist.test"):  # (iv)
        assert fact in text
    assert ("good faith belief that use of the material in the manner complained of is not authorized by "
            "the copyright owner, its agent, or the law") in text              # (v)
    assert "under penalty of perjury, that the information in this notification is accurate" in text  # (vi)
    assert "authorized to act on behalf of the owner of an exclusive right" in text
    single = render_notice(_content("dmca", works=1)).text
    assert "representative list" not in single and "The copyrighted work:" in single


def test_dsa_article_16_elements() -> None:
    c = _content("dsa")
    text = re.sub(r"\s+", " ", render_notice(c).text)
    assert "Explanation of why the content is illegal" in text
    assert "Regulation (EU) 2022/2065" in text
    assert all(i.url in text for i in c.items)
    assert "Name: Ada Artist" in text and "Email: ada@artist.test" in text
    assert (
        "bona fide belief that the information and allegations contained in this notice are accurate and complete"
        in text
    )


def test_trademark_complaint_for_logos() -> None:
    c = _content("trademark")
    r = render_notice(c)
    text = re.sub(r"\s+", " ", r.text)
    assert "Trademark infringement complaint" in r.subject
    assert '"Blue Heron 1" (logo), registration number VA 2-000-001' in text
    assert "likely to cause confusion" in text


@pytest.mark.parametrize("law", ["dmca", "dsa", "trademark"])
def test_validation_reads_the_rendered_output_and_lists_what_is_missing(law: str) -> None:
    c = _content(law)
    r = render_notice(c)
    cut = r.text.replace(c.items[1].url, "(link removed)")
    missing = missing_elements(c, cut, r.html)
    assert len(missing) == 1 and c.items[1].url in missing[0] and "text version" in missing[0]
    # an element hidden in the HTML does not count
    hidden = r.html.replace(c.notifier.email, f'<span style="display: none">{c.notifier.email}</span>')
    assert any("email" in m and "HTML version" in m for m in missing_elements(c, r.text, hidden))


def test_dmca_missing_statements_are_each_reported() -> None:
    c = _content("dmca")
    text = render_notice(c).text
    text = re.sub(r"4\. Good-faith statement.*?6\. Signature", "6. Signature", text, flags=re.DOTALL)
    text = text.replace("/s/ ", "")
    missing = missing_elements(c, text)
    assert missing == [
        "signature (/s/ followed by the notifier's name)",
        "good-faith statement (use not authorized by the copyright owner, its agent, or the law)",
        "accuracy statement under penalty of perjury",
        "authority to act (authorized to act on behalf of the owner)",
    ]


def test_crawled_strings_are_escaped_in_html() -> None:
    c = _content("dmca")
    evil = "<script>alert(1)</script>"
    item = dataclasses.replace(c.items[0], work_title=evil, url='https://h.test/x"><img src=x onerror=1>')
    c = dataclasses.replace(c, items=(item, *c.items[1:]))
    r = render_notice(c)
    assert "<script>" not in r.html and "&lt;script&gt;" in r.html
    assert '"><img' not in r.html
    assert evil in r.text  # the text variant is plain text, not markup


@pytest.mark.parametrize("law", ["dmca", "dsa", "trademark"])
@pytest.mark.parametrize("variant,suffix", [("text", "txt"), ("html", "html")])
def test_bundled_sources_pass_the_custom_template_gate(law: str, variant: str, suffix: str) -> None:
    check_template(law, variant, (TEMPLATE_DIR / f"{law}.{suffix}.j2").read_text())


def test_customised_template_used_and_validated() -> None:
    src = (TEMPLATE_DIR / "dmca.txt.j2").read_text().replace("To the designated", "Dear designated")
    check_template("dmca", "text", src)
    c = _content("dmca")
    r = render_notice(c, {"text": src})
    assert r.text.startswith("Dear designated") and missing_elements(c, r.text, r.html) == []
    weak = src.replace("under penalty of perjury, ", "")
    with pytest.raises(TemplateRejected, match="lacks required elements: accuracy statement under penalty"):
        check_template("dmca", "text", weak)


@pytest.mark.parametrize("source,line,why", [
    ("Hello\n{% if %}\n", 2, "syntax error"),
    ("a\nb\n{% for w in works %}\n{{ w.title }\n{% endfor %}", 4, "syntax error"),
    ("{{ notifier.__class__.__mro__ }}", 1, "unsafe construct"),
    ("x\n\n{{ notifier.name.format(1) }}", 3, "unsafe construct"),
    ("x\n{% include 'dmca.txt.j2' %}", 2, "cannot load other templates"),
    ("x\n{{ notifier|attr('__class__') }}", 2, "'attr' filter"),
    ("a\nb\n{{ works.append(1) }}", 3, "unsafe construct: access to attribute 'append'"),
    ("line\n{{ no_such_value }}", 2, "'no_such_value' is undefined"),
])
def test_bad_templates_are_rejected_with_the_line(source: str, line: int, why: str) -> None:
    with pytest.raises(TemplateRejected) as info:
        check_template("dmca", "text", source)
    assert info.value.lineno == line
    assert f"line {line}:" in str(info.value) and why in str(info.value)


def test_sample_content_is_distinct_per_law() -> None:
    assert sample_content("trademark").works[0].kind == "logo"
    assert Path(TEMPLATE_DIR).is_dir()


def _logo_part() -> NoticeContent:
    c = _content("trademark")
    logo = WorkRef("Acme Bird Logo", "", "logo")
    item = ItemRef("https://i.host.test/logo.jpg", "https://host.test/post/logo", logo.title, "2026-11-01 10:00 UTC")
    return dataclasses.replace(c, works=(logo,), items=(item,))


def test_two_parts_render_each_with_its_own_template_behind_a_marker() -> None:
    art, logo = _content("dsa"), _logo_part()
    custom = (TEMPLATE_DIR / "trademark.txt.j2").read_text().replace("To the trademark", "Dear trademark")
    r = render_notice([art, logo], {"trademark": {"text": custom}, "dmca": {"text": "never used"}})
    assert r.subject == ("Notice of illegal content (DSA Article 16) and trademark infringement complaint: "
                         "4 items on host.test")
    assert "\n" not in r.subject
    assert r.text.startswith("=== Part 1 of 2: Notice of illegal content (DSA Article 16) ===\n")
    first, second = split_parts(r.text, 2) or ["", ""]
    assert "Article 16 of Regulation (EU) 2022/2065" in first and "likely to cause confusion" not in first
    assert "Dear trademark" in second and "https://i.host.test/logo.jpg" in second
    assert "https://i.host.test/logo.jpg" not in first and "https://i.host.test/0.jpg" not in second
    visible = html_visible_text(r.html)
    assert "=== Part 2 of 2: Trademark infringement complaint ===" in visible
    assert r.html.count("<!DOCTYPE") == 1 and r.html.count("<body") == 1
    assert missing_in_parts([art, logo], r.text, r.html) == []
    # each part is held to its own law: the DSA part alone is not a trademark complaint
    assert missing_in_parts([logo, art], r.text, r.html) != []


def test_one_part_renders_and_validates_as_before() -> None:
    c = _content("dmca")
    assert render_notice([c], {"dmca": {}}) == render_notice(c)
    r = render_notice(c)
    assert "=== Part" not in r.text and missing_in_parts([c], r.text, r.html) == []


def test_a_parts_gaps_carry_its_label_and_lost_markers_check_the_whole_text() -> None:
    art, logo = _content("dmca"), _logo_part()
    r = render_notice([art, logo])
    cut = r.text.replace("I declare that the information in this complaint is accurate", "I declare")
    assert missing_in_parts([art, logo], cut) == [
        "part 2 of 2 (Trademark infringement complaint): accuracy statement"]
    unmarked = re.sub(r"=== Part .* ===\n", "", r.text)
    assert split_parts(unmarked, 2) is None and missing_in_parts([art, logo], unmarked) == []
    no_logo_url = unmarked.replace("https://i.host.test/logo.jpg", "")
    assert missing_in_parts([art, logo], no_logo_url) == [
        ("part 2 of 2 (Trademark infringement complaint): identification of the infringing material: "
         "https://i.host.test/logo.jpg")]
