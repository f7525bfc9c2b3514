"""The compliance gate refuses what SPEC lists, with every problem named, and passes good campaigns."""

from __future__ import annotations

import dataclasses
import re
from email.policy import SMTP

import pytest
from compose_helpers import make_campaign, make_config, make_list, make_recipient, parse, render

from mailer.compliance import check_campaign, check_message, check_subject, ensure_compliant
from mailer.errors import ComplianceError
from mailer.models import Campaign, CampaignKind
from mailer.templating import load_template_source, shipped_campaign_templates


@pytest.mark.parametrize(
    ("subject", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("Re: your order", "reply or forward"),
        ("RE: your order", "reply or forward"),
        ("Fwd: a great deal", "reply or forward"),
        ("FW: a great deal", "reply or forward"),
        ("AW: Ihre Bestellung", "reply or forward"),
        ("BIG SUMMER SALE", "all capitals"),
        ("SALE 50% OFF TODAY!!!", "all capitals"),
        ("Hello\r\nBcc: x@evil.test", "line break"),
    ],
)
def test_bad_subjects_are_refused(subject: str, problem: str) -> None:
    problems = check_campaign(make_config(), make_campaign(subject=subject), make_list())
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize(
    "subject",
    ["回复\uff1a夏のコンサート", "转发: 春季音乐会", "\uff32\uff25\uff1aご注文について", "\uff26\uff57\uff44: a great deal",
     "[Harmony News] Re: your order",
     "Antwort: Ihre Bestellung", "Odp: zamówienie", "VB: erbjudande", "회신: 주문"],
)
def test_reply_and_forward_prefixes_of_other_mail_clients_are_refused(subject: str) -> None:
    assert any("pretends to be a reply or forward" in p for p in check_subject(subject)), subject


@pytest.mark.parametrize("subject", ["Spring concerts are here", "Regarding our spring concerts",
                                     "New: 3 workshops", "50% off NYC tickets", "夏のコンサート",
                                     "[Harmony News] Spring concerts", "Vbox: a new instrument", "Reading list: 5 books"])
def test_honest_subjects_pass(subject: str) -> None:
    assert check_subject(subject) == []
    assert check_campaign(make_config(), make_campaign(subject=subject), make_list()) == []


def test_every_problem_is_listed_at_once() -> None:
    config = make_config()
    config = dataclasses.replace(config, company=dataclasses.replace(config.company, postal_address="TBD"))
    campaign = make_campaign(subject="RE: FREE STUFF", from_address="Promo <deals@other-domain.example>")
    problems = check_campaign(config, campaign, make_list())
    text = "\n".join(problems)
    assert "reply or forward" in text
    assert "all capitals" in text
    assert "not on the sending domain harmonymails.com" in text
    assert "postal_address" in text
    with pytest.raises(ComplianceError) as caught:
        ensure_compliant(config, campaign, make_list())
    assert caught.value.problems == problems


def test_from_must_be_one_mailbox_on_the_sending_domain() -> None:
    for sender in ["a@harmonymails.com, b@harmonymails.com", "Promo <deals@harmonymails.com.evil.test>",
                   "not an address", "Promo <deals@harmonymails.com>,", "Promo: deals@harmonymails.com;",
                   "<deals@harmonymails.com"]:
        problems = check_campaign(make_config(), make_campaign(from_address=sender), make_list())
        assert any("From" in p for p in problems), (sender, problems)
    ok = make_campaign(from_address="Events Team <events@harmonymails.com>")
    assert check_campaign(make_config(), ok, make_list()) == []


def test_template_failing_for_some_subscribers_is_refused_before_the_send() -> None:
    campaign = make_campaign("<p>Your plan: {{ subscriber.attributes.plan }}</p>", None)
    with_plan = make_recipient(subscriber_id=1, email="a@example.com", attributes={"plan": "gold"})
    without = make_recipient(subscriber_id=2, email="b@example.com", attributes={})
    assert check_campaign(make_config(), campaign, make_list(), recipients=[with_plan]) == []
    problems = check_campaign(make_config(), campaign, make_list(), recipients=[with_plan, without])
    assert len(problems) == 1
    assert "fails to render for b@example.com" in problems[0] and "plan" in problems[0]


def test_unknown_variable_and_syntax_error_are_refused() -> None:
    assert any("undefined" in p for p in check_campaign(make_config(), make_campaign("{{ nope }}", None),
                                                        make_list()))
    assert any("does not parse" in p for p in check_campaign(make_config(), make_campaign("{% for %}", None),
                                                             make_list()))


@pytest.mark.parametrize(
    "html",
    [
        "<p>Hello</p><!-- the rest is a comment",
        "<p>Hello</p><style>div, p { display: none }</style>",
        "<p>Hello</p><style>.hm-footer{display:none!important}</style>",
        "<p>Hello</p><style>@media screen { td { font-size: 0 } }</style>",
    ],
    ids=["unclosed-comment", "style-div", "style-footer-class", "style-media"],
)
def test_a_template_that_hides_the_footer_is_refused(html: str) -> None:
    problems = check_campaign(make_config(), make_campaign(html, "Hello"), make_list())
    assert problems, html
    assert any("footer" in p or "comment" in p or "missing from the visible HTML part" in p for p in problems)


@pytest.mark.parametrize(
    "tail",
    ["<title>", "<textarea/>", "<TEXTAREA >", "<xmp>", "<iframe>", "<noembed>", "<noframes>", "<noscript>", "<plaintext>",
     "<template>", "<details><table><tr><td>", "<dialog><table><tr><td>"],
)
def test_a_template_that_swallows_the_footer_into_an_element_browsers_do_not_show_is_refused(tail: str) -> None:
    # Chromium shows no footer for any of these: raw-text elements take the rest of the document
    # as their text, <template> content is never rendered, closed <details>/<dialog> hide theirs
    html = "<p>Our autumn recitals start soon in Laguna Beach.</p>" + tail
    problems = check_campaign(make_config(), make_campaign(html, "Our autumn recitals start soon in Laguna Beach."),
                              make_list())
    assert "the unsubscribe link is missing from the visible HTML part" in problems


def test_elements_browsers_hide_are_fine_when_closed() -> None:
    html = ("<html><head><title>Autumn recitals</title></head><body>"
            "<p>Our autumn recitals start soon in Laguna Beach.</p><noscript>Scripts are off.</noscript>"
            "<template><p>Unused</p></template><details><summary>Dates</summary><p>Soon</p></details>"
            "<details open><summary>Venue</summary><p>The cliffs</p></details></body></html>")
    assert check_campaign(make_config(), make_campaign(html, "Our autumn recitals start soon in Laguna Beach. "
                                                             "Dates Venue The cliffs"), make_list()) == []


def test_own_hidden_elements_and_preheaders_are_fine() -> None:
    html = ('<div style="display:none;max-height:0;overflow:hidden;">Preheader</div>'
            "<style>.mobile-only { display: none }</style><p>Hello</p>")
    assert check_campaign(make_config(), make_campaign(html, "Hello"), make_list()) == []


def test_campaign_without_a_list_is_refused() -> None:
    problems = check_campaign(make_config(), make_campaign(), None)
    assert "the campaign has no mailing list" in problems


def test_missing_signing_key_is_a_problem_not_a_crash() -> None:
    problems = check_campaign(make_config(secret_keys=()), make_campaign(), make_list())
    assert any("secret_keys" in p for p in problems)


def test_notice_with_the_ad_label_is_refused_and_without_it_passes() -> None:
    def notice(html: str) -> Campaign:
        return make_campaign(html, None, subject="Changes to our terms of service", kind=CampaignKind.NOTICE,
                             notice_reason="you have an account with us")

    good = notice("<p>Our terms change on 1 May.</p>")
    assert check_campaign(make_config(), good, None) == []
    bad = notice("<p>Advertisement: our terms change, and here is a sale.</p>")
    problems = check_campaign(make_config(), bad, None)
    assert any("must not carry the advertisement label" in p for p in problems)


@pytest.mark.parametrize("name", shipped_campaign_templates())
def test_shipped_example_campaigns_pass_the_gate(name: str) -> None:
    source = load_template_source(name)
    campaign = make_campaign(source.html, source.text, subject="Welcome to Harmony News")
    recipients = [make_recipient(), make_recipient(subscriber_id=12, email="bo@example.com", name="",
                                                   attributes={})]
    assert check_campaign(make_config(), campaign, make_list(), recipients=recipients) == []


def test_shipped_examples_include_an_html_only_one() -> None:
    names = shipped_campaign_templates()
    assert "welcome" in names
    assert any(load_template_source(n).text is None for n in names)


def test_text_part_saying_something_else_than_the_html_is_refused() -> None:
    campaign = make_campaign("<p>Spring concerts in Laguna Beach, six evenings of music.</p>",
                             "Our shoe sale ends tonight, buy two pairs get one free.")
    problems = check_campaign(make_config(), campaign, make_list())
    assert any("say different things" in p for p in problems), problems


def test_reply_to_is_set_once_as_configured() -> None:
    config = make_config(sender={"reply_to": "Harmony Help <help@harmonymails.com>"})
    message = parse(render(config).data)
    assert message.get_all("Reply-To") is not None and len(message.get_all("Reply-To", [])) == 1
    assert message["Reply-To"].addresses[0].addr_spec == "help@harmonymails.com"
    assert check_campaign(config, make_campaign(), make_list()) == []


def test_stylesheet_rules_for_own_classes_are_fine_and_bare_elements_are_not() -> None:
    def problems(css: str) -> list[str]:
        html = f"<style>{css}</style><p>Hello</p>"
        return check_campaign(make_config(), make_campaign(html, "Hello"), make_list())

    assert problems("div.promo, p.teaser { display: none } @media (max-width: 600px) { .wide { display:none } }") == []
    assert problems("p { color: #333 }") == []
    assert any("can hide the footer" in p for p in problems(".banner > p { visibility: hidden }"))


@pytest.mark.parametrize(
    "css",
    ["[class*=foot] { display: none }", "[role] { display: none }", ":nth-child(2) { display: none }",
     "table/**/ { display: none }", "/* } */ div { display: none }", "t\\61 ble + t\\61 ble { display: none }", "div:not(.promo) { display: none }",
     "[style*='0 0 10px'] { display: none }", ":is(td, div) { display: none }", "td[class^=h] { display: none }",
     "table[class=hm-shell] { display: none }"],
)
def test_stylesheet_rules_that_reach_the_footer_by_attribute_pseudo_class_comment_or_escape_are_refused(
    css: str,
) -> None:
    # Chromium hides the footer, or its links, under each of these rules
    html = f"<style>{css}</style><p>Our autumn recitals start soon in Laguna Beach.</p>"
    problems = check_campaign(make_config(), make_campaign(html, "Our autumn recitals start soon in Laguna Beach."),
                              make_list())
    assert any("can hide the footer" in p for p in problems), problems


def test_stylesheet_rules_confined_to_own_classes_or_other_elements_are_fine() -> None:
    css = ("span, h1.big, img { display: none } .promo:not(.open) { display: none } "
           "a[href*='example.com'].cta { visibility: hidden } #hero > .x:nth-child(2) { display: none } "
           # what older responsive templates write for Yahoo: an exact class is a class of their own
           "@media only screen and (max-width: 480px) { table[class=hide], td[class~=\"hide\"], "
           "*[id='banner'] { display: none !important } }")
    html = f"<style>{css}</style><p>Our autumn recitals start soon in Laguna Beach.</p>"
    assert check_campaign(make_config(), make_campaign(html, "Our autumn recitals start soon in Laguna Beach."),
                          make_list()) == []


@pytest.mark.parametrize(
    "style",
    ["height:0;overflow:hidden", "overflow: hidden; width: 0px", "mso-hide:all", "position:absolute;left:-9999px",
     "transform: scale(0)", "display:/* a comment */none", "position:absolute;clip:rect(0 0 0 0)", "clip: rect(0px, 0px, 0px, 0px)",
     "clip-path: inset(50%)", "font-size:1px", "font-size: 0.5px"],
)
def test_footer_wrapped_in_an_element_styled_out_of_sight_is_refused(style: str) -> None:
    # the unclosed table makes the layout's own end tags close it, so the footer lands in the div
    body = "<p>Our autumn recitals start soon in Laguna Beach.</p>"
    text = "Our autumn recitals start soon in Laguna Beach."
    for html in (f'{body}<div style="{style}"><table><tr><td>', f"<style>table + table {{ {style} }}</style>{body}"):
        problems = check_campaign(make_config(), make_campaign(html, text), make_list())
        assert any("footer" in p or "missing from the visible HTML part" in p for p in problems), html


def test_html_part_whose_only_html_tag_is_in_a_comment_is_refused() -> None:
    rendered = render()
    message = parse(rendered.data)
    html_part = message.get_body(("html",))
    assert html_part is not None
    html = re.sub(r"<html[^>]*>", "<!-- an <html> document once -->", str(html_part.get_content()), count=1)
    html_part.set_content(html.replace("</html>", ""), subtype="html")
    problems = check_message(make_config(), dataclasses.replace(rendered, data=message.as_bytes(policy=SMTP)))
    assert "the HTML part has no <html> tag" in problems


def test_a_stylesheet_the_template_writes_out_at_render_time_is_checked_too() -> None:
    html = ('{% set tag = "style" %}<{{ tag }}>td { display: none }</{{ tag }}>'
            "<p>Our autumn recitals start soon in Laguna Beach.</p>")
    problems = check_campaign(make_config(), make_campaign(html, "Our autumn recitals start soon in Laguna Beach."),
                              make_list())
    assert any("the stylesheet rule 'td' can hide the footer" in p for p in problems), problems


def test_a_footer_hidden_only_in_outlook_by_a_conditional_comment_is_refused() -> None:
    # Outlook for Windows opens <!--[if mso]> comments: this div wraps the footer there alone
    html = ('<p>Our autumn recitals start soon in Laguna Beach.</p>'
            '<!--[if mso]><div style="mso-hide:all"><table><tr><td><![endif]-->')
    problems = check_campaign(make_config(), make_campaign(html, "Our autumn recitals start soon in Laguna Beach."),
                              make_list())
    assert "the unsubscribe link is missing from the HTML part as Outlook for Windows shows it" in problems


def test_balanced_conditional_comments_for_outlook_are_fine() -> None:
    html = ('<!--[if mso | IE]><table role="presentation" width="600"><tr><td><![endif]-->'
            '<!--[if !mso]><!--><div style="font-family:Lato,sans-serif"><!--<![endif]-->'
            "<p>Our autumn recitals start soon in Laguna Beach.</p>"
            "<!--[if !mso]><!--></div><!--<![endif]-->"
            "<!--[if mso | IE]></td></tr></table><![endif]-->")
    assert check_campaign(make_config(), make_campaign(html, "Our autumn recitals start soon in Laguna Beach."),
                          make_list()) == []
