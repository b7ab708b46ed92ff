"""Rendering notices from Jinja2 templates in a sandbox.

Bundled templates live in ``notices/templates`` as ``<law>.txt.j2`` (plain
text) and ``<law>.html.j2`` (HTML, autoescaped). Owners may replace either
variant with their own source; :func:`check_template` is the gate such a
template must pass before it is stored: it must parse, must not use a
construct the sandbox forbids (private attributes, loading other templates,
string formatting), must render the sample facts, and the result must carry
every element the law requires (see :mod:`notices.validate`). Each rejection
names the line it comes from when there is one.

Both environments are :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment`
with :class:`~jinja2.StrictUndefined`: a template can read the facts it is
given and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from types import TracebackType
from typing import cast, overload

from jinja2 import FileSystemLoader, StrictUndefined, TemplateError, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from notices.content import (
    INSTRUMENTS,
    LAWS,
    NoticeContent,
    clean_inline,
    part_marker,
    sample_content,
)
from notices.errors import TemplateRejected

__all__ = ["VARIANTS", "Rendered", "check_template", "render_notice", "subject_for"]

TEMPLATE_DIR = Path(__file__).with_name("templates")
VARIANTS = ("text", "html")
_SUFFIX = {"text": "txt", "html": "html"}
_CUSTOM_NAME = "<custom template>"

# Attribute and filter names a notice template has no reason to touch.
_UNSAFE_ATTRS = {"format", "format_map", "mro", "gi_frame", "gi_code", "cr_frame", "f_globals",
                 "func_globals", "tb_frame"}
_UNSAFE_FILTERS = {"attr"}
_UNSAFE_NAMES = {"self", "lipsum", "cycler", "joiner", "namespace", "range", "dict"}


def _env(autoescape: bool) -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        loader=FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=autoescape,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


_ENVS = {"text": _env(False), "html": _env(True)}


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


def subject_for(content: NoticeContent | Sequence[NoticeContent]) -> str:
    """A one-line subject (safe for an email header) naming every part's
    instrument and the total number of items."""
    parts = [content] if isinstance(content, NoticeContent) else list(content)
    n = sum(len(p.items) for p in parts)
    names = [INSTRUMENTS[p.law] for p in parts]
    # "... and trademark infringement complaint", but never lower-case "DMCA".
    label = " and ".join([names[0], *(x[0].lower() + x[1:] if x[1:2].islower() else x for x in names[1:])])
    return clean_inline(f"{label}: {n} item{'s' if n != 1 else ''} on {parts[0].host_domain}", 300)


@overload
def render_notice(content: NoticeContent, custom: Mapping[str, str] | None = None) -> Rendered: ...
@overload
def render_notice(content: Sequence[NoticeContent],
                  custom: Mapping[str, Mapping[str, str]] | None = None) -> Rendered: ...
def render_notice(content: NoticeContent | Sequence[NoticeContent],
                  custom: Mapping[str, str] | Mapping[str, Mapping[str, str]] | None = None) -> Rendered:
    """Render both variants of one notice.

    ``content`` is one NoticeContent, with ``custom`` mapping a variant to the
    owner's source for it; or the notice's parts (one per law, see
    :func:`notices.drafting.content_for_notice`), with ``custom`` mapping a law
    to such a dict. Several parts are each rendered with their own law's
    template, one after the other, each opened by its
    :func:`~notices.content.part_marker` line (a heading in the HTML), so every
    part stays a complete notice by itself.

    Raises TemplateRejected if a custom template fails to render."""
    if isinstance(content, NoticeContent):
        return _render_one(content, cast("Mapping[str, str] | None", custom))
    parts = list(content)
    if not parts:
        raise TemplateRejected("a notice needs at least one part to render")
    sets = cast("Mapping[str, Mapping[str, str]]", custom or {})
    if len(parts) == 1:
        return _render_one(parts[0], sets.get(parts[0].law))
    total = len(parts)
    texts: list[str] = []
    bodies: list[str] = []
    styles: list[str] = []
    for number, part in enumerate(parts, 1):
        one = _render_one(part, sets.get(part.law))
        marker = part_marker(number, total, part.law)
        texts.append(f"{marker}\n\n{one.text.strip()}\n")
        head = _HEAD.search(one.html)
        styles += _STYLE.findall(head.group(0)) if head else []
        bodies.append(f'<section class="notice-part">\n<h1>{escape(marker)}</h1>\n{_body_of(one.html).strip()}\n'
                      "</section>")
    subject = subject_for(parts)
    html = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{escape(subject)}</title>{''.join(styles)}</head>\n<body>\n"
            + "\n<hr>\n".join(bodies) + "\n</body></html>\n")
    return Rendered(subject, "\n".join(texts), html)


_HEAD = re.compile(r"<head\b.*?</head\s*>", re.IGNORECASE | re.DOTALL)
_STYLE = re.compile(r"<style\b.*?</style\s*>", re.IGNORECASE | re.DOTALL)
_BODY = re.compile(r"<body\b[^>]*>(.*?)</body\s*>", re.IGNORECASE | re.DOTALL)
_DOCUMENT_TAGS = re.compile(r"<!DOCTYPE[^>]*>|</?html\b[^>]*>|</?body\b[^>]*>", re.IGNORECASE)


def _body_of(html: str) -> str:
    """What a rendered HTML document shows: its body, or the fragment without head."""
    found = _BODY.search(html)
    if found:
        return found.group(1)
    return _DOCUMENT_TAGS.sub("", _HEAD.sub("", html))


def _render_one(content: NoticeContent, custom: Mapping[str, str] | None) -> Rendered:
    if content.law not in LAWS:
        raise TemplateRejected(f"no template for law {content.law!r}")
    variables = content.template_vars()
    out: dict[str, str] = {}
    for variant in VARIANTS:
        env = _ENVS[variant]
        source = (custom or {}).get(variant)
        if source:
            out[variant] = _render_custom(env, source, variables)
        else:
            out[variant] = env.get_template(f"{content.law}.{_SUFFIX[variant]}.j2").render(variables)
    return Rendered(subject_for(content), out["text"], out["html"])


def check_template(law: str, variant: str, source: str) -> None:
    """Accept ``source`` as an owner's ``variant`` template for ``law`` or raise TemplateRejected.

    The template is parsed, scanned for unsafe constructs, rendered with
    sample facts, and the output validated for the law's required elements."""
    from notices.validate import missing_elements

    if law not in LAWS:
        raise TemplateRejected(f"unknown law {law!r}; expected one of {', '.join(LAWS)}")
    if variant not in VARIANTS:
        raise TemplateRejected(f"unknown variant {variant!r}; expected text or html")
    env = _ENVS[variant]
    try:
        tree = env.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateRejected(f"syntax error: {exc.message}", exc.lineno) from None
    _scan(tree)
    content = sample_content(law)
    rendered = _render_custom(env, source, content.template_vars())
    text, html = (rendered, None) if variant == "text" else (None, rendered)
    missing = missing_elements(content, text=text, html=html)
    if missing:
        raise TemplateRejected("the rendered notice lacks required elements: " + "; ".join(missing))


def _scan(tree: nodes.Template) -> None:
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Name, nodes.Extends,
                               nodes.Include, nodes.Import, nodes.FromImport)):
        line = getattr(node, "lineno", None)
        if isinstance(node, (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
            raise TemplateRejected("unsafe construct: a notice template cannot load other templates", line)
        if isinstance(node, nodes.Getattr):
            attr = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(
                node.arg.value, str):
            attr = node.arg.value
        elif isinstance(node, nodes.Filter):
            if node.name in _UNSAFE_FILTERS:
                raise TemplateRejected(f"unsafe construct: the {node.name!r} filter is not allowed", line)
            for kw in node.kwargs:
                if isinstance(kw.value, nodes.Const) and str(kw.value.value).startswith("_"):
                    raise TemplateRejected(f"unsafe construct: private attribute {kw.value.value!r}", line)
            continue
        elif isinstance(node, nodes.Name):
            if node.name in _UNSAFE_NAMES or node.name.startswith("_"):
                raise TemplateRejected(f"unsafe construct: {node.name!r} is not available in notices", line)
            continue
        else:
            continue
        if attr.startswith("_") or attr in _UNSAFE_ATTRS:
            raise TemplateRejected(f"unsafe construct: access to {attr!r}", line)


def _render_custom(env: ImmutableSandboxedEnvironment, source: str, variables: dict[str, object]) -> str:
    try:
        template = env.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateRejected(f"syntax error: {exc.message}", exc.lineno) from None
    try:
        return template.render(variables)
    except SecurityError as exc:
        raise TemplateRejected(f"unsafe construct: {exc}", _template_line(exc.__traceback__)) from None
    except TemplateError as exc:
        raise TemplateRejected(f"cannot render: {exc}", _template_line(exc.__traceback__)) from None
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
        raise TemplateRejected(f"cannot render: {type(exc).__name__}: {exc}",
                               _template_line(exc.__traceback__)) from None


def _template_line(tb: TracebackType | None) -> int | None:
    """The template line of the innermost template frame (Jinja rewrites tracebacks so
    template frames carry template line numbers)."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
