"""Whatever HTML a template renders, it stays in its box: what follows the box is out of its reach."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import tinycss2
import tinycss2.ast
from compose_helpers import make_campaign, make_config, make_list, make_recipient, render
from hypothesis import example, given, settings
from hypothesis import strategies as st
from selectolax.lexbor import LexborHTMLParser

from mailer.content.compliance import (
    FooterHtml,
    check_campaign,
    check_message,
    message_parts,
    parse_message,
)
from mailer.content.containment import contain_html

TAGS = ["div", "p", "table", "tr", "td", "a", "b", "span", "style", "title", "textarea", "plaintext", "xmp",
        "noscript", "template", "svg", "math", "mtext", "foreignObject", "select", "option", "iframe", "script",
        "x-card", "form", "body", "html", "head", "details", "dialog", "pre", "li", "ul", "frameset", "base"]
ATTRIBUTES = ['style="opacity:0;position:fixed"', "popover", 'onclick="x()"', 'class="hm-footer"', 'id="after"',
              'href="#"', "hidden", 'srcdoc="<p>x</p>"']
PIECES = st.one_of(
    st.builds(lambda tag, attrs: f"<{tag} {' '.join(attrs)}>", st.sampled_from(TAGS),
              st.lists(st.sampled_from(ATTRIBUTES), max_size=3)),
    st.builds(lambda tag: f"</{tag}>", st.sampled_from(TAGS)),
    st.sampled_from(["<!--", "-->", "-- >", "--!>", "<![CDATA[", "]]>", "<!DOCTYPE html>", "<", "&", '"', "'",
                     "td { display: none }", "@media screen { td { display:none } }", "</style", "<?x", "\n"]),
    st.text(alphabet="abc <>&;=\"'/", max_size=8),
)
TEMPLATES = st.lists(PIECES, max_size=30).map("".join)


def parsed_in_the_layout(body: str) -> LexborHTMLParser:
    return LexborHTMLParser(f'<!DOCTYPE html><div id="box">{body}</div><p id="after-box">after</p>')


@settings(max_examples=200)
@given(TEMPLATES)
@example("<pre ></div>\n")  # a newline the parser would drop after <pre> when read back
def test_nothing_a_template_renders_reaches_past_its_box(html: str) -> None:
    contained = contain_html(html)
    page = parsed_in_the_layout(contained.body)
    after = page.css_first("#after-box")
    assert after is not None and after.parent is not None and after.parent.tag == "body", contained.body
    box = page.css_first("#box")
    assert box is not None
    for node in box.traverse():
        assert node.tag not in {"style", "script", "template", "svg", "math", "iframe", "plaintext", "xmp",
                                "title", "textarea", "noscript", "select", "base", "-comment"}, contained.body
        assert not {"popover", "onclick", "srcdoc"} & set(node.attributes), contained.body
    # what comes out parses back to itself (but for blanks at the very start, which a parser drops):
    # the browser builds the tree that was checked
    assert contain_html(contained.body).body.strip() == contained.body.strip()


@settings(max_examples=50)
@given(TEMPLATES)
def test_every_message_keeps_its_footer_whatever_the_template(html: str) -> None:
    template = "<p>Our autumn recitals start soon in Laguna Beach.</p>" + html.replace("{", "(").replace("}", ")")
    rendered = render(campaign=make_campaign(template, "Our autumn recitals start soon in Laguna Beach."))
    _, html_part = message_parts(parse_message(rendered.data))
    footer = FooterHtml.read(html_part)
    assert footer.found and "Advertisement" in footer.text
    problems = check_message(make_config(), rendered)
    assert not [p for p in problems if "footer" in p or "html" in p.lower()], problems


@pytest.mark.parametrize(
    "value",
    ["</p></div></td></tr></table><div popover>", "x popover onclick=alert(1)", '"><style>*{display:none}</style>',
     "\x01u\x01", "{{ unsubscribe_url }}"],
)
def test_a_subscriber_value_is_text_wherever_the_template_puts_it(value: str) -> None:
    template = ('<p class={{ subscriber.attributes.tone }} title="{{ subscriber.name }}">Hello {{ subscriber.name }}'
                '</p><a href="https://harmonymails.com/?c={{ subscriber.attributes.tone }}">Shop</a>')
    composer_html = render(campaign=make_campaign(template, "Hello {{ subscriber.name }} Shop"),
                           recipient=make_recipient(name=value, attributes={"tone": value}))
    _, html = message_parts(parse_message(composer_html.data))
    page = LexborHTMLParser(html)
    box = page.css_first("#hm-content")
    assert box is not None
    paragraph = box.css_first("p")
    assert paragraph is not None
    assert paragraph.attributes == {"class": value, "title": value}
    assert paragraph.text() == f"Hello {value}"
    assert [node.tag for node in box.traverse() if node.tag not in {"-text"}] == ["div", "p", "a"]


def test_html_nested_past_what_browsers_build_is_refused_with_one_line_not_a_crash() -> None:
    # css-inline's stack ends near 20,000 levels and tree building slows with the square of the depth
    html = "<div>" * 9_000 + "<style>p { color: red }</style><p>Deep</p>"
    problems = check_campaign(make_config(), make_campaign(html, "Deep"), make_list())
    assert problems == ["the campaign cannot be rendered: the template's HTML nests elements more than 512 deep"]
    assert contain_html("<div>" * 400 + "<style>p { color: red }</style><p>Deep</p>").body.count("<div>") == 400


def test_html_with_more_tags_than_a_newsletter_is_refused_before_it_is_parsed() -> None:
    problems = check_campaign(make_config(), make_campaign("<b>x</b>" * 10_001, "x"), make_list())
    assert problems == ["the campaign cannot be rendered: the template's HTML has 10,001 tags; at most 10,000 "
                        "are allowed"]


def test_markup_a_template_lets_through_from_a_subscriber_stays_in_the_box() -> None:
    # `|safe` on a subscriber's value is the template's choice; the value still cannot reach the footer
    value = '</p></td></tr></table><div popover style="display:none"><table><tr><td><!--'
    rendered = render(campaign=make_campaign("<p>Hello {{ subscriber.name|safe }}</p>", "Hello"),
                      recipient=make_recipient(name=value))
    _, html = message_parts(parse_message(rendered.data))
    footer = FooterHtml.read(html)
    assert footer.found and "Unsubscribe with one click" in footer.text
    assert "popover" not in html and "<!--" not in html


PERSONAL = ('<h1 title="{{ subscriber.name }}">Hi {{ subscriber.name }}</h1><p>News for {{ subscriber.attributes.city }}'
            ' &amp; you</p><a href="https://harmonymails.com/?to={{ subscriber.email }}">{{ unsubscribe_url }}</a>'
            "<style>h1 { color: #123 }</style>")


@settings(max_examples=100)
@given(name=st.text(max_size=30), city=st.text(max_size=30))
def test_the_once_per_campaign_path_builds_what_containing_each_message_builds(name: str, city: str) -> None:
    from mailer.content.compose import Composer
    from mailer.content.templating import compile_template, render_template

    composer = Composer(make_config(), make_campaign(PERSONAL, None), make_list())
    recipient = make_recipient(name=name, attributes={"city": city})
    fast, _ = composer.campaign_bodies(recipient)
    context = {"campaign": {"list_title": "Harmony News"}, "company": {}, "unsubscribe_url": "u",
               "subscriber": {"name": name, "email": recipient.email, "attributes": {"city": city}}}
    url = fast.rpartition('">')[2].partition("</a>")[0]  # the same signed link in both
    context["unsubscribe_url"] = LexborHTMLParser(url).text() if url else ""
    slow = contain_html(render_template(compile_template(PERSONAL, html=True, label="t"), context, label="t")).body

    def tree(html: str) -> str:
        return LexborHTMLParser(html).html or ""

    assert tree(fast) == tree(slow)


LENGTH_UNITS = ["px", "PX", "pt", "pc", "in", "cm", "mm", "q", "em", "rem", "ex", "ch", "lh", "vh", "vw", "vmax",
                "dvh", "cqh", "%", ""]
LENGTH_PROPERTIES = ["height", "min-height", "max-height", "width", "margin", "margin-bottom", "padding", "padding-top",
                     "border-bottom", "border-width", "line-height", "font-size", "zoom", "top", "--gap", "font"]
HUGE = st.one_of(st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False),
                 st.integers(min_value=-(10**15), max_value=10**15))
CSS_LENGTHS = st.builds(lambda number, unit: f"{number}{unit}", HUGE, st.sampled_from(LENGTH_UNITS))
CSS_VALUES = st.one_of(
    CSS_LENGTHS,
    st.builds(lambda a, b: f"{a} {b}", CSS_LENGTHS, CSS_LENGTHS),
    st.builds(lambda a, b: f"calc({a} * {b})", CSS_LENGTHS, HUGE),
    st.builds(lambda a: f"12px/{a} serif", HUGE),
    st.builds(lambda a: f"var(--gap, {a})", CSS_LENGTHS),
)
DECLARATIONS = st.builds(lambda name, value, important: f"{name}:{value}{' !important' if important else ''}",
                         st.sampled_from(LENGTH_PROPERTIES), CSS_VALUES, st.booleans())
SIZE_ATTRIBUTES = st.builds(lambda tag, name, number, unit: (f'<{tag} {name}="{number}{unit}">x</{tag}>'
                                                              if tag != "table" else
                                                              f'<table {name}="{number}{unit}"><tr><td>x</td></tr>'
                                                              "</table>"),
                            st.sampled_from(["img", "td", "table", "hr", "div"]),
                            st.sampled_from(["width", "height", "cellpadding", "cellspacing", "border", "hspace",
                                             "vspace", "size"]),
                            st.integers(min_value=0, max_value=10**12), st.sampled_from(["", "%", "px", " "]))
SIZED_TEMPLATES = st.lists(st.one_of(
    st.builds(lambda tag, css: f'<{tag} style="{css}">x</{tag}>', st.sampled_from(["div", "p", "td", "img", "span"]),
              st.lists(DECLARATIONS, min_size=1, max_size=3).map(";".join)),
    st.builds(lambda css: f"<style>@media screen {{ #hm-content p {{ {css} }} }} p {{ {css} }}</style><p>x</p>",
              st.lists(DECLARATIONS, min_size=1, max_size=3).map(";".join)),
    SIZE_ATTRIBUTES,
), min_size=1, max_size=5).map("".join)
# the browser's px for one of each unit, the largest it can be where the unit is relative
PX_PER_UNIT = {"px": 1, "pt": 4 / 3, "pc": 16, "in": 96, "cm": 96 / 2.54, "mm": 96 / 25.4, "q": 96 / 101.6,
               "em": 16, "rem": 16, "ex": 16, "ch": 16, "lh": 16, "vh": 20, "vw": 20, "vmax": 20, "dvh": 20,
               "cqh": 20}


def declarations_in(css: str) -> Iterator[tinycss2.ast.Declaration]:
    """Every declaration in a style attribute's text or in a stylesheet's rules, nested ones too."""
    for item in tinycss2.parse_blocks_contents(css, skip_comments=True, skip_whitespace=True):
        if isinstance(item, tinycss2.ast.Declaration):
            yield item
        elif isinstance(item, tinycss2.ast.QualifiedRule | tinycss2.ast.AtRule) and item.content is not None:
            yield from declarations_in(tinycss2.serialize(item.content))


def assert_bounded(name: str, tokens: list[tinycss2.ast.Node], in_clamp: bool) -> None:
    after_slash = False
    for token in tokens:
        if isinstance(token, tinycss2.ast.DimensionToken) and token.lower_unit in PX_PER_UNIT:
            assert abs(token.value) * PX_PER_UNIT[token.lower_unit] <= 10_000, (name, token.serialize())
        elif isinstance(token, tinycss2.ast.PercentageToken):
            assert abs(token.value) <= 1_000, (name, token.serialize())
        elif isinstance(token, tinycss2.ast.NumberToken) and (name in {"line-height", "zoom"}
                                                              or (name == "font" and after_slash)):
            assert abs(token.value) <= 10, (name, token.serialize())
        elif isinstance(token, tinycss2.ast.FunctionBlock):
            ours = token.serialize().startswith("clamp(-10000px,") and token.serialize().endswith(",10000px)")
            # numbers in calc() multiply bounded lengths: the browser bounds its result by the clamp() around it
            if token.lower_name == "calc" and not name.startswith("--") and name not in {"line-height", "zoom"}:
                assert in_clamp, (name, token.serialize())
            assert_bounded(name, token.arguments, in_clamp or ours)
        if not isinstance(token, tinycss2.ast.WhitespaceToken):
            after_slash = isinstance(token, tinycss2.ast.LiteralToken) and token.value == "/"


@settings(max_examples=150)
@given(SIZED_TEMPLATES)
def test_no_length_in_the_contained_html_is_more_than_a_newsletter_needs(html: str) -> None:
    contained = contain_html(html)
    nodes = LexborHTMLParser(contained.body).css("*")
    for css in [*(node.attributes.get("style") or "" for node in nodes), contained.css]:
        for declaration in declarations_in(css):
            assert_bounded(declaration.lower_name, declaration.value, False)
    for node in nodes:
        for name in ("width", "height", "cellpadding", "cellspacing", "border", "hspace", "vspace", "size"):
            value = node.attributes.get(name)
            if value is None or (name == "size" and node.tag != "hr"):
                continue
            number = re.match(r"\s*(\d*\.?\d+)\s*(%?)", value)
            if number is not None:
                assert float(number.group(1)) <= (1_000 if number.group(2) else 10_000), (node.tag, name, value)
    # containing what was contained changes nothing: each length is cut once
    assert contain_html(contained.body).body == contained.body
