"""Headless Chromium shows the footer of every message the Composer builds, whatever the template tries."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from compose_helpers import make_campaign, make_config, make_list, make_recipient, parse

from mailer.config import Config
from mailer.content.compliance import check_campaign
from mailer.content.compose import Composer, Recipient
from mailer.content.templating import load_template_source, shipped_campaign_templates

BODY = "<p>Our autumn recitals start soon in Laguna Beach.</p>"
TEXT = "Our autumn recitals start soon in Laguna Beach."
OPEN_WRAPPER = "<table><tr><td>"  # left open: the layout's own end tags would close it after the footer

# each one hid the footer in Chromium while the gate of old let it pass, or tries to
TRICKS: dict[str, str] = {
    "comment-ended-with-space": BODY + "<!-- a note -- > <p>More news</p>",
    "unclosed-popover": BODY + "<div popover>" + OPEN_WRAPPER,
    "unclosed-opacity": BODY + '<div style="opacity:.0">' + OPEN_WRAPPER,
    "unclosed-clip-path": BODY + '<div style="clip-path:circle(0)">' + OPEN_WRAPPER,
    "style-opacity": "<style>div, p, a, td, strong { opacity: .0 }</style>" + BODY,
    "style-visibility-collapse": "<style>* { visibility: collapse }</style>" + BODY,
    "style-filter": "<style>table + table, td { filter: opacity(0) }</style>" + BODY,
    "style-transform": "<style>table table + table { transform: translateX(-10000px) }</style>" + BODY,
    "style-off-screen": "<style>td { position: absolute; left: -999px }</style>" + BODY,
    "style-tiny-background-font": "<style>td, p, a { font-size: .5px; color: #f3f4f6 }</style>" + BODY,
    "style-escape": "<style>t\\61 ble + t\\61 ble { display: n\\one }</style>" + BODY,
    "style-import-data": '<style>@import url("data:text/css,td%7Bdisplay:none%7D");</style>' + BODY,
    "style-has": "<style>body:has(p) td { display: none !important }</style>" + BODY,
    "style-variables": "<style>:root { --gone: none } td { display: var(--gone) }</style>" + BODY,
    "style-layer": "<style>@layer hide { td { display: none } }</style>" + BODY,
    "style-container": "<style>@container (min-width: 1px) { td { display: none } }</style>" + BODY,
    "style-media-unscoped": "<style>@media screen { table, td { display: none !important } }</style>" + BODY,
    "style-media-sibling": "<style>@media screen { #hm-content ~ * , #hm-content + div { display: none } }</style>"
                           + BODY,
    "style-font-face": "<style>@font-face { font-family: Helvetica; src: url(data:font/woff2;base64,AAAA) }"
                       "</style>" + BODY,
    "style-transparent": "<style>a, p, strong { color: transparent !important }</style>" + BODY,
    "style-font-size-0": "<style>body, table { font-size: 0 }</style>" + BODY,
    "style-before-overlay": '<style>td::before { content: ""; position: fixed; inset: 0; background: #fff; '
                            "z-index: 2147483647 }</style>" + BODY,
    "style-written-by-jinja": '{% set tag = "style" %}<{{ tag }}>td { display: none }</{{ tag }}>' + BODY,
    "inline-fixed-overlay": BODY + '<div style="position:fixed;inset:0;background:#fff;z-index:2147483647">x</div>',
    "inline-absolute-overlay": BODY + '<div style="position:absolute;top:0;left:0;width:3000px;height:5000px;'
                               'background:#fff;z-index:99">x</div>',
    "inline-negative-margin": BODY + '<div style="margin-bottom:-2000px;height:10px"></div>',
    "inline-very-wide": BODY + '<div style="width:20000px;min-width:20000px">x</div><img width="9000" src="x.png">',
    "inline-transform-scale": BODY + '<div style="transform:scale(60);background:#fff">x</div>',
    "full-document-attributes": '<html style="font-size:0"><head><base href="https://evil.example/">'
                                '<meta http-equiv="refresh" content="0;url=about:blank"></head>'
                                '<body style="opacity:0;visibility:hidden" onload="document.body.remove()">'
                                + BODY + "</body></html>",
    "link-stylesheet": '<link rel="stylesheet" href="data:text/css,td%7Bdisplay:none%7D">' + BODY,
    "template": BODY + "<template>",
    "noscript": BODY + "<noscript>",
    "svg-foreign-object": BODY + '<svg><foreignObject><div style="display:none">',
    "math": BODY + "<math><mtext><table><tr><td>",
    "plaintext": BODY + "<plaintext>",
    "xmp": BODY + "<xmp>",
    "iframe-srcdoc": BODY + '<iframe srcdoc="<p>hi</p>">',
    "unclosed-table": BODY + "<table><tr><td>" + "<table style='display:none'><tr><td>",
    "unclosed-select": BODY + "<select><option>",
    "unclosed-textarea": BODY + "<textarea>",
    "unclosed-title": BODY + "<title>",
    "closed-details": BODY + "<details>" + OPEN_WRAPPER,
    "dialog": BODY + "<dialog>" + OPEN_WRAPPER,
}

# visible as a reader sees it: shown, on the screen, on top, big enough, in a colour of its own
VISIBILITY_JS = """
const el = arguments[0];
el.scrollIntoView({block: "center", inline: "center"});
const box = el.getBoundingClientRect();
const style = getComputedStyle(el);
const centre = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
let opacity = 1, filters = [], background = "rgba(0, 0, 0, 0)";
for (let node = el; node && node.nodeType === 1; node = node.parentElement) {
  const s = getComputedStyle(node);
  opacity *= parseFloat(s.opacity);
  if (s.filter !== "none") filters.push(s.filter);
  if (s.clipPath !== "none") filters.push(s.clipPath);
  if (background === "rgba(0, 0, 0, 0)" && s.backgroundColor !== "rgba(0, 0, 0, 0)") background = s.backgroundColor;
}
return {
  checked: el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true}),
  width: box.width, height: box.height,
  onScreen: box.right > 0 && box.bottom > 0 && box.left < innerWidth && box.top < innerHeight,
  inDocument: box.left + scrollX >= 0 && box.top + scrollY >= 0,
  hit: centre !== null && (centre === el || el.contains(centre)),
  fontSize: parseFloat(style.fontSize),
  color: style.color, fill: style.webkitTextFillColor, background: background || "rgb(255, 255, 255)",
  opacity: opacity, filters: filters, innerText: el.innerText,
};
"""


def html_part(config: Config, html: str, text: str | None, recipient: Recipient | None = None) -> tuple[str, str]:
    """The HTML part the real Composer builds for the template, and the recipient's unsubscribe URL."""
    composer = Composer(config, make_campaign(html, text), make_list())
    rendered = composer.render(recipient or make_recipient())
    message = parse(rendered.data)
    part = message.get_body(("html",))
    assert part is not None
    url = str(message["List-Unsubscribe"]).split(">")[0].lstrip("<")
    return str(part.get_content()), url


def open_in_browser(browser: Any, tmp_path: Path, html: str, width: int = 1024) -> None:
    page = tmp_path / "message.html"
    page.write_text(html, encoding="utf-8")
    browser.set_window_size(width, 900)
    browser.get(page.as_uri())


def assert_footer_visible(browser: Any, config: Config, url: str) -> None:
    from selenium.webdriver.common.by import By

    footers = browser.find_elements(By.CSS_SELECTOR, "div.hm-footer")
    assert footers, "no footer in the page"
    footer = footers[-1]
    label = footer.find_element(By.TAG_NAME, "strong")
    address = footer.find_element(By.XPATH, f".//p[contains(., '{config.company.postal_address}')]")
    links = [a for a in footer.find_elements(By.TAG_NAME, "a") if a.get_attribute("href") == url]
    assert links, "no unsubscribe link in the footer"
    for what, element, words in (("ad label", label, config.compliance.ad_label),
                                 ("postal address", address, config.company.postal_address),
                                 ("unsubscribe link", links[0], "Unsubscribe with one click")):
        seen = browser.execute_script(VISIBILITY_JS, element)
        assert seen["checked"], (what, seen)
        assert seen["width"] > 0 and seen["height"] > 0, (what, seen)
        assert seen["onScreen"] and seen["inDocument"], (what, seen)
        assert seen["hit"], (what, "something else is painted over it", seen)
        assert seen["fontSize"] >= 8, (what, seen)
        assert seen["color"] != seen["background"], (what, seen)
        assert "rgba(0, 0, 0, 0)" not in (seen["color"], seen["fill"]), (what, seen)
        assert seen["opacity"] > 0.9 and not seen["filters"], (what, seen)
        assert words in " ".join(seen["innerText"].split()), (what, seen)


@pytest.mark.parametrize("html", list(TRICKS.values()), ids=list(TRICKS))
def test_no_template_trick_hides_the_footer_in_chromium(browser: Any, tmp_path: Path, html: str) -> None:
    config = make_config()
    page, url = html_part(config, html, TEXT)
    open_in_browser(browser, tmp_path, page)
    assert_footer_visible(browser, config, url)
    # nor does it push the footer sideways, out of a reader's view
    assert browser.execute_script("return document.documentElement.scrollWidth <= innerWidth")


# each one set the footer tens of millions of px down, past what Chromium lays out, or hundreds
# of thousands of px down, past where any reader scrolls, while the gate of old let it pass
TALL: dict[str, str] = {
    "height": BODY + '<div style="height:40000000px">x</div>',
    "height-under-layout-limit": BODY + '<div style="height:33554000px">x</div>',
    "min-height-in-cm": BODY + '<div style="min-height:1000000cm">x</div>',
    "margin": BODY + '<div style="margin-bottom:99999999px">x</div>',
    "padding": BODY + '<div style="padding-bottom:40000000px">x</div>',
    "border": BODY + '<div style="border-bottom:40000000px solid #fff">x</div>',
    "line-height": BODY + '<p style="line-height:40000000">x</p>',
    "font-line-height": BODY + '<p style="font:16px/4000000 serif">x</p>',
    "font-size": BODY + '<p style="font-size:40000000px">x</p>',
    "viewport-units": BODY + '<div style="height:4000000vh">x</div>',
    "calc": BODY + '<div style="height:calc(100000px * 100000)">x</div>',
    "img-height": BODY + '<img src="x.png" width="10" height="40000000">',
    "td-height-percent": BODY + '<table height="40000"><tr><td height="400000%">x</td></tr></table>',
    "cellpadding": BODY + '<table cellpadding="40000000"><tr><td>x</td></tr></table>',
    "cellspacing": BODY + '<table cellspacing="40000000"><tr><td>x</td></tr></table>',
    "hr-size": BODY + '<hr size="40000000">',
    "img-vspace": BODY + '<img src="x.png" vspace="40000000">',
    "media": "<style>@media screen { #hm-content p { height: 40000000px } }</style>" + BODY,
    "style-rule": "<style>p { padding-top: 40000000px }</style>" + BODY,
    "body-style": '<html><body style="padding-bottom:40000000px">' + BODY + "</body></html>",
    # each length within the bound, but ten thousand of them add up
    "many-tall-elements": BODY + '<div style="height:9000px"></div>' * 9_000,
    "nested-percentages": BODY + '<div style="height:9000px">' + '<div style="height:1000%">' * 20 + "x"
                          + "</div>" * 21,
}
# where a reader still scrolls to: the tallest real newsletter (20,000-30,000px) and some more
MAX_FOOTER_TOP_PX = 50_000


@pytest.mark.parametrize("html", list(TALL.values()), ids=list(TALL))
def test_no_length_a_template_sets_pushes_the_footer_out_of_reach(browser: Any, tmp_path: Path, html: str) -> None:
    config = make_config()
    page, url = html_part(config, html, TEXT)
    open_in_browser(browser, tmp_path, page)
    top = browser.execute_script(
        "return document.querySelector('div.hm-footer').getBoundingClientRect().top + scrollY"
    )
    assert 0 < top <= MAX_FOOTER_TOP_PX, top
    assert_footer_visible(browser, config, url)
    assert browser.execute_script("return document.documentElement.scrollWidth <= innerWidth")


@pytest.mark.parametrize("html", [html for name, html in TALL.items() if not name.startswith(("many", "nested"))],
                         ids=[name for name in TALL if not name.startswith(("many", "nested"))])
def test_the_gate_names_each_length_it_cuts(html: str) -> None:
    problems = check_campaign(make_config(), make_campaign(html, TEXT), make_list())
    assert problems, "the gate let an absurd length pass"
    for problem in problems:
        assert problem.startswith("lengths over 10,000px are not allowed in campaign HTML: the template's "), problem
        assert " is cut to " in problem and "\n" not in problem, problem


def test_a_long_real_newsletter_is_shown_whole(browser: Any, tmp_path: Path) -> None:
    # thirty sections of a tall image and some text: about 27,000px, nothing of it cut
    section = ('<table width="600" cellpadding="20"><tr><td><img src="x.png" width="560" height="700" '
               'style="display:block"><p style="line-height:1.5;margin:0 0 24px">' + TEXT + "</p></td></tr></table>")
    html = BODY + section * 30
    assert check_campaign(make_config(), make_campaign(html, TEXT), make_list()) == []
    config = make_config()
    page, url = html_part(config, html, TEXT)
    open_in_browser(browser, tmp_path, page)
    box = browser.execute_script("const box = document.getElementById('hm-content');"
                                 "return [box.scrollHeight, box.clientHeight]")
    assert 20_000 < box[0] == box[1], box
    assert_footer_visible(browser, config, url)


@pytest.mark.parametrize("html", list(TRICKS.values()), ids=list(TRICKS))
def test_the_gate_passes_or_names_what_the_template_may_not_do(html: str) -> None:
    problems = check_campaign(make_config(), make_campaign(html, TEXT), make_list())
    # the footer is always there; what may be refused is the template's own use of HTML and CSS,
    # or its text part when the template hides its own words
    assert not [p for p in problems if "footer" in p or "missing" in p], problems
    for problem in problems:
        assert "\n" not in problem, problem
        assert any(words in problem for words in ("not allowed", "must select inside", "say different")), problem


def test_a_subscriber_value_cannot_add_markup_or_attributes(browser: Any, tmp_path: Path) -> None:
    config = make_config()
    html = ('<p class={{ subscriber.attributes.tone }}>Hello {{ subscriber.name }}, '
            'from {{ subscriber.attributes.city }}.</p>' + BODY)
    hostile = make_recipient(
        name="<style>*{display:none}</style>Ana",
        attributes={"tone": "calm popover id=hm-content", "city": "</td></tr></table><div popover><table><tr><td>"},
    )
    page, url = html_part(config, html, TEXT, hostile)
    open_in_browser(browser, tmp_path, page)
    assert_footer_visible(browser, config, url)
    shown = browser.execute_script("return document.body.innerText")
    assert "<style>*{display:none}</style>Ana" in shown
    assert "</td></tr></table><div popover>" in shown
    assert browser.execute_script("return document.querySelectorAll('[popover]').length") == 0


@pytest.mark.parametrize("name", shipped_campaign_templates())
@pytest.mark.parametrize("width", [1024, 375], ids=["desktop", "phone"])
def test_shipped_templates_show_their_content_and_footer(browser: Any, tmp_path: Path, name: str, width: int) -> None:
    config = make_config()
    source = load_template_source(name)
    page, url = html_part(config, source.html, source.text)
    open_in_browser(browser, tmp_path, page, width)
    assert_footer_visible(browser, config, url)
    # nothing of the campaign is cut off by the box around it at this width
    overflow = browser.execute_script(
        "const box = document.getElementById('hm-content'); return [box.scrollWidth, box.clientWidth]"
    )
    assert overflow[0] <= overflow[1], overflow
    if os.environ.get("MAILER_SCREENSHOTS"):  # for a person to look at; never committed
        browser.save_screenshot(str(Path(os.environ["MAILER_SCREENSHOTS"]) / f"{name}-{width}.png"))
