"""Bounds every length a template's HTML and CSS set, so no element can push the footer out of reach.

A browser lays a page out only up to a few tens of millions of px, and a reader scrolls a few
screens: one element set tens of millions of px tall (by its height, margin, padding, border,
line-height, font-size or an HTML size attribute) puts the footer after it beyond both. Each
length is cut to what a real newsletter never exceeds, and the box around the campaign is
capped as well, for lengths that only add up or multiply in the layout.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable

import tinycss2
import tinycss2.ast

# the tallest real newsletter is 20,000-30,000px; no single image, spacer or margin in one
# comes near a third of that
MAX_LENGTH_PX = 10_000
MAX_PERCENT = 1_000
# a unitless line-height or zoom multiplies the font size or everything inside
MAX_FACTOR = 10
# what the box shows of the campaign at most, for lengths that add up or compound (nested
# percentages and font sizes): well past any real newsletter, well inside what a reader reaches
MAX_BOX_HEIGHT_PX = 40_000

_FONT_PX = 16  # the default font size; font-relative lengths are bounded as if at it
_VIEWPORT_PX = 2_000  # a tall screen; viewport and container units are bounded as if on it
_PX_PER_UNIT: dict[str, float] = {
    "px": 1, "pt": 96 / 72, "pc": 16, "in": 96, "cm": 96 / 2.54, "mm": 96 / 25.4, "q": 96 / 101.6,
    **dict.fromkeys(("em", "rem", "ex", "rex", "ch", "rch", "cap", "rcap", "ic", "ric", "lh", "rlh"), _FONT_PX),
    **dict.fromkeys(
        (f"{size}{axis}" for size in ("", "s", "l", "d") for axis in ("vw", "vh", "vi", "vb", "vmin", "vmax")),
        _VIEWPORT_PX / 100,
    ),
    **dict.fromkeys(("cqw", "cqh", "cqi", "cqb", "cqmin", "cqmax"), _VIEWPORT_PX / 100),
}
# these take numbers that scale a length: line-height and zoom directly, font after its '/'
_FACTOR_PROPERTIES = frozenset({"line-height", "zoom"})
# a math function can multiply bounded lengths into an unbounded one, so its result is clamped
_MATH_FUNCTIONS = frozenset({
    "calc", "-webkit-calc", "min", "max", "clamp", "round", "mod", "rem", "abs", "sign", "pow", "sqrt", "hypot",
    "exp", "log",
})
_CLAMP_OPEN = f"clamp(-{MAX_LENGTH_PX}px,"
_CLAMP_CLOSE = f",{MAX_LENGTH_PX}px)"
# HTML attributes a browser reads as px (or % with a '%'); `size` only on <hr>, where it is a height
SIZE_ATTRIBUTES = frozenset({"width", "height", "cellpadding", "cellspacing", "border", "hspace", "vspace"})
_HTML_DIMENSION = re.compile(r"\s*(\d*\.?\d+)\s*(%?)")
# a campaign repeats the same few dozen style attributes in every message: each is parsed once
# per process; longer ones are rare and not worth the memory
_CACHED_STYLE_CHARS = 2_000
_CACHED_STYLES = 4_096


def bound_style(style: str, notes: dict[str, None]) -> str:
    """The declarations of a style attribute with every length bounded; the same string when none is too big."""
    if len(style) > _CACHED_STYLE_CHARS:
        return _bound_style(style, notes)
    bounded, found = _bound_style_cached(style)
    notes.update(dict.fromkeys(found))
    return style if bounded is None else bounded


@functools.lru_cache(maxsize=_CACHED_STYLES)
def _bound_style_cached(style: str) -> tuple[str | None, tuple[str, ...]]:
    """The bounded style (None: unchanged) and the notes it makes, in order."""
    notes: dict[str, None] = {}
    bounded = _bound_style(style, notes)
    return (None if bounded is style else bounded), tuple(notes)


def _bound_style(style: str, notes: dict[str, None]) -> str:
    if not any(char.isdigit() or char == "(" for char in style):
        return style
    declarations = tinycss2.parse_declaration_list(style, skip_comments=True, skip_whitespace=True)
    changed = False
    parts: list[str] = []
    for declaration in declarations:
        if not isinstance(declaration, tinycss2.ast.Declaration):
            # a parse error: the browser skips it the same way, so it is left out here too
            changed = True
            continue
        value = _bound_tokens(declaration.lower_name, declaration.value, notes)
        changed = changed or value is not declaration.value
        important = " !important" if declaration.important else ""
        parts.append(f"{declaration.name}:{tinycss2.serialize(value).strip()}{important}")
    return ";".join(parts) if changed else style


def bound_rule_list(content: Iterable[tinycss2.ast.Node], notes: dict[str, None]) -> str:
    """An @media rule's block with every length in its declarations bounded, serialized."""
    out: list[str] = []
    for rule in tinycss2.parse_rule_list(list(content), skip_comments=True, skip_whitespace=True):
        if isinstance(rule, tinycss2.ast.QualifiedRule):
            body = bound_style(tinycss2.serialize(rule.content), notes)
            out.append(f"{tinycss2.serialize(rule.prelude).strip()}{{{body}}}")
        elif isinstance(rule, tinycss2.ast.AtRule) and rule.content is not None:
            out.append(f"@{rule.at_keyword} {tinycss2.serialize(rule.prelude).strip()}"
                       f"{{{bound_rule_list(rule.content, notes)}}}")
    return "\n".join(out)


def bound_size_attribute(tag: str, name: str, value: str, notes: dict[str, None]) -> str:
    """An HTML size attribute (width, height, cellpadding...) cut to the bound; other attributes as they are."""
    if name not in SIZE_ATTRIBUTES and not (name == "size" and tag == "hr"):
        return value
    match = _HTML_DIMENSION.match(value)
    if match is None:
        return value
    number, percent = float(match.group(1)), match.group(2)
    limit = MAX_PERCENT if percent else MAX_LENGTH_PX
    if number <= limit:
        return value
    bounded = f"{limit}{percent}"
    notes[_note(f'<{tag} {name}="{value.strip()}">', f'{name}="{bounded}"')] = None
    return bounded


def _bound_tokens(
    name: str, tokens: list[tinycss2.ast.Node], notes: dict[str, None], inside_math: bool = False
) -> list[tinycss2.ast.Node]:
    """The tokens with each too-big one bounded: the same list object when nothing changed."""
    out: list[tinycss2.ast.Node] = []
    changed = False
    after_slash = False
    for token in tokens:
        bounded = _bound_token(name, token, after_slash, notes, inside_math)
        changed = changed or bounded is not token
        out.append(bounded)
        if not isinstance(token, tinycss2.ast.WhitespaceToken):
            after_slash = isinstance(token, tinycss2.ast.LiteralToken) and token.value == "/"
    return out if changed else tokens


def _bound_token(
    name: str, token: tinycss2.ast.Node, after_slash: bool, notes: dict[str, None], inside_math: bool
) -> tinycss2.ast.Node:
    if isinstance(token, tinycss2.ast.DimensionToken):
        factor = _PX_PER_UNIT.get(token.lower_unit)
        if factor is None or abs(token.value) * factor <= MAX_LENGTH_PX:
            return token
        limit = _round_down(MAX_LENGTH_PX / factor)
        bounded: tinycss2.ast.Node = tinycss2.ast.DimensionToken(
            token.source_line, token.source_column, math.copysign(limit, token.value), None,
            _number(math.copysign(limit, token.value)), token.unit,
        )
    elif isinstance(token, tinycss2.ast.PercentageToken):
        if abs(token.value) <= MAX_PERCENT:
            return token
        value = math.copysign(MAX_PERCENT, token.value)
        bounded = tinycss2.ast.PercentageToken(token.source_line, token.source_column, value, None, _number(value))
    elif isinstance(token, tinycss2.ast.NumberToken):
        if not (name in _FACTOR_PROPERTIES or (name == "font" and after_slash)):
            return token
        if abs(token.value) <= MAX_FACTOR:
            return token
        value = math.copysign(MAX_FACTOR, token.value)
        bounded = tinycss2.ast.NumberToken(token.source_line, token.source_column, value, None, _number(value))
    elif isinstance(token, tinycss2.ast.FunctionBlock):
        return _bound_function(name, token, notes, inside_math)
    else:
        return token
    notes[_note(f"{name}:{token.serialize()}", bounded.serialize())] = None
    return bounded


def _bound_function(
    name: str, token: tinycss2.ast.FunctionBlock, notes: dict[str, None], inside_math: bool
) -> tinycss2.ast.Node:
    math_function = token.lower_name in _MATH_FUNCTIONS
    already_bound = token.lower_name == "clamp" and _is_bound_clamp(token)
    arguments = _bound_tokens(name, token.arguments, notes, inside_math or math_function)
    function = token
    if arguments is not token.arguments:
        function = tinycss2.ast.FunctionBlock(token.source_line, token.source_column, token.name, arguments)
    if not math_function or inside_math or already_bound or name in _FACTOR_PROPERTIES or name.startswith("--"):
        return function
    # a length computed from numbers has no single value to cut: the browser cuts its result
    # (a result that is not a length makes the declaration invalid, and it is dropped)
    wrapped = tinycss2.parse_one_component_value(f"{_CLAMP_OPEN}{function.serialize()}{_CLAMP_CLOSE}")
    assert isinstance(wrapped, tinycss2.ast.FunctionBlock)
    return wrapped


def _is_bound_clamp(token: tinycss2.ast.FunctionBlock) -> bool:
    """True for the clamp() this module wraps a math function in, so containing twice changes nothing."""
    text: str = token.serialize()
    return text.startswith(_CLAMP_OPEN) and text.endswith(_CLAMP_CLOSE)


def _round_down(value: float) -> float:
    return math.floor(value * 100) / 100


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _note(what: str, bounded: str) -> str:
    return (f"lengths over {MAX_LENGTH_PX:,}px are not allowed in campaign HTML: the template's {what} "
            f"is cut to {bounded}")
