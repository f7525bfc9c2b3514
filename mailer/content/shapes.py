"""A personal HTML template contained once per shape, each recipient's values filled in as text.

The shape of a rendering is its text with every value the template wrote out taken away (see
sandbox.marking_outputs): recipients who take the same branches share it. The shape is contained
once with a marker in each value's place; a recipient's contained HTML is then that result with
their values in the markers' places, escaped as the HTML serializer escapes them. That holds only
where a value cannot change how the HTML parses, so a value must be plain text (no markup, no
control characters, not blank), sit in text or in a quoted attribute value the
containment does not rewrite, and not follow an opening '<' or '&'. Anything else is contained
as usual by the caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailer.content.containment import ContainedHtml, contain_html
from mailer.content.lengths import SIZE_ATTRIBUTES
from mailer.content.sandbox import OUTPUT_CLOSE, OUTPUT_OPEN
from mailer.errors import TemplateError

_REGION = re.compile(f"{OUTPUT_OPEN}([^{OUTPUT_OPEN}{OUTPUT_CLOSE}]*){OUTPUT_CLOSE}")
# the blank in a marker breaks it where a blank in a value would end an unquoted attribute value
_MARK = "\x01{} \x01"
_WHOLE_MARK = "\x01{}\x01"
_MARK_RE = re.compile("\x01([0-9]+) ?\x01")
_RESERVED = re.compile(f"[\x01{OUTPUT_OPEN}{OUTPUT_CLOSE}]")
# what markupsafe's escape makes of plain text: no control characters, markup only as these references
_PLAIN = re.compile(r"(?:[^\x00-\x1f\x7f-\x9f<>&\"'\ud800-\udfff]|&(?:amp|lt|gt|#34|#39);)+")
# a value right after these could become a tag, a comment or a character reference
_OPENS_MARKUP = re.compile(r"(?:<[!/?]?|&[#0-9A-Za-z]*)\Z")
# a serialized tag: attribute values are double-quoted, and hold no '"' or '>' of their own
_TAG = re.compile(r'<[^>"]*(?:"[^"]*"[^>"]*)*>')
_ATTRIBUTE = re.compile(r'\s([^\s="/>]+)="([^"]*)"')
# attributes the containment rewrites from their value: a value there is contained per recipient
_REWRITTEN = frozenset({"style", "size"}) | SIZE_ATTRIBUTES
_STYLE_ELEMENT = re.compile(r"<style", re.IGNORECASE)
MAX_SHAPES = 32  # branches a campaign takes; past that, the rest are contained per recipient
GIVE_UP_AFTER = 20  # renderings that fit no shape, none before them did: the template is not one for this


@dataclass(frozen=True)
class Shape:
    """The contained shape split at its markers; each slot is (value index, inside an attribute)."""

    pieces: tuple[str, ...]
    slots: tuple[tuple[int, bool], ...]
    css: str
    left_out: tuple[str, ...]

    def fill_escaped(self, values: list[str]) -> ContainedHtml | None:
        """The shape with these values as the template wrote them (escaped); None when one is not plain
        text, or starts with a blank: before <body> and in a <colgroup> the parser drops or parts those."""
        out = [self.pieces[0]]
        for (index, in_attribute), piece in zip(self.slots, self.pieces[1:], strict=True):
            text = _filled(values[index], in_attribute)
            if text is None:
                return None
            out.append(text)
            out.append(piece)
        return ContainedHtml(body="".join(out), css=self.css, left_out=self.left_out)


def serialized(text: str, *, attribute: bool) -> str:
    """Text as the HTML serializer writes it in a text node or a double-quoted attribute value."""
    text = text.replace("&", "&amp;").replace("\xa0", "&nbsp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace('"', "&quot;") if attribute else text


def _filled(value: str, in_attribute: bool) -> str | None:
    """An escaped value as it goes into a slot of a shape, or None when it may not (see fill_escaped).

    Most values recur from message to message (the list's title, a first name, a city): each
    short one is checked and written once per process, in a table that starts again when full.
    A long value (a template may build one of a million characters per recipient) is never kept."""
    key = (value, in_attribute)
    try:
        return _FILLED[key]
    except KeyError:
        pass
    plain = not value.startswith(" ") and _PLAIN.fullmatch(value) is not None
    text = serialized(_unescaped(value), attribute=in_attribute) if plain else None
    if len(value) <= MAX_FILLED_CHARS:
        if len(_FILLED) >= MAX_FILLED:
            _FILLED.clear()
        _FILLED[key] = text
    return text


MAX_FILLED = 4096
MAX_FILLED_CHARS = 200  # so the table holds at most about 4096 x 200 x 2 characters
_FILLED: dict[tuple[str, bool], str | None] = {}


def _unescaped(value: str) -> str:
    if "&" not in value:
        return value
    return (value.replace("&#39;", "'").replace("&#34;", '"').replace("&lt;", "<").replace("&gt;", ">")
            .replace("&amp;", "&"))


class ShapeCache:
    """One campaign's contained shapes; `contained` answers None where the recipient's HTML must be contained."""

    def __init__(self) -> None:
        self._shapes: dict[str, Shape | None] = {}
        # the shapes found so far with the pieces between their values, to match unmarked renderings
        self._known: list[tuple[tuple[str, ...], Shape]] = []
        self._misses = 0
        self._hits = 0
        self.gave_up = False

    def contained(self, marked: str, raw: str) -> ContainedHtml | None:
        """The contained HTML for a rendering with its values marked, `raw` the same rendering unmarked."""
        found = self._contained(marked, raw)
        if found is None:
            self._misses += 1
        else:
            self._hits += 1
        self.gave_up = not self._hits and self._misses >= GIVE_UP_AFTER
        return found

    def known(self, raw: str) -> ContainedHtml | None:
        """The contained HTML of an unmarked rendering that is a known shape's pieces with plain values
        between them, or None (then mark it and ask `contained`).

        Which rendering the pieces came from does not matter: a shape holds for any plain values
        between its pieces (see the module's note), so the first split that fits is as good as the
        template's own, and one that does not fit costs only the marked rendering it saves."""
        for static, shape in self._known:
            values = values_between(raw, static)
            found = shape.fill_escaped(values) if values is not None else None
            if found is not None:
                self._hits += 1
                return found
        return None

    def _contained(self, marked: str, raw: str) -> ContainedHtml | None:
        # marking must not have changed what the template wrote (say, the length of a captured block)
        if _REGION.sub(r"\1", marked) != raw:
            return None
        pieces = _REGION.split(marked)
        static, values = pieces[0::2], pieces[1::2]
        key = OUTPUT_OPEN.join(static)
        if key not in self._shapes:
            if len(self._shapes) >= MAX_SHAPES:
                return None
            self._shapes[key] = shape_of(static)
            if (new := self._shapes[key]) is not None:
                self._known.append((tuple(static), new))
        shape = self._shapes[key]
        return shape.fill_escaped(values) if shape is not None else None


def values_between(raw: str, static: tuple[str, ...]) -> list[str] | None:
    """`raw` split into the values between these pieces, each piece found at its first place after
    the value before it; None when the pieces are not all there in order."""
    first, last = static[0], static[-1]
    if len(static) == 1:
        return [] if raw == first else None
    end = len(raw) - len(last)
    if end < len(first) or not raw.startswith(first) or not raw.endswith(last):
        return None
    values = []
    position = len(first)
    for piece in static[1:-1]:
        found = raw.find(piece, position, end)
        if found < 0:
            return None
        values.append(raw[position:found])
        position = found + len(piece)
    values.append(raw[position:end])
    return values


def shape_of(static: list[str], *, unquoted_whole: bool = False) -> Shape | None:
    """The contained shape of a rendering whose written-out values came between these pieces, if values can be filled in.

    `unquoted_whole`: a value in an unquoted attribute value stays that one value, blanks and all,
    where a parser would end it at a blank (and take the rest for more attributes).
    """
    if any(_OPENS_MARKUP.search(piece) for piece in static[:-1]) or any(_RESERVED.search(p) for p in static):
        return None
    mark = _WHOLE_MARK if unquoted_whole else _MARK
    probe = "".join(piece + mark.format(index) for index, piece in enumerate(static[:-1])) + static[-1]
    try:
        contained = contain_html(probe)
    except TemplateError:
        return None
    if _MARK_RE.search(contained.css):
        return None
    slots = _slots(contained.body, attributes_allowed=not _STYLE_ELEMENT.search(probe))
    if slots is None or sorted(index for index, _ in slots) != list(range(len(static) - 1)):
        return None
    return Shape(pieces=tuple(_MARK_RE.split(contained.body)[0::2]), slots=tuple(slots),
                  css=contained.css, left_out=contained.left_out)


def _slots(body: str, *, attributes_allowed: bool) -> list[tuple[int, bool]] | None:
    """Each marker in the serialized body in order, and whether it is in an attribute; None where one may not be."""
    slots: list[tuple[int, bool]] = []
    position = 0
    for tag in _TAG.finditer(body):
        slots += [(int(index), False) for index in _MARK_RE.findall(body, position, tag.start())]
        position = tag.end()
        in_tag = _MARK_RE.findall(tag[0])
        if not in_tag:
            continue
        # a value in an attribute can pick what a selector matches; in its name or the tag's, what it is
        in_values: list[tuple[int, bool]] = []
        for name, value in _ATTRIBUTE.findall(tag[0]):
            marks = _MARK_RE.findall(value)
            if marks and (not attributes_allowed or name.lower() in _REWRITTEN):
                return None
            in_values += [(int(index), True) for index in marks]
        if len(in_values) != len(in_tag):
            return None
        slots += in_values
    slots += [(int(index), False) for index in _MARK_RE.findall(body, position)]
    return slots
