"""The compliance gate refuses what SPEC lists, with every problem named, and passes good campaigns."""

from __future__ import annotations

import dataclasses
import re
from email.policy import SMTP

import pytest
from cli_helpers import Cli
from compose_helpers import make_campaign, make_config, make_list, make_recipient, parse, render
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.content.compliance import check_campaign, check_message, check_subject, ensure_compliant
from mailer.content.templating import load_template_source, shipped_campaign_templates
from mailer.errors import ComplianceError
from mailer.models import Campaign, CampaignKind


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
     "Antwort: Ihre Bestellung", "Odp: zamówienie", "VB: erbjudande", "회신: 주문",
     "R: ordine", "I: offerta", "Rif: ordine", "VL: tarjous", "Doorst: bestelling", "YNT: sipariş",
     "İLT: sipariş", "Vá: rendelés", "Tov: ajánlat", "Odg: narudžba", "Př: objednávka", "FS: tilboð",
     "\u0391\u03a0: \u03c0\u03b1\u03c1\u03b1\u03b3\u03b3\u03b5\u03bb\u03af\u03b1",
     "\u041e\u0442\u0432: \u0437\u0430\u043a\u0430\u0437", "\u05d4\u05e9\u05d1: \u05d4\u05d6\u05de\u05e0\u05d4",
     "\u0631\u062f: \u0637\u0644\u0628", "返信: ご注文", "転送: セール"],
)
def test_reply_and_forward_prefixes_of_other_mail_clients_are_refused(subject: str) -> None:
    assert any("pretends to be a reply or forward" in p for p in check_subject(subject)), subject


@pytest.mark.parametrize("subject", ["Spring concerts are here", "Regarding our spring concerts",
                                     "New: 3 workshops", "50% off NYC tickets", "夏のコンサート",
                                     "[Harmony News] Spring concerts", "Vbox: a new instrument", "Reading list: 5 books",
                                     # emoji joined by U+200D and U+FE0F, marks in right-to-left text
                                     "\U0001f468\u200d\U0001f469\u200d\U0001f467 Family weekend",
                                     "\u2764\ufe0f Spring sale", "\u200f\u05de\u05d1\u05e6\u05e2 \u05d0\u05d1\u05d9\u05d1",
                                     "Rendez-vous: Paris", "Iris: a new album", "Retour: les concerts",
                                     "\u0425\u043e\u0440\u043e\u0448\u0430\u044f \u043d\u043e\u0432\u043e\u0441\u0442\u044c"])
def test_honest_subjects_pass(subject: str) -> None:
    assert check_subject(subject) == []
    assert check_campaign(make_config(), make_campaign(subject=subject), make_list()) == []


# each is drawn as nothing by mail clients
INVISIBLE = ["\u200b", "\ufeff", "\u2060", "\u00ad", "\u200e", "\u200f", "\u034f", "\u3164", "\u115f",
             "\u1160", "\uffa0", "\u180e", "\u2061", "\u2066", "\u202a", "\u061c", "\ufe0f", "\U000e0020",
             "\U000e0001", "\U0001d173", "\u17b4"]
# drawn as a blank, or as nothing when they come first: what the reader sees starts with "Re:"
LEADING_BLANKS = ["\u2800 ", "\u2800", "\u3000", "\u00a0", "\u0301"]


@pytest.mark.parametrize("hidden", INVISIBLE + LEADING_BLANKS)
def test_a_fake_reply_behind_characters_drawn_as_nothing_is_refused(hidden: str) -> None:
    problems = check_subject(f"{hidden}Re: your order")
    assert any("pretends to be a reply or forward" in p for p in problems), problems


@pytest.mark.parametrize("subject", [
    "\u0405V: erbjudande",  # Cyrillic dze
    "R\u0435: your order",  # Cyrillic ie
    "Fw\u0501: a great deal",  # Cyrillic komi de
    "\u0280\u1d07: your order",  # small capitals
    "\U0001d411\U0001d41e: your order",  # mathematical bold, NFKC-equal to "Re"
    "Re\u2236 your order",  # ratio sign for a colon
    "R\u200be\u200b: your order",  # invisible between the letters
    "[Harmony News] \u2060Re: your order",
])
def test_a_fake_reply_in_look_alike_letters_is_refused(subject: str) -> None:
    problems = check_subject(subject)
    assert any("pretends to be a reply or forward" in p for p in problems), problems


@pytest.mark.parametrize("subject", ["S\u200bA\u200bL\u200bE TODAY", "\U0001d401\U0001d408\U0001d406 \U0001d412\U0001d400\U0001d40b\U0001d404",
                                     "\u24b7\u24be\u24bc \u24c8\u24b6\u24c1\u24ba"])
def test_capitals_in_disguise_are_still_all_capitals(subject: str) -> None:
    assert any("all capitals" in p for p in check_subject(subject)), subject


@settings(max_examples=150)
@given(st.lists(st.sampled_from(INVISIBLE + LEADING_BLANKS), min_size=1, max_size=4),
       st.sampled_from(["Re", "RE", "Fwd", "FW", "AW", "SV", "R", "TR", "RV", "Antw"]),
       st.lists(st.sampled_from(INVISIBLE), max_size=3), st.text(max_size=30))
def test_no_mix_of_invisible_characters_hides_a_reply_prefix(
    before: list[str], prefix: str, inside: list[str], rest: str
) -> None:
    # the invisible characters go in front, and between the letters of the prefix and its colon
    letters = list(prefix + ":")
    for position, hidden in enumerate(inside):
        letters.insert(1 + position % len(prefix), hidden)
    subject = "".join(before) + "".join(letters) + " " + rest
    assert any("pretends to be a reply or forward" in p for p in check_subject(subject)), ascii(subject)


def test_the_cli_refuses_a_fake_reply_behind_a_zero_width_space(cli: Cli) -> None:
    cli("list", "create", "news", "--title", "Harmony News")
    cli("subscriber", "add", "ana@example.com", "--list", "news", "--name", "Ana Lima")
    created = cli("campaign", "create", "--list", "news", "--subject", "\u200bRe: your order", "--template", "welcome")
    assert "pretends to be a reply or forward" in created.stderr
    checked = cli("campaign", "check", created.stdout.strip(), ok=False)
    assert checked.exit_code == 1 and "fails the compliance gate" in checked.stderr
    [line] = [line for line in checked.stderr.splitlines() if "pretends to be a reply or forward" in line]
    assert "\\u200b" in line  # the hidden character is named, not printed invisibly


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


def test_what_a_template_leaves_open_or_comments_out_ends_with_the_template() -> None:
    # an unclosed comment, raw-text element or wrapper takes the rest of the template, never the footer
    for tail in ("<!-- the rest is a comment", "<div style='display:none'><table><tr><td>", "<p><b><i>"):
        problems = check_campaign(make_config(), make_campaign("<p>Hello</p>" + tail, "Hello"), make_list())
        assert problems == [], tail
        html = parse(render(campaign=make_campaign("<p>Hello</p>" + tail, "Hello")).data).get_body(("html",))
        assert html is not None
        box, _, footer = str(html.get_content()).replace("\r\n", "\n").partition('<div class="hm-footer">')
        assert "</div>\n</td></tr>" in box[box.index('id="hm-content"'):], tail  # the box is closed first
        assert "Advertisement" in footer


@pytest.mark.parametrize(
    ("tail", "element"),
    [("<title>", "title"), ("<textarea/>", "textarea"), ("<TEXTAREA >", "textarea"), ("<xmp>", "xmp"),
     ("<iframe>", "iframe"), ("<noembed>", "noembed"), ("<noframes>", "noframes"), ("<noscript>", "noscript"),
     ("<plaintext>", "plaintext"), ("<template>", "template"), ("<svg>", "svg"), ("<math>", "math"),
     ("<select>", "select"), ("<script>", "script"), ("<dialog><table><tr><td>", "dialog")],
)
def test_elements_a_mail_client_does_not_show_are_refused_with_one_line(tail: str, element: str) -> None:
    html = "<p>Our autumn recitals start soon in Laguna Beach.</p>" + tail
    problems = check_campaign(make_config(), make_campaign(html, "Our autumn recitals start soon in Laguna Beach."),
                              make_list())
    assert problems == [f"the template's <{element}> is not allowed in campaign HTML and is left out with its content"]


def test_closed_details_and_a_full_document_head_are_fine() -> None:
    html = ("<html><head><title>Autumn recitals</title><meta name='viewport' content='width=device-width'></head>"
            "<body><p>Our autumn recitals start soon in Laguna Beach.</p>"
            "<details><summary>Dates</summary><p>Soon</p></details>"
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


def test_stylesheet_rules_are_inlined_into_the_templates_own_elements() -> None:
    html = ("<style>p { color: #333 } td, div, table { display: none } .hm-footer { display: none }</style>"
            "<p>Hello</p>")
    assert check_campaign(make_config(), make_campaign(html, "Hello"), make_list()) == []
    part = parse(render(campaign=make_campaign(html, "Hello")).data).get_body(("html",))
    assert part is not None
    page = str(part.get_content())
    assert '<p style="color: #333;">Hello</p>' in page
    assert "display: none" not in page  # no element of the template matched; no rule reached the layout
    assert "#333" not in page.partition("</head>")[0]


@pytest.mark.parametrize(
    ("css", "problem"),
    [("@import url(https://fonts.example/x.css);",
      "@import is not allowed in a template's <style>: put the rules in the <style> itself"),
     ("@font-face { font-family: Helvetica; src: url(data:font/woff2;base64,AAAA) }",
      "@font-face is not allowed in a template's <style>: only @media rules that select inside #hm-content"),
     ("@layer x { td { display: none } }",
      "@layer is not allowed in a template's <style>: only @media rules that select inside #hm-content"),
     ("@media (max-width: 600px) { td { display: none } }",
      "the @media rule 'td' must select inside the campaign: start it with '#hm-content '"),
     ("@media screen { #hm-content ~ table { display: none } }",
      "the @media rule '#hm-content ~ table' must select inside the campaign: start it with '#hm-content '"),
     ("@media screen { #hm-content, .x { display: none } }",
      "the @media rule '#hm-content, .x' must select inside the campaign: start it with '#hm-content '"),
     ("@media screen { :is(#hm-content) p { display: none } }",
      "the @media rule ':is(#hm-content) p' must select inside the campaign: start it with '#hm-content '"),
     ("@media screen { #hm-content p { & ~ * { color: red } } }",
      "the @media rule '#hm-content p' may hold declarations only, no nested rules")],
)
def test_stylesheet_rules_that_cannot_be_inlined_must_stay_inside_the_campaign(css: str, problem: str) -> None:
    html = f"<style>{css}</style><p>Our autumn recitals start soon in Laguna Beach.</p>"
    problems = check_campaign(make_config(), make_campaign(html, "Our autumn recitals start soon in Laguna Beach."),
                              make_list())
    assert problems == [problem]


def test_an_external_stylesheet_is_refused() -> None:
    html = '<link rel="stylesheet" href="https://fonts.example/x.css"><p>Hello</p>'
    assert check_campaign(make_config(), make_campaign(html, "Hello"), make_list()) == [
        "external stylesheets (<link rel=stylesheet>) are not allowed: put the rules in a <style>"]


def test_media_rules_scoped_to_the_campaign_are_kept_for_phones() -> None:
    css = ("@media only screen and (max-width: 480px) { #hm-content .hide, #hm-content > table td.wide "
           "{ display: none !important } #hm-content p::after { content: '<!-- <p>' } }")
    html = f"<style>{css}</style><p>Our autumn recitals start soon in Laguna Beach.</p>"
    campaign = make_campaign(html, "Our autumn recitals start soon in Laguna Beach.")
    assert check_campaign(make_config(), campaign, make_list()) == []
    part = parse(render(campaign=campaign).data).get_body(("html",))
    assert part is not None
    head = str(part.get_content()).partition("</head>")[0]
    assert "#hm-content .hide, #hm-content > table td.wide" in head
    # no '<' of the template's in the <head>: as a CSS escape it says the same and opens no markup
    assert "<!-- <p>" not in head and '"\\3c !-- \\3c p>"' in head


def test_event_handlers_and_popovers_are_refused_with_one_line_each() -> None:
    html = '<p onclick="x()" popover>Hello</p><button>Buy</button><form><p>Hi</p></form>'
    problems = check_campaign(make_config(), make_campaign(html, "Hello Hi"), make_list())
    assert sorted(problems) == sorted([
        "the attribute 'onclick' on <p> is not allowed in campaign HTML and is left out",
        "the attribute 'popover' on <p> is not allowed in campaign HTML and is left out",
        "the template's <button> is not allowed in campaign HTML and is left out with its content",
        "the template's <form> tag is not allowed in campaign HTML and is left out",
    ])


def test_html_part_whose_only_html_tag_is_in_a_comment_is_refused() -> None:
    rendered = render()
    message = parse(rendered.data)
    html_part = message.get_body(("html",))
    assert html_part is not None
    html = re.sub(r"<html[^>]*>", "<!-- an <html> document once -->", str(html_part.get_content()), count=1)
    html_part.set_content(html.replace("</html>", ""), subtype="html")
    problems = check_message(make_config(), dataclasses.replace(rendered, data=message.as_bytes(policy=SMTP)))
    assert "the HTML part has no <html> tag" in problems


def test_a_message_whose_footer_is_inside_the_campaign_box_is_refused() -> None:
    rendered = render()
    message = parse(rendered.data)
    html_part = message.get_body(("html",))
    assert html_part is not None
    html = str(html_part.get_content())
    # a footer moved into the box is within the template's reach: the gate does not count it
    footer = html[html.index('<div class="hm-footer">'):html.index("</div>", html.index('<div class="hm-footer">')) + 6]
    html = html.replace(footer, "").replace('<div id="hm-content"', footer + '<div id="hm-content"', 0)
    html = html.replace("</div>\n</td></tr>", footer + "</div>\n</td></tr>", 1)
    html_part.set_content(html, subtype="html")
    problems = check_message(make_config(), dataclasses.replace(rendered, data=message.as_bytes(policy=SMTP)))
    assert "the HTML part has no footer after the campaign's content" in problems
    assert "the unsubscribe link is missing from the footer of the HTML part" in problems


def test_a_stylesheet_the_template_writes_out_at_render_time_is_inlined_too() -> None:
    html = ('{% set tag = "style" %}<{{ tag }}>p { color: #123456 } @import url(x.css);</{{ tag }}>'
            "<p>Our autumn recitals start soon in Laguna Beach.</p>")
    campaign = make_campaign(html, "Our autumn recitals start soon in Laguna Beach.")
    problems = check_campaign(make_config(), campaign, make_list())
    assert problems == ["@import is not allowed in a template's <style>: put the rules in the <style> itself"]
    part = parse(render(campaign=campaign).data).get_body(("html",))
    assert part is not None
    assert '<p style="color: #123456;">' in str(part.get_content())
