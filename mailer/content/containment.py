"""Keeps a campaign's HTML in its own box: parsed as a browser parses it, its CSS inlined, nothing reaching out.

The footer the system appends sits after that box. Nothing a template writes can wrap it (the
template is parsed on its own into a balanced fragment, so comments and raw-text elements end
where a browser ends them), select it (the template's rules are inlined into its own elements;
what must stay in a <style> may select only inside the box) or paint over it (the box is
closed with the system's inline styles, and attributes acting outside their element are
left out).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import css_inline
import tinycss2
import tinycss2.ast
from selectolax.lexbor import LexborHTMLParser, LexborNode

from mailer.content.lengths import (
    MAX_BOX_HEIGHT_PX,
    bound_rule_list,
    bound_size_attribute,
    bound_style,
)
from mailer.errors import TemplateError

CONTAINER_ID = "hm-content"
# the box around the template: a containing block for fixed and absolute descendants that clips
# their paint, keeps their stacking and blending inside, stops margins from collapsing out and
# takes its width from the layout, not from content that would push the footer sideways, nor
# more height than any newsletter needs, so lengths that only add up cannot push it down out of reach
CONTAINER_STYLE = (
    "position:relative !important;overflow:hidden !important;contain:inline-size paint !important;"
    f"isolation:isolate !important;display:block !important;max-height:{MAX_BOX_HEIGHT_PX}px !important;"
)

# what email clients show of a newsletter; anything else is left out (and the gate says so)
_ELEMENTS = frozenset({
    "a", "abbr", "address", "article", "aside", "b", "bdi", "bdo", "big", "blockquote", "br", "caption",
    "center", "cite", "code", "col", "colgroup", "data", "dd", "del", "details", "dfn", "div", "dl", "dt",
    "em", "figcaption", "figure", "font", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "i",
    "img", "ins", "kbd", "li", "main", "mark", "nav", "ol", "p", "picture", "pre", "q", "rp", "rt", "ruby",
    "s", "samp", "section", "small", "source", "span", "strike", "strong", "sub", "summary", "sup", "table",
    "tbody", "td", "tfoot", "th", "thead", "time", "tr", "tt", "u", "ul", "var", "wbr",
})
# elements left out with their content: scripts, documents of their own, foreign content, forms,
# and raw-text elements whose text no mail client shows
_DROPPED_WITH_CONTENT = frozenset({
    "applet", "audio", "base", "button", "canvas", "datalist", "dialog", "embed", "frame", "frameset",
    "head", "iframe", "input", "link", "math", "meta", "noembed", "noframes", "noscript", "object",
    "option", "optgroup", "param", "plaintext", "portal", "script", "select", "slot", "style", "svg",
    "template", "textarea", "title", "video", "xmp",
})
_ATTRIBUTES = frozenset({
    "abbr", "align", "alt", "background", "bgcolor", "border", "bordercolor", "cellpadding", "cellspacing",
    "cite", "class", "clear", "color", "cols", "colspan", "compact", "datetime", "dir", "face", "frame",
    "headers", "height", "hidden", "href", "hspace", "id", "lang", "media", "name", "noshade", "nowrap",
    "open", "rel", "reversed", "role", "rows", "rowspan", "rules", "scope", "size", "sizes", "span", "src",
    "srcset", "start", "style", "summary", "target", "title", "translate", "type", "valign", "value",
    "vspace", "width",
})
_ATTRIBUTE_PREFIXES = ("aria-", "data-")
# comments and the doctype carry nothing a reader sees; lexbor names those nodes so
_NOT_ELEMENTS = frozenset({"-comment", "!doctype", "-doctype"})
_COMBINATORS = frozenset({"~", "+", ",", "|"})
# HTML tree building slows with the square of the nesting and the inliner's stack ends near
# 20,000 levels; a newsletter has a few thousand tags, nested a few dozen deep (Chromium
# itself flattens past 512)
MAX_TAGS = 10_000
MAX_DEPTH = 512
_START_TAG = re.compile(r"<[A-Za-z]")
# a stylesheet from elsewhere is not the template's to inline or check: refused at `campaign create`
EXTERNAL_LINK = "external stylesheets (<link rel=stylesheet>) are not allowed: put the rules in a <style>"
EXTERNAL_IMPORT = "@import is not allowed in a template's <style>: put the rules in the <style> itself"
EXTERNAL_STYLESHEETS = frozenset({EXTERNAL_LINK, EXTERNAL_IMPORT})


@dataclass(frozen=True)
class ContainedHtml:
    """A template's HTML made safe to put in the box."""

    body: str  # balanced HTML for inside the box, the template's rules inlined
    css: str  # the @media rules kept for the <head>, each selecting only inside the box ('' when none)
    left_out: tuple[str, ...]  # one line per thing the template may not do, for the compliance gate


def contain_html(html: str) -> ContainedHtml:
    """The template's rendered HTML as it goes inside the box.

    Raises TemplateError when it has too many tags or nests them too deep, or its CSS cannot be inlined.
    """
    tags = sum(1 for _ in _START_TAG.finditer(html))
    if tags > MAX_TAGS:
        raise TemplateError(f"the template's HTML has {tags:,} tags; at most {MAX_TAGS:,} are allowed")
    left_out: dict[str, None] = {}
    # parsed in no-quirks mode, as in the layout it goes into: a <table> closes an open <p> alike
    document = LexborHTMLParser("<!DOCTYPE html>" + html)
    if document.root is not None and _deeper_than(document.root, MAX_DEPTH):
        raise TemplateError(f"the template's HTML nests elements more than {MAX_DEPTH} deep")
    inline_css, kept_css = _take_stylesheets(document, left_out)
    if inline_css:
        try:
            inlined = css_inline.inline(
                document.html or "", extra_css=inline_css, inline_style_tags=False, keep_link_tags=False,
                load_remote_stylesheets=False,
            )
        except (css_inline.InlineError, ValueError) as exc:
            raise TemplateError(f"the template's CSS cannot be inlined: {exc}") from None
        document = LexborHTMLParser(inlined)
    body = document.body
    if body is None:
        return ContainedHtml(body="", css=kept_css, left_out=tuple(left_out))
    _clean_children(body, left_out)
    _keep_leading_newlines(body)
    inner = "".join(child.html or "" for child in body.iter(include_text=True))
    wrapper = _wrapper_attributes(body, left_out)
    if wrapper:
        inner = f"<div{wrapper}>{inner}</div>"
    return ContainedHtml(body=inner, css=kept_css, left_out=tuple(left_out))


def _deeper_than(root: LexborNode, limit: int) -> bool:
    stack = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        child = node.child
        while child is not None:
            stack.append((child, depth + 1))
            child = child.next
    return False


def _take_stylesheets(document: LexborHTMLParser, left_out: dict[str, None]) -> tuple[str, str]:
    """Removes every <style> and <link>; returns the rules to inline and the @media rules to keep."""
    inline: list[str] = []
    kept: list[str] = []
    for link in document.css("link"):
        if "stylesheet" in (link.attributes.get("rel") or "").lower():
            left_out[EXTERNAL_LINK] = None
        link.decompose()
    for style in document.css("style"):
        rules = tinycss2.parse_stylesheet(style.text(deep=True), skip_comments=True, skip_whitespace=True)
        style.decompose()
        for rule in rules:
            if isinstance(rule, tinycss2.ast.QualifiedRule):
                inline.append(tinycss2.serialize([rule]))
            elif isinstance(rule, tinycss2.ast.AtRule):
                if _media_rule_problems(rule, left_out):
                    continue
                prelude = tinycss2.serialize(rule.prelude).strip()
                css = f"@{rule.at_keyword} {prelude}{{{bound_rule_list(rule.content or [], left_out)}}}"
                # a '<' could end the <style> the rule is kept in; as an escape it means the same to CSS
                kept.append(css.replace("<", "\\3c "))
    return "\n".join(inline), "\n".join(kept)


def _media_rule_problems(rule: tinycss2.ast.AtRule, left_out: dict[str, None]) -> bool:
    """True (and the reason noted) unless the at-rule is an @media whose rules all select inside the box."""
    keyword = rule.lower_at_keyword
    if keyword == "import":
        left_out[EXTERNAL_IMPORT] = None
        return True
    if keyword != "media":
        left_out[
            f"@{keyword} is not allowed in a template's <style>: only @media rules that select inside #{CONTAINER_ID}"
        ] = None
        return True
    found = False
    for inner in tinycss2.parse_rule_list(rule.content or [], skip_comments=True, skip_whitespace=True):
        if isinstance(inner, tinycss2.ast.AtRule):
            found = _media_rule_problems(inner, left_out) or found
        elif isinstance(inner, tinycss2.ast.QualifiedRule):
            selector = tinycss2.serialize(inner.prelude).strip()
            if not _selects_inside_box(inner.prelude):
                left_out[
                    f"the @media rule '{selector}' must select inside the campaign: start it with '#{CONTAINER_ID} '"
                ] = None
                found = True
            elif _has_nested_rules(inner):
                left_out[f"the @media rule '{selector}' may hold declarations only, no nested rules"] = None
                found = True
    return found


def _has_nested_rules(rule: tinycss2.ast.QualifiedRule) -> bool:
    contents = tinycss2.parse_blocks_contents(rule.content, skip_comments=True, skip_whitespace=True)
    return any(isinstance(item, tinycss2.ast.QualifiedRule | tinycss2.ast.AtRule) for item in contents)


def _selects_inside_box(prelude: Sequence[tinycss2.ast.Node]) -> bool:
    """True when every selector in the list starts `#hm-content ` or `#hm-content >`: only what is inside it."""
    selectors: list[list[tinycss2.ast.Node]] = [[]]
    for token in prelude:
        if isinstance(token, tinycss2.ast.LiteralToken) and token.value == ",":
            selectors.append([])
        elif not isinstance(token, tinycss2.ast.Comment):
            selectors[-1].append(token)
    for selector in selectors:
        tokens = _strip_whitespace(selector)
        if len(tokens) < 3:
            return False
        first, second = tokens[0], tokens[1]
        if not (isinstance(first, tinycss2.ast.HashToken) and first.value == CONTAINER_ID):
            return False
        # `#hm-content.x` or `#hm-content:has()` styles the box itself; `~` and `+` reach its siblings
        if not isinstance(second, tinycss2.ast.WhitespaceToken) and not _is_literal(second, ">"):
            return False
        rest = _strip_whitespace(tokens[1:])
        if _is_literal(rest[0], ">"):
            rest = _strip_whitespace(rest[1:])
        if not rest or any(_is_literal(rest[0], value) for value in _COMBINATORS | {">"}):
            return False
    return True


def _strip_whitespace(tokens: Sequence[tinycss2.ast.Node]) -> list[tinycss2.ast.Node]:
    out = list(tokens)
    while out and isinstance(out[0], tinycss2.ast.WhitespaceToken):
        out.pop(0)
    while out and isinstance(out[-1], tinycss2.ast.WhitespaceToken):
        out.pop()
    return out


def _is_literal(token: tinycss2.ast.Node, value: str) -> bool:
    return isinstance(token, tinycss2.ast.LiteralToken) and token.value == value


def _clean_children(root: LexborNode, left_out: dict[str, None]) -> None:
    """Leaves only allowed elements and attributes under root; iterative, so deep nesting cannot overflow."""
    unwrap: list[LexborNode] = []
    stack = list(_children(root))
    while stack:
        node = stack.pop()
        tag = node.tag or ""
        if tag == "-text":
            continue
        if tag in _NOT_ELEMENTS:
            node.decompose()
            continue
        if tag in _DROPPED_WITH_CONTENT:
            left_out[f"the template's <{tag}> is not allowed in campaign HTML and is left out with its content"] = None
            node.decompose()
            continue
        if tag not in _ELEMENTS:
            left_out[f"the template's <{tag}> tag is not allowed in campaign HTML and is left out"] = None
            unwrap.append(node)
        else:
            _clean_attributes(node, tag, left_out)
        stack.extend(_children(node))
    for node in reversed(unwrap):  # innermost first, each one's children already clean
        node.unwrap(delete_empty=True)


def _keep_leading_newlines(root: LexborNode) -> None:
    """A parser drops a newline right after <pre> or <listing>; one that is the text's own (it came
    after something the parser skipped, or the template wrote two) is doubled, so that the HTML
    written out parses back to the tree that was checked."""
    for node in root.css("pre, listing"):
        first = node.child
        if first is not None and first.tag == "-text" and (first.text_content or "").startswith("\n"):
            first.insert_before("\n")


def _children(node: LexborNode) -> Iterable[LexborNode]:
    return list(node.iter(include_text=True))


def _clean_attributes(node: LexborNode, tag: str, left_out: dict[str, None]) -> None:
    for name, value in list(node.attributes.items()):
        if name in _ATTRIBUTES or name.startswith(_ATTRIBUTE_PREFIXES):
            _bound_attribute(node, tag, name, value or "", left_out)
            continue
        left_out[f"the attribute {name!r} on <{tag}> is not allowed in campaign HTML and is left out"] = None
        del node.attrs[name]


def _bound_attribute(node: LexborNode, tag: str, name: str, value: str, left_out: dict[str, None]) -> None:
    """Cuts a length the attribute sets (in a style or as an HTML size) to what a newsletter needs."""
    bounded = bound_style(value, left_out) if name == "style" else bound_size_attribute(tag, name, value, left_out)
    if bounded != value:
        node.attrs[name] = bounded


def _wrapper_attributes(body: LexborNode, left_out: dict[str, None]) -> str:
    """The template's own <body> attributes (its background, its inlined body rules) for a <div> in the box."""
    attributes = dict(body.attributes)
    style = bound_style(attributes.pop("style", None) or "", left_out)
    color = attributes.pop("bgcolor", None)
    if color:
        style = f"background-color:{color};{style}"
    keep = {name: value for name, value in attributes.items() if name in {"class", "dir", "lang"}}
    for name in attributes.keys() - keep.keys():
        left_out[f"the attribute {name!r} on <body> is not allowed in campaign HTML and is left out"] = None
    if style:
        keep["style"] = style
    if not keep:
        return ""
    node = LexborHTMLParser("<div></div>").css_first("div")
    assert node is not None
    for name, value in keep.items():
        node.attrs[name] = value or ""
    html = node.html or ""
    return html.removeprefix("<div").removesuffix("></div>")
