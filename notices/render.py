"""Rendering notices from Jinja2 templates in a sandbox.

Bundled templates live in ``notices/templates`` as ``<law>.txt.j2`` (plain
text) and ``<law>.html.j2`` (HTML, autoescaped). Owners may replace either
variant with their own source; :func:`check_template` is the gate such a
template must pass before it is stored: it must parse, must not use a
construct the sandbox forbids (private attributes, loading other templates,
string formatting), must render the sample facts within the render budget,
an HTML one may use only the safe subset of :mod:`notices.sanitise`, and the
result must carry every element the law requires (see :mod:`notices.validate`).
Each rejection names the line it comes from when there is one.

Owners' templates render in :class:`notices.budget.BudgetedEnvironment`
(Jinja's immutable sandbox, every render bounded in steps, output, time and
depth), the bundled ones in the plain immutable sandbox (they are ours, and
the instrumentation costs about five times the render time); both with
:class:`~jinja2.StrictUndefined`: a template can read the facts it is given and
nothing else. Passing the gate is not enough: every render of an owner's
template, at draft time on real facts too, is scanned and bounded again, and
its HTML is rebuilt by :func:`notices.sanitise.safe_html`. The bundled HTML
escapes every fact; it too goes through ``safe_html`` wherever a notice is
shown to the reviewer, sent or bundled, so those three are the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from html import escape
from pathlib import Path
from types import TracebackType
from typing import cast, overload

from jinja2 import FileSystemLoader, StrictUndefined, Template, TemplateError, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from notices.budget import BudgetedEnvironment, OverBudget, metered
from notices.content import (
    INSTRUMENTS,
    LAWS,
    NoticeContent,
    clean_inline,
    part_marker,
    sample_content,
)
from notices.errors import TemplateRejected
from notices.sanitise import body_of, disallowed_markup, html_document, safe_html

__all__ = ["VARIANTS", "Rendered", "check_template", "render_notice", "subject_for"]

TEMPLATE_DIR = Path(__file__).with_name("templates")
VARIANTS = ("text", "html")
_SUFFIX = {"text": "txt", "html": "html"}
_CUSTOM_NAME = "<custom template>"
# A notice template is a page or two of wording; a bigger one is not a notice.
MAX_SOURCE_CHARS = 100_000

# Attribute and filter names a notice template has no reason to touch.
_UNSAFE_ATTRS = {"format", "format_map", "mro", "gi_frame", "gi_code", "cr_frame", "f_globals",
                 "func_globals", "tb_frame"}
_UNSAFE_FILTERS = {"attr"}
_UNSAFE_NAMES = {"self", "lipsum", "cycler", "joiner", "namespace", "range", "dict"}


def _env(autoescape: bool, budgeted: bool) -> ImmutableSandboxedEnvironment:
    cls = BudgetedEnvironment if budgeted else ImmutableSandboxedEnvironment
    return cls(
        loader=FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=autoescape,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


_ENVS = {"text": _env(False, budgeted=False), "html": _env(True, budgeted=False)}
_CUSTOM_ENVS = {"text": _env(False, budgeted=True), "html": _env(True, budgeted=True)}


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
    for number, part in enumerate(parts, 1):
        one = _render_one(part, sets.get(part.law))
        marker = part_marker(number, total, part.law)
        texts.append(f"{marker}\n\n{one.text.strip()}\n")
        bodies.append(f'<section class="notice-part">\n<h1>{escape(marker)}</h1>\n{body_of(one.html).strip()}\n'
                      "</section>")
    subject = subject_for(parts)
    return Rendered(subject, "\n".join(texts), html_document(subject, "\n<hr>\n".join(bodies)))


def _render_one(content: NoticeContent, custom: Mapping[str, str] | None) -> Rendered:
    if content.law not in LAWS:
        raise TemplateRejected(f"no template for law {content.law!r}")
    variables = content.template_vars()
    out: dict[str, str] = {}
    for variant in VARIANTS:
        source = (custom or {}).get(variant)
        if source:
            rendered = _render_custom(_CUSTOM_ENVS[variant], source, variables)
            out[variant] = safe_html(rendered) if variant == "html" else rendered
        else:
            out[variant] = _ENVS[variant].get_template(f"{content.law}.{_SUFFIX[variant]}.j2").render(variables)
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
    env = _CUSTOM_ENVS[variant]
    content = sample_content(law)
    rendered = _render_custom(env, source, content.template_vars())
    if variant == "html":
        extra = disallowed_markup(rendered)
        if extra:
            raise TemplateRejected("the HTML uses " + ", ".join(extra) + "; a notice's HTML may use only text "
                                   "markup (headings, paragraphs, lists, tables, emphasis and http, https or "
                                   "mailto links), so that the reviewer sees exactly what is sent")
    text, html = (rendered, None) if variant == "text" else (None, safe_html(rendered))
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


@lru_cache(maxsize=64)
def _compiled(env: ImmutableSandboxedEnvironment, source: str) -> Template:
    """An owner's source, size-checked, scanned and compiled. Cached: drafting
    re-renders a notice on every item it gains; a rejection is not cached."""
    if len(source) > MAX_SOURCE_CHARS:
        raise TemplateRejected(f"the template is {len(source)} characters long; the limit is {MAX_SOURCE_CHARS}")
    try:
        tree = env.parse(source)
        _scan(tree)
        return env.template_class.from_code(env, env.compile(tree), env.make_globals(None), None)
    except TemplateSyntaxError as exc:
        raise TemplateRejected(f"syntax error: {exc.message}", exc.lineno) from None
    except (RecursionError, MemoryError, SyntaxError):
        raise TemplateRejected("the template nests its expressions or blocks too deeply to compile") from None


def _render_custom(env: ImmutableSandboxedEnvironment, source: str, variables: dict[str, object]) -> str:
    """Parse, scan, compile and render an owner's template within the render budget.

    Every failure, including running over budget and nesting too deeply for
    Python, is a TemplateRejected naming the template line where known."""
    template = _compiled(env, source)
    try:
        with metered():
            return template.render(variables)
    except OverBudget as exc:
        raise TemplateRejected(f"over budget: {exc}", _template_line(exc.__traceback__)) from None
    except RecursionError as exc:
        raise TemplateRejected("over budget: the template calls itself too deeply",
                               _template_line(exc.__traceback__)) from None
    except MemoryError as exc:
        raise TemplateRejected("over budget: the template ran out of memory",
                               _template_line(exc.__traceback__)) from None
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
