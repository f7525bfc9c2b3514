"""The bounded sandbox campaign templates run in: no value, output or render grows without limit."""

from __future__ import annotations

import contextlib
import functools
import re
import signal
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from types import BuiltinMethodType, FrameType
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup, escape

# an email is read in an inbox: Gmail clips a message at 102 KB, so a million characters is far
# past any real campaign, and small enough that building and checking it takes a blink
MAX_VALUE_CHARS = 1_000_000
MAX_OUTPUT_CHARS = 1_000_000
# all the values one render builds together: many values each under the limit (a list of
# big strings mapped through a filter) must not add up to gigabytes either
MAX_BUILT_CHARS = 20 * MAX_VALUE_CHARS
# a campaign renders in milliseconds; seconds mean a runaway loop. Wall-clock, generous for a
# loaded machine, and short enough that `campaign check` answers while the marketer waits
MAX_RENDER_SECONDS = 5.0
# a power whose result needs more bits than this is no number a newsletter shows; Python would
# compute it in C without ever looking at the clock
MAX_POWER_BITS = 64_000

_DIGITS = re.compile(r"\d+")
# the width and precision of a %-format, and the spec after the colon of a {}-format
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?")
_BRACE_SPEC = re.compile(r"\{[^{}:]*:((?:[^{}]|\{[^{}]*\})*)\}")
# str methods whose result can be far longer than the string and their arguments
_GROWING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "join", "replace",
                              "format", "format_map", "translate"})
# filters that pass a collection's items around without writing the collection out as text;
# every other filter may turn its arguments into text, so their written-out size is checked first
_STRUCTURAL_FILTERS = frozenset({
    "attr", "batch", "count", "d", "default", "dictsort", "first", "groupby", "items", "last", "length",
    "list", "map", "max", "min", "random", "reject", "rejectattr", "reverse", "select", "selectattr",
    "slice", "sort", "sum", "unique",
})
# a JSON indent is a few spaces; json.dumps writes it in C, out of reach of the clock, once per
# line times the depth, so a big one is gigabytes before any limit can look at the result
MAX_JSON_INDENT = 16
# the most characters one string character can become when written out: `\u00e9` in JSON
_ESCAPE_GROWTH = 6
_local = threading.local()


# around each value a template writes out while marking_outputs() is on; no escaping produces them
OUTPUT_OPEN = "\x02"
OUTPUT_CLOSE = "\x03"


@contextlib.contextmanager
def marking_outputs() -> Iterator[None]:
    """Within the block, every value an autoescaped template writes out comes escaped between the markers."""
    _local.marking = True
    try:
        yield
    finally:
        _local.marking = False


class RenderTimeout(BaseException):
    """Raised into a render that ran past MAX_RENDER_SECONDS.

    A BaseException, so that no `except Exception` inside a filter swallows it.
    """


def _refuse(what: str) -> SecurityError:
    return SecurityError(f"{what} would be longer than {MAX_VALUE_CHARS:,} characters; "
                         "the template builds a runaway value")


def _size(value: Any) -> int:
    """The length that counts against the limits: characters of a string, items of a collection."""
    if isinstance(value, str | bytes | list | tuple | dict | set | frozenset):
        return len(value)
    return 0


def check_size(value: Any, what: str = "a value") -> Any:
    """The value itself when it is within the limits; raises SecurityError otherwise."""
    size = _size(value)
    if size > MAX_VALUE_CHARS:
        raise _refuse(what)
    if size:
        _local.built = getattr(_local, "built", 0) + size
        if _local.built > MAX_BUILT_CHARS:
            raise SecurityError(f"the template builds more than {MAX_BUILT_CHARS:,} characters in all; "
                                "it builds runaway values")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_POWER_BITS:
        raise SecurityError(f"a number would have more than {MAX_POWER_BITS:,} bits; "
                            "the template builds a runaway value")
    return value


def _written_size(value: Any, indent: int = 0, limit: int = MAX_VALUE_CHARS) -> int:
    """An upper bound on the characters of `str(value)` or its JSON, indented by `indent` per level.

    A list can hold the same big list a million times over at the cost of a million references;
    Python writes such a value out in C, where neither the clock nor the size checks reach it.
    The walk visits each distinct collection once and stops as soon as those alone, each written
    once, pass `limit`: it costs a fraction of a second however the value was built. Returns a
    number past `limit` then. Raises SecurityError for a collection that contains itself.
    """
    # per distinct collection: (characters, nodes, depth) of its written-out form
    known: dict[int, tuple[int, int, int]] = {}
    open_ids: set[int] = set()
    # every distinct collection is written at least once, each item with a separator
    least = 0
    stack: list[tuple[Any, list[Any] | None]] = [(value, None)]
    while stack:
        item, children = stack.pop()
        key = id(item)
        if children is not None:
            chars, nodes, depth = 2, 1, 1
            for child in children:
                child_chars, child_nodes, child_depth = known.get(id(child)) or (_leaf_size(child), 1, 0)
                chars, nodes, depth = chars + child_chars + 2, nodes + child_nodes, max(depth, child_depth + 1)
            known[key] = (chars, nodes, depth)
            open_ids.discard(key)
            continue
        if key in known:
            continue
        if key in open_ids:
            raise SecurityError("a value contains itself; the template builds a runaway value")
        found = _children(item)
        if found is None:
            continue
        least += 2 + 3 * len(found)
        if least > limit:
            return least
        open_ids.add(key)
        stack.append((item, found))
        stack.extend((child, None) for child in found if _is_collection(child) and id(child) not in known)
    chars, nodes, depth = known.get(id(value)) or (_leaf_size(value), 1, 0)
    return chars + nodes * (indent * depth + 1) if indent else chars


def _is_collection(value: Any) -> bool:
    return isinstance(value, Mapping | list | tuple | set | frozenset | jinja2.utils.Namespace)


def _children(value: Any) -> list[Any] | None:
    """The items a collection writes out (keys and values of a mapping), or None for a single value."""
    if isinstance(value, str | bytes):
        return None
    if isinstance(value, Mapping):
        return [part for pair in value.items() for part in pair]
    if isinstance(value, list | tuple | set | frozenset):
        return list(value)
    if isinstance(value, jinja2.utils.Namespace):
        return _children(getattr(value, "_Namespace__attrs", {}))
    return None


def _leaf_size(value: Any) -> int:
    if isinstance(value, str | bytes):
        return len(value) * _ESCAPE_GROWTH + 2
    if _is_count(value):
        return int(value.bit_length()) // 3 + 2
    # numbers, None, and the mailer's own objects, whose text is short
    return 64


def _check_written(value: Any, what: str, indent: int = 0) -> None:
    if _children(value) is not None and _written_size(value, indent) > MAX_VALUE_CHARS:
        raise _refuse(what)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_repeat(left: Any, right: Any) -> None:
    for sequence, count in ((left, right), (right, left)):
        if _size(sequence) and _is_count(count) and _size(sequence) * count > MAX_VALUE_CHARS:
            raise _refuse("a repeated value")
    if _is_count(left) and _is_count(right) and left.bit_length() + right.bit_length() > MAX_POWER_BITS:
        raise _refuse("a product")


def _check_power(base: Any, exponent: Any) -> None:
    if _is_count(base) and _is_count(exponent) and exponent > 0 and abs(base) > 1 and (
        exponent > MAX_POWER_BITS or abs(base).bit_length() * exponent > MAX_POWER_BITS
    ):
        raise SecurityError(f"a power would have more than {MAX_POWER_BITS:,} bits; "
                            "the template builds a runaway value")


def _check_format(template: Any, arguments: Any) -> None:
    """A %- or {}-format with a width or precision past the limit, written in or passed in."""
    if not isinstance(template, str):
        return
    specs = [m[0] for m in _PERCENT_SPEC.finditer(template)] + _BRACE_SPEC.findall(template)
    if any(len(run) > 9 or int(run) > MAX_VALUE_CHARS for spec in specs for run in _DIGITS.findall(spec)):
        raise _refuse("a formatted value")
    if isinstance(arguments, Mapping):
        values: list[Any] = list(arguments.values())
    elif isinstance(arguments, tuple | list):
        values = list(arguments)
    else:
        values = [arguments]
    _check_written(values, "a formatted value")
    passed_in = any("*" in spec or "{" in spec for spec in specs)
    if passed_in and any(_is_count(v) and abs(v) > MAX_VALUE_CHARS for v in values):
        raise _refuse("a formatted value")


def _check_join(items: Any, separator: Any = "") -> None:
    if isinstance(items, list | tuple):
        total = len(str(separator)) * len(items)
        for item in items:
            total += len(item) if isinstance(item, str) else _written_size(item)
            if total > MAX_VALUE_CHARS:
                raise _refuse("a joined value")


def _check_replace(text: Any, old: Any, new: Any, count: Any = -1) -> None:
    if isinstance(text, str) and isinstance(new, str) and isinstance(old, str):
        hits = text.count(old) if old else len(text) + 1
        if _is_count(count) and count >= 0:
            hits = min(hits, count)
        if len(text) + hits * max(len(new) - len(old), 0) > MAX_VALUE_CHARS:
            raise _refuse("a replaced value")


def _check_translate(text: Any, table: Any) -> None:
    if isinstance(table, Mapping):
        longest = max((len(v) for v in table.values() if isinstance(v, str | bytes)), default=1)
        if len(text) * longest > MAX_VALUE_CHARS:
            raise _refuse("a translated value")


def _check_width(width: Any, text: Any = "") -> None:
    if _is_count(width) and width > MAX_VALUE_CHARS:
        raise _refuse("a padded value")


def _check_method(name: str, owner: str | bytes, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    if name in ("center", "ljust", "rjust", "zfill"):
        _check_width(args[0] if args else kwargs.get("width"))
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
        if _is_count(size) and size * tabs + len(owner) > MAX_VALUE_CHARS:
            raise _refuse("an expanded value")
    elif name == "join" and args:
        _check_join(list(args[0]) if isinstance(args[0], list | tuple) else args[0], owner)
    elif name == "replace" and len(args) >= 2:
        _check_replace(owner, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count", -1))
    elif name in ("format", "format_map"):
        passed = [*args, *kwargs.values()]
        if name == "format_map" and args and isinstance(args[0], Mapping):
            passed = list(args[0].values())
        _check_format(owner, passed)
    elif name == "translate" and args:
        _check_translate(owner, args[0])


def _filter_check(name: str) -> Callable[..., None] | None:
    """The argument check of a built-in filter whose result can be far bigger than its input."""

    def center(value: Any, width: Any = 80, *_: Any, **__: Any) -> None:
        _check_width(width)

    def indent(value: Any, width: Any = 4, *_: Any, **__: Any) -> None:
        if _is_count(width) and width * (str(value).count("\n") + 1) + len(str(value)) > MAX_VALUE_CHARS:
            raise _refuse("an indented value")
        if isinstance(width, str) and len(width) * (str(value).count("\n") + 1) > MAX_VALUE_CHARS:
            raise _refuse("an indented value")

    def format_(value: Any, *args: Any, **kwargs: Any) -> None:
        _check_format(value, [*args, *kwargs.values()])

    def join(value: Any, d: Any = "", *_: Any, **__: Any) -> None:
        _check_join(value, d)

    def replace(value: Any, old: Any = "", new: Any = "", count: Any = None, *_: Any, **__: Any) -> None:
        _check_replace(str(value), old, new, -1 if count is None else count)

    def batch(value: Any, linecount: Any = 1, *_: Any, **__: Any) -> None:
        _check_width(linecount)

    def slice_(value: Any, slices: Any = 1, *_: Any, **__: Any) -> None:
        _check_width(slices)

    def tojson(value: Any, indent: Any = None, *_: Any, **__: Any) -> None:
        if isinstance(indent, str) and len(indent) <= MAX_JSON_INDENT:
            width = len(indent)
        elif indent is None or (_is_count(indent) and 0 <= indent <= MAX_JSON_INDENT):
            width = indent or 0
        else:
            raise SecurityError(f"tojson's indent must be a number from 0 to {MAX_JSON_INDENT} "
                                "or as many spaces")
        if _written_size(value, width) > MAX_VALUE_CHARS:
            raise _refuse("the result of the tojson filter")

    def sum_(value: Any, attribute: Any = None, start: Any = 0, *_: Any, **__: Any) -> None:
        # adding lists in C copies the total so far at every step
        if (isinstance(start, list | tuple) and isinstance(value, list | tuple)
                and len(start) + sum(_size(item) for item in value) > MAX_VALUE_CHARS):
            raise _refuse("the result of the sum filter")

    def wordwrap(value: Any, width: Any = 79, break_long_words: Any = True, wrapstring: Any = None,
                 *_: Any, **__: Any) -> None:
        # at most one line per character, each followed by the wrap string
        if isinstance(wrapstring, str) and len(str(value)) * (len(wrapstring) + 1) > MAX_VALUE_CHARS:
            raise _refuse("a wrapped value")

    checks: dict[str, Callable[..., None]] = {
        "center": center, "indent": indent, "format": format_, "join": join, "replace": replace,
        "batch": batch, "slice": slice_, "tojson": tojson, "sum": sum_, "wordwrap": wordwrap,
    }
    return checks.get(name)


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    check = _filter_check(name)
    # filters that receive the context or environment first take it as their first argument
    skip = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0

    writes_out = name not in _STRUCTURAL_FILTERS and name != "tojson"

    @functools.wraps(function)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        if writes_out:
            for argument in (*args[skip:], *kwargs.values()):
                _check_written(argument, f"the result of the {name} filter")
        if check is not None:
            check(*args[skip:], **kwargs)
        return check_size(function(*args, **kwargs), f"the result of the {name} filter")

    return bounded


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles `a ~ b` through the environment, so a string doubled in a loop is caught."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # each operand is checked before it is turned into text, the whole after it is joined
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        else:
            join = "markup_join" if frame.eval_ctx.autoescape else "str_join"
        self.write(f"environment.bounded_concat({join}((")
        for argument in node.nodes:
            self.write("environment.bounded_text(")
            self.visit(argument, frame)
            self.write("), ")
        self.write(")))")


# the types of a template's values (subscriber data is JSON, the rest is ours): exactly these, no
# subclass, whose attributes are what the type says
_PLAIN_TYPES = frozenset({str, int, float, bool, type(None), dict, list, tuple})
# the owners whose built-in methods the sandbox calls without Jinja's checks (see BoundedSandbox.call)
_CALLED_DIRECTLY = frozenset({str, dict, list, tuple})
# bounded by the attributes these types have: the sandbox asks only once getattr has found one,
# so a name from data (`x|attr(subscriber.name)`) that is no attribute is never kept
_SAFE_ATTRIBUTES: dict[tuple[type, str], bool] = {}
# all a plain dict has for attributes: any other dotted name on one can only be a key
_DICT_ATTRIBUTES = frozenset(dir(dict))


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with every way a template grows a value checked against the limits."""

    # intercepted operators are also never folded at compile time, where no limit would apply
    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        # lipsum(n) writes n paragraphs: placeholder text has no place in a sent campaign
        self.globals.pop("lipsum", None)
        # every `{{ value }}` passes here before it is turned into text
        self.finalize = self.written_text

    def bounded_concat(self, value: Any) -> Any:
        return check_size(value, "a joined value")

    def bounded_text(self, value: Any) -> Any:
        """The value itself when its written-out form is within the limits."""
        _check_written(value, "a written-out value")
        return value

    def written_text(self, value: Any) -> Any:
        """What `{{ value }}` writes: the bounded value, between OUTPUT_OPEN and OUTPUT_CLOSE while marking."""
        if type(value) is not str:  # a string is written as itself: its size was bounded where it was made
            self.bounded_text(value)
        if getattr(_local, "marking", False):
            return Markup(OUTPUT_OPEN) + escape(value) + Markup(OUTPUT_CLOSE)
        return value

    def getattr(self, obj: Any, attribute: str) -> Any:
        # `subscriber.name`, `campaign.list_title`: a key of a plain dict. Jinja first asks the
        # dict for an attribute of that name and takes the key once that fails; a dict has no
        # attributes but its type's, so where the name is none of those the answer is the key
        # without a raised and caught AttributeError, the most of such a lookup's cost
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        kind = type(obj)
        if kind not in _PLAIN_TYPES:
            return bool(super().is_safe_attribute(obj, attr, value))
        # for these the answer depends on the type and the name alone, and its ABC checks cost
        # more than the rest of a small render: asked once per process
        known = _SAFE_ATTRIBUTES.get((kind, attr))
        if known is None:
            known = _SAFE_ATTRIBUTES[kind, attr] = bool(super().is_safe_attribute(obj, attr, value))
        return known

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _check_repeat(left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "%":
            _check_format(left, right)
        elif operator == "+" and _size(left) + _size(right) > MAX_VALUE_CHARS:
            raise _refuse("a sum")
        return check_size(super().call_binop(context, operator, left, right))

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if (type(__obj) is BuiltinMethodType and type(__obj.__self__) in _CALLED_DIRECTLY
                and __obj.__name__ not in _GROWING_METHODS):
            # `subscriber.name.split()`, `attributes.get("city")`: a method of a plain value that
            # cannot grow one. Jinja would look on it for marks a built-in method cannot carry
            # (unsafe, alters_data, pass_context) and find none; getattr has already refused
            # what it must (a mutating method never gets here). A call in a loop or a block
            # carries the names set there, for a function that takes the context: not for these.
            if kwargs:
                kwargs.pop("_loop_vars", None)
                kwargs.pop("_block_vars", None)
            return check_size(__obj(*args, **kwargs), f"the result of {__obj.__name__}")
        target = getattr(__obj, "__wrapped__", __obj)
        owner = getattr(target, "__self__", None)
        name = getattr(target, "__name__", "")
        if isinstance(owner, str | bytes) and name in _GROWING_METHODS:
            _check_method(name, owner, args, kwargs)
        return check_size(super().call(__context, __obj, *args, **kwargs), f"the result of {name or 'a call'}")


# signal.getsignal turns its answer into an enum member where it can, and for a function that
# costs a raised and caught ValueError, half the clock's cost; the function it wraps answers as is
try:
    from _signal import getsignal as _current_handler  # type: ignore[import-not-found]
except ImportError:  # an interpreter without CPython's module
    _current_handler = signal.getsignal


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    if getattr(_local, "armed", False):
        raise RenderTimeout


@contextlib.contextmanager
def render_clock(seconds: float = MAX_RENDER_SECONDS) -> Iterator[None]:
    """Raises RenderTimeout into the block once it has run `seconds`.

    A timer signal rather than a child process: it costs two system calls per render, where
    a process per message would cost more than the message. Every render (the gate, a
    preview, the sender and its render helpers) runs in a main thread, where signals land;
    elsewhere the block runs unbounded in time but the size limits still hold. The handler is
    set at the first render and stays (set again should anything replace it): nothing else in
    the mailer uses SIGALRM, setting and restoring it per message cost more than the timer, and
    outside a render it ignores the signal.
    """
    if threading.current_thread() is not threading.main_thread() or getattr(_local, "armed", False):
        yield
        return
    if _current_handler(signal.SIGALRM) is not _on_alarm:
        signal.signal(signal.SIGALRM, _on_alarm)
    _local.armed = True
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        yield
    finally:
        # disarmed first: an alarm that lands in between is then ignored, where raising it here
        # would leave the clock armed for good and every later render without a time limit
        _local.armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)


def render_bounded(template: jinja2.Template, context: Mapping[str, Any]) -> str:
    """Render within MAX_RENDER_SECONDS and MAX_OUTPUT_CHARS.

    Raises RenderTimeout, SecurityError for output past the limit, and what rendering raises.
    """
    if getattr(_local, "armed", False):
        return _render_within_size(template, context)  # within the clock the caller set (Composer.render)
    with render_clock():
        return _render_within_size(template, context)


def _render_within_size(template: jinja2.Template, context: Mapping[str, Any]) -> str:
    chunks: list[str] = []
    size = 0
    _local.built = 0
    for chunk in _generate(template, context):
        size += len(chunk)
        if size > MAX_OUTPUT_CHARS:
            raise SecurityError(f"the rendered text would be longer than {MAX_OUTPUT_CHARS:,} "
                                "characters; the template writes runaway output")
        chunks.append(chunk)
    return "".join(chunks)


def _generate(template: jinja2.Template, context: Mapping[str, Any]) -> Iterator[str]:
    """template.generate(context), without its two copies of the values and its walk of the globals.

    Jinja keeps a template's globals in a ChainMap, which is slow to walk, and walks it twice per
    render; for a campaign's small templates that cost about as much as the rendering itself."""
    globals_ = _FLAT_GLOBALS.get(template)
    if globals_ is None:
        globals_ = _FLAT_GLOBALS[template] = dict(template.globals)
    environment = template.environment
    ctx = environment.context_class(environment, {**globals_, **context}, template.name, template.blocks,
                                    globals=globals_)
    try:
        yield from template.root_render_func(ctx)
    except Exception:
        yield environment.handle_exception()


# each template's globals as a plain dict; a template's globals are set when it is compiled
_FLAT_GLOBALS: weakref.WeakKeyDictionary[jinja2.Template, dict[str, Any]] = weakref.WeakKeyDictionary()
