"""A bounded Jinja2 sandbox: every notice render has a budget of steps, output, time and depth.

Jinja's sandbox stops a template from reaching what it should not; it does not
stop one from spending what it should not. :class:`BudgetedEnvironment` does:

- **steps**: every loop iteration, call, operator, attribute lookup and
  output chunk costs one step (:attr:`RenderBudget.steps`);
- **output**: every chunk written, static text included, is counted
  (:attr:`RenderBudget.output_chars`), inside macros and ``{% set %}`` blocks too;
- **time**: a wall-clock deadline (:attr:`RenderBudget.seconds`), checked at
  every step;
- **depth**: calls (macros calling themselves, ``loop(...)`` recursion) nest
  at most :attr:`RenderBudget.depth` deep, long before Python's own limit;
- **values**: no string or list the template builds may exceed
  :attr:`RenderBudget.value_chars`. Operations that build one in a single C call
  (``'x' * n``, ``center``, ``indent``, ``join``, ``replace``, ``%``-formatting
  with a width, ``batch``/``slice`` with a fill value, ``**`` on integers) are
  sized *before* they run; concatenation (``~``) is measured after, which is
  safe because its operands are already bounded.

Jinja folds constant expressions at compile time (``'x' * 10**9`` would be
computed while compiling). Intercepting ``*``, ``**``, ``+`` and ``%``
(:attr:`BudgetedEnvironment.intercepted_binops`) stops Jinja from folding them;
the bounded filters raise before doing any work, so Jinja leaves those calls
for run time too, where they fail with the template line.

Every breach raises :class:`OverBudget`; :func:`notices.render` turns it into a
``TemplateRejected`` that names the line. A budget is armed with
:func:`metered`; outside one, only the size checks apply.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import BuiltinMethodType
from typing import Any

from jinja2 import filters as jinja_filters
from jinja2 import nodes, pass_context, pass_environment, pass_eval_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

__all__ = ["BudgetedEnvironment", "OverBudget", "RenderBudget", "metered"]


class OverBudget(Exception):
    """A render spent more than its budget allows; the message says which part."""


@dataclass(frozen=True)
class RenderBudget:
    """What one render of one template may spend. A notice is a few pages of
    text over at most a few hundred items; these leave ample room for that."""

    steps: int = 200_000
    output_chars: int = 2_000_000
    seconds: float = 2.0
    depth: int = 30
    value_chars: int = 1_000_000
    int_bits: int = 4096


DEFAULT_BUDGET = RenderBudget()


class _Meter:
    def __init__(self, budget: RenderBudget) -> None:
        self.budget = budget
        self.steps = 0
        self.output = 0
        self.depth = 0
        self.ends = time.monotonic() + budget.seconds

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.budget.steps:
            raise OverBudget(f"over the render budget of {self.budget.steps} steps (a loop or recursion too long)")
        if time.monotonic() > self.ends:
            raise OverBudget(f"over the render budget of {self.budget.seconds:g} s")

    def write(self, n: int) -> None:
        self.step()
        self.output += n
        if self.output > self.budget.output_chars:
            raise OverBudget(f"output over the render budget of {self.budget.output_chars} characters")


_METER: ContextVar[_Meter | None] = ContextVar("artwatch_render_meter", default=None)


@contextmanager
def metered(budget: RenderBudget = DEFAULT_BUDGET) -> Iterator[None]:
    """Charge every budgeted operation inside the block to a fresh ``budget``;
    inside an outer block, to the outer one (so a caller can bound several
    renders together, or more tightly)."""
    if _METER.get() is not None:
        yield
        return
    token = _METER.set(_Meter(budget))
    try:
        yield
    finally:
        _METER.reset(token)


def _budget() -> RenderBudget:
    meter = _METER.get()
    return meter.budget if meter is not None else DEFAULT_BUDGET


def _step() -> None:
    meter = _METER.get()
    if meter is not None:
        meter.step()


def _size(n: int, what: str) -> None:
    """Refuse to build a value of ``n`` characters or items."""
    limit = _budget().value_chars
    if n > limit:
        raise OverBudget(f"{what} would build a value of {n} characters or items (the limit is {limit})")


def _int(value: Any, default: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            return int(value)
        except (TypeError, ValueError):
            return default
    return value


# %-conversions with a width or precision: "%*d", "%.*s", "%1000000s".
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[a-zA-Z%]")


def _check_percent(fmt: str, what: str) -> None:
    for width, precision in _PERCENT_SPEC.findall(fmt):
        for n in (width, precision):
            if n == "*":
                raise OverBudget(f"{what}: a '*' width is not allowed in notice templates")
            if n:
                _size(int(n), what)


def _seq_len(value: Any) -> int | None:
    return len(value) if isinstance(value, str | list | tuple) else None


def _deep_size(value: Any, limit: int) -> int:
    """Characters plus items in ``value`` and everything it contains (a list
    holding one big list many times counts it each time, as ``str()`` would
    write it), counting no further than just past ``limit``."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, list | tuple | set | frozenset):
            total += len(item) + 1
            stack.extend(item)
        elif isinstance(item, dict):
            total += len(item) + 1
            for key, val in item.items():
                stack.extend((key, val))
        else:
            total += 1
    return total


def _check_deep(value: Any, what: str) -> None:
    if isinstance(value, list | tuple | set | frozenset | dict):
        limit = _budget().value_chars
        _size(_deep_size(value, limit), what)


def _check_binop(operator: str, left: Any, right: Any) -> None:
    budget = _budget()
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, str | bytes | list | tuple) and isinstance(n, int) and not isinstance(n, bool):
                size = len(seq) if isinstance(seq, str | bytes) else _deep_size(seq, budget.value_chars)
                _size(size * max(n, 0), "'*' (repetition)")
        if isinstance(left, int) and isinstance(right, int) and \
                left.bit_length() + right.bit_length() > budget.int_bits:
            raise OverBudget(f"'*' would build a number over {budget.int_bits} bits")
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1 and \
                right * abs(left).bit_length() > budget.int_bits:
            raise OverBudget(f"'**' would build a number over {budget.int_bits} bits")
    elif operator == "+":
        if _seq_len(left) is not None and _seq_len(right) is not None:
            _size(_deep_size(left, budget.value_chars) + _deep_size(right, budget.value_chars), "'+'")
    elif operator == "%" and isinstance(left, str):
        _check_percent(left, "'%' formatting")


def _check_str_method(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Size a call of a str method that builds its result in one C call; the
    (possibly materialised) arguments to call it with."""
    owner = getattr(method, "__self__", None)
    if not isinstance(owner, str) or not isinstance(method, BuiltinMethodType):
        return args
    name = method.__name__
    if name in ("center", "ljust", "rjust", "zfill") and args:
        _size(_int(args[0]), f"str.{name}")
    elif name == "expandtabs":
        tab = _int(args[0] if args else kwargs.get("tabsize", 8), 8)
        _size(len(owner) + owner.count("\t") * max(tab, 0), "str.expandtabs")
    elif name == "join" and args:
        items = list(_limited(args[0], "str.join"))
        _size(sum(len(str(x)) for x in items) + len(owner) * max(len(items) - 1, 0), "str.join")
        return (items, *args[1:])
    elif name == "replace" and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        count = owner.count(old) if old else len(owner) + 1
        if len(args) > 2 and _int(args[2], -1) >= 0:
            count = min(count, _int(args[2]))
        _size(len(owner) + count * len(new), "str.replace")
    return args


def _limited(values: Iterable[Any], what: str) -> Iterator[Any]:
    """``values``, one step each, refusing more than the value limit."""
    limit = _budget().value_chars
    for n, value in enumerate(values):
        if n >= limit:
            raise OverBudget(f"{what}: more than {limit} items")
        _step()
        yield value


# -- filters: Jinja's own, sized first -------------------------------------


def _center(value: str, width: int = 80) -> str:
    _size(_int(width), "the 'center' filter")
    return jinja_filters.do_center(value, width)


def _indent(s: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    text = str(s)
    w = len(width) if isinstance(width, str) else _int(width)
    _size(len(text) + (text.count("\n") + 1) * max(w, 0), "the 'indent' filter")
    return jinja_filters.do_indent(s, width, first, blank)


def _format(value: str, *args: Any, **kwargs: Any) -> str:
    _check_percent(str(value), "the 'format' filter")
    return jinja_filters.do_format(value, *args, **kwargs)


@pass_eval_context
def _join(eval_ctx: EvalContext, value: Iterable[Any], d: str = "", attribute: str | int | None = None) -> str:
    items = list(_limited(value, "the 'join' filter"))
    # An item's own text is at least as long as any attribute of it.
    _size(sum(len(str(x)) for x in items) + len(str(d)) * max(len(items) - 1, 0), "the 'join' filter")
    return jinja_filters.sync_do_join(eval_ctx, items, d, attribute)


@pass_environment
def _wordwrap(environment: Any, s: str, width: int = 79, break_long_words: bool = True,
              wrapstring: str | None = None, break_on_hyphens: bool = True) -> str:
    text = str(s)
    sep = len(wrapstring) if wrapstring is not None else 1
    _size(len(text) + (len(text) + 1) * sep, "the 'wordwrap' filter")
    return jinja_filters.do_wordwrap(environment, s, width, break_long_words, wrapstring, break_on_hyphens)


@pass_environment
def _truncate(env: Any, s: str, length: int = 255, killwords: bool = False, end: str = "...",
              leeway: int | None = None) -> str:
    _size(min(len(str(s)), max(_int(length), 0)) + len(str(end)), "the 'truncate' filter")
    return jinja_filters.do_truncate(env, s, length, killwords, end, leeway)


@pass_eval_context
def _replace(eval_ctx: EvalContext, s: str, old: str, new: str, count: int | None = None) -> str:
    text, o = str(s), str(old)
    n = text.count(o) if o else len(text) + 1
    if count is not None and _int(count, -1) >= 0:
        n = min(n, _int(count))
    _size(len(text) + n * len(str(new)), "the 'replace' filter")
    return jinja_filters.do_replace(eval_ctx, s, old, new, count)


def _batch(value: Iterable[Any], linecount: int, fill_with: Any = None) -> Iterator[list[Any]]:
    if fill_with is not None:
        _size(_int(linecount), "the 'batch' filter")
    return jinja_filters.do_batch(_limited(value, "the 'batch' filter"), linecount, fill_with)


def _slice(value: Any, slices: int, fill_with: Any = None) -> Iterator[list[Any]]:
    _size(_int(slices), "the 'slice' filter")
    return jinja_filters.sync_do_slice(list(_limited(value, "the 'slice' filter")), slices, fill_with)


# -- internal filters the instrumenting pass inserts ------------------------
# pass_context keeps Jinja from calling them at compile time.


@pass_context
def _aw_loop(context: Context, iterable: Iterable[Any]) -> Iterator[Any]:
    for item in iterable:
        _step()
        yield item


@pass_context
def _aw_out(context: Context, value: Any) -> Any:
    meter = _METER.get()
    n = len(value) if isinstance(value, str) else len(str(value))
    if meter is not None:
        meter.write(n)
    else:
        _size(n, "an output value")
    return value


@pass_context
def _aw_static(context: Context, value: str) -> str:
    meter = _METER.get()
    if meter is not None:
        meter.write(len(value))
    return Markup(value) if context.eval_ctx.autoescape else value


@pass_context
def _aw_value(context: Context, value: Any) -> Any:
    _step()
    if isinstance(value, str):
        _size(len(value), "'~' (concatenation)")
    else:
        _check_deep(value, "a list or dict literal")
    return value


_BOUNDED_FILTERS: dict[str, Callable[..., Any]] = {
    "center": _center, "indent": _indent, "format": _format, "join": _join, "wordwrap": _wordwrap,
    "truncate": _truncate, "replace": _replace, "batch": _batch, "slice": _slice,
    "_aw_loop": _aw_loop, "_aw_out": _aw_out, "_aw_static": _aw_static, "_aw_value": _aw_value,
}


def _wrap(node: nodes.Node, name: str) -> nodes.Filter:
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)


class _Instrument(NodeTransformer):
    """Routes every loop, output chunk and concatenation through the meter."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _wrap(node.iter, "_aw_loop")
        return node

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [
            _wrap(nodes.Const(child.data, lineno=child.lineno), "_aw_static")
            if isinstance(child, nodes.TemplateData) else _wrap(child, "_aw_out")
            for child in node.nodes
        ]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _wrap(node, "_aw_value")

    # A literal may hold many references to one big value; every container a
    # template builds is thereby bounded in what str() of it would write.
    def visit_List(self, node: nodes.List) -> nodes.Node:
        self.generic_visit(node)
        return _wrap(node, "_aw_value")

    def visit_Dict(self, node: nodes.Dict) -> nodes.Node:
        self.generic_visit(node)
        return _wrap(node, "_aw_value")

    def visit_Tuple(self, node: nodes.Tuple) -> nodes.Node:
        self.generic_visit(node)
        return _wrap(node, "_aw_value") if node.ctx == "load" else node  # not an assignment target


class _BudgetCodeGenerator(CodeGenerator):
    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        _Instrument().visit(node)
        super().visit_Template(node, frame)


class BudgetedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with every render charged to the armed :func:`metered` budget."""

    code_generator_class = _BudgetCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%", "//", "/"})
    intercepted_unops = frozenset({"-", "+"})
    # Attributes that build unbounded output (str.format's width) or are no notice's business.
    # translate maps one character to any string: unbounded output in one C call.
    unsafe_attributes = frozenset({"format", "format_map", "translate", "maketrans", "mro", "gi_frame", "gi_code",
                                   "cr_frame", "f_globals", "func_globals", "tb_frame"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters.update(_BOUNDED_FILTERS)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return attr not in self.unsafe_attributes and super().is_safe_attribute(obj, attr, value)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _step()
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call_unop(self, context: Context, operator: str, arg: Any) -> Any:
        _step()
        return super().call_unop(context, operator, arg)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _step()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _step()
        return super().getitem(obj, argument)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        meter = _METER.get()
        args = _check_str_method(__obj, args, kwargs)
        if meter is None:
            return super().call(__context, __obj, *args, **kwargs)
        meter.step()
        meter.depth += 1
        try:
            if meter.depth > meter.budget.depth:
                raise OverBudget(f"calls nested more than {meter.budget.depth} deep (a macro or loop calling "
                                 "itself without end?)")
            return super().call(__context, __obj, *args, **kwargs)
        finally:
            meter.depth -= 1
