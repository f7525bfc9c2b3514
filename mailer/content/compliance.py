"""The compliance gate: every reason a campaign may not be sent, found before the first message goes out."""

from __future__ import annotations

import dataclasses
import email.errors
import email.header
import email.parser
import email.policy
import email.utils
import re
import unicodedata
from collections.abc import Iterable
from email.message import EmailMessage
from email.utils import getaddresses

from mailer.addresses import is_plain_address, parse_mailbox
from mailer.config import Config, is_placeholder_address
from mailer.content.compose import (
    Composer,
    Recipient,
    RenderedMessage,
    header_address,
    sample_recipient,
)
from mailer.content.notice_rules import notice_problems
from mailer.content.visible import FooterHtml, VisibleHtml, message_parts, parse_message
from mailer.content.wire import MAX_LINE
from mailer.errors import ComplianceError, InvalidInputError, MailerError, TemplateError
from mailer.models import Campaign, CampaignKind, MailingList
from mailer.tokens import read_preferences_token, read_unsubscribe_token

# a subject must not pretend to answer or pass on a conversation that never happened
# (what mail clients in English, German, Nordic, Baltic, Romance, Dutch, Slavic, Hungarian,
# Turkish, Greek, Hebrew, Arabic, Chinese, Japanese and Korean write), after an optional list
# tag such as "[Harmony News] "
FAKE_REPLY = re.compile(
    r"^\s*(?:\[[^\]]*\]\s*)?(?:re|fwd?|fw|aw|wg|sv|vs|vb|vl|fs|tr|rv|antw|antwort|ref|réf|rif|enc|res|odp|pd|"
    r"r|i|doorst|odg|př|vá|tov|ynt|ilt|atb|pārs|ats|persiųsta|отв|пересл|απ|σχετ|πρθ|השב|הועבר|رد|"
    "回复|答复|转发|回覆|轉寄|轉發|返信|転送|회신|답장|전달"
    r")\s*(?:\[\d+\]|\(\d+\))?\s*[:\uff1a]",
    re.IGNORECASE,
)
ONCE_HEADERS = ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version")
MAX_LINE_OCTETS = MAX_LINE
# share of distinct words the text and HTML parts must have in common to count as one content
MIN_SHARED_WORDS = 0.5
_WORD = re.compile(r"[^\W_]{3,}")
_MESSAGE_ID = re.compile(r"^<[^<>@\s]+@[^<>@\s]+>$")
_LIST_UNSUBSCRIBE = re.compile(r"^<(https://[^>\s]+)>(?:\s*,\s*<(mailto:[^>\s]+)>)?$")


def check_subject(subject: str) -> list[str]:
    """What is wrong with a subject line, if anything."""
    problems = []
    if not subject.strip():
        return ["the subject is empty"]
    if re.search(r"[\x00-\x1f\x7f\u2028\u2029]", subject):
        problems.append("the subject contains a line break or control character")
    # read as the reader sees it: "RE:" in full-width letters, behind a zero-width space or in
    # Cyrillic letters reads as "RE:" all the same
    shown = _subject_as_shown(subject)
    if FAKE_REPLY.match(shown) or FAKE_REPLY.match(shown.translate(_LOOK_ALIKES)):
        disguised = "" if FAKE_REPLY.match(unicodedata.normalize("NFKC", subject)) else (
            " (behind characters that show as nothing or look like other letters)")
        problems.append(f"the subject {subject.strip()!r} pretends to be a reply or forward{disguised}")
    cased = [ch for ch in shown if ch.isalpha() and ch.lower() != ch.upper()]
    if len(cased) >= 4 and all(ch.isupper() for ch in cased):
        problems.append(f"the subject {subject.strip()!r} is in all capitals")
    return problems


# Unicode's default-ignorable code points (DerivedCoreProperties.txt): a mail client draws
# nothing for them, and the Hangul fillers among them are used as blank "letters"
_SHOWN_AS_NOTHING = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)
# drawn as an empty cell, read as a space
_SHOWN_AS_BLANK = frozenset("\u2800")
# letters of other scripts, and small capitals, that a reader takes for the Latin ones of a
# reply prefix; and colons that are not ":" even after NFKC
_LOOK_ALIKES = str.maketrans({
    # Cyrillic
    "\u0430": "a", "\u0435": "e", "\u043e": "o", "\u0440": "p", "\u0441": "c", "\u0443": "y",
    "\u0445": "x", "\u0455": "s", "\u0456": "i", "\u0458": "j", "\u0501": "d", "\u051d": "w",
    "\u04bb": "h", "\u04cf": "l", "\u0410": "A", "\u0412": "B", "\u0415": "E", "\u041a": "K",
    "\u041c": "M", "\u041d": "H", "\u041e": "O", "\u0420": "P", "\u0421": "C", "\u0422": "T",
    "\u0425": "X", "\u0405": "S", "\u0406": "I", "\u0408": "J", "\u051c": "W", "\u04ae": "Y",
    # Greek
    "\u0391": "A", "\u0392": "B", "\u0395": "E", "\u0396": "Z", "\u0397": "H", "\u0399": "I",
    "\u039a": "K", "\u039c": "M", "\u039d": "N", "\u039f": "O", "\u03a1": "P", "\u03a4": "T",
    "\u03a5": "Y", "\u03a7": "X", "\u03bf": "o", "\u03bd": "v", "\u03c4": "t", "\u03b9": "i",
    # Latin small capitals
    "\u1d00": "a", "\u0299": "b", "\u1d04": "c", "\u1d05": "d", "\u1d07": "e", "\ua730": "f",
    "\u0262": "g", "\u029c": "h", "\u026a": "i", "\u1d0a": "j", "\u1d0b": "k", "\u029f": "l",
    "\u1d0d": "m", "\u0274": "n", "\u1d0f": "o", "\u1d18": "p", "\u0280": "r", "\ua731": "s",
    "\u1d1b": "t", "\u1d1c": "u", "\u1d20": "v", "\u1d21": "w", "\u028f": "y", "\u1d22": "z",
    # ratio, modifier letter colon, triangular colon, Hebrew sof pasuq, Armenian full stop
    "\u2236": ":", "\ua789": ":", "\u02f8": ":", "\u05c3": ":", "\u0589": ":",
})


def _subject_as_shown(subject: str) -> str:
    """The subject as a mail client shows it: NFKC-folded, without the characters drawn as nothing."""
    folded = unicodedata.normalize("NFKC", subject)
    shown = "".join(" " if ch in _SHOWN_AS_BLANK else "" if _shown_as_nothing(ch) else ch for ch in folded)
    # a combining mark with no letter before it to sit on is drawn as nothing as well
    start = 0
    while start < len(shown) and (shown[start].isspace() or unicodedata.category(shown[start]) in ("Mn", "Me")):
        start += 1
    return shown[start:]


def _shown_as_nothing(ch: str) -> bool:
    if unicodedata.category(ch) == "Cf":
        return True
    point = ord(ch)
    return any(low <= point <= high for low, high in _SHOWN_AS_NOTHING)


def check_from(config: Config, from_address: str) -> list[str]:
    """From must be one mailbox on the sending domain."""
    value = from_address or config.sender.from_address
    try:
        mailbox = parse_mailbox(value)
    except InvalidInputError as exc:
        return [f"From {exc}"]
    if mailbox.domain.lower() != config.sender.sending_domain:
        return [f"From {value.strip()!r} is not on the sending domain {config.sender.sending_domain}"]
    return []


def check_sender_headers(config: Config, data: bytes, from_address: str) -> list[str]:
    """The finished From (and Reply-To) read back as receivers read them: one mailbox each, ours.

    Read twice: by the strict header parser, which must find exactly the sender's mailbox, and
    as a careless reader does, decoding encoded words first and parsing what they say, which
    must find no address but the sender's.
    """
    problems: list[str] = []
    wanted = {"From": from_address or config.sender.from_address}
    if config.sender.reply_to:
        wanted["Reply-To"] = config.sender.reply_to
    strict = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(data)
    raw = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(data)
    for name in ("From", "Reply-To"):
        values = strict.get_all(name, [])
        if name not in wanted:
            if values:
                problems.append(f"the message has a {name} header, but none is configured")
            continue
        try:
            expected = header_address(parse_mailbox(wanted[name]).addr_spec).lower()
        except InvalidInputError as exc:
            problems.append(f"{name} {exc}")
            continue
        if len(values) != 1:
            continue  # check_message reports a missing or repeated From; a Reply-To is counted here
        header = values[0]
        strict_read = [a.addr_spec.lower() for a in header.addresses]
        naive_read = _careless_addresses(str(raw.get(name, "")))
        # a careless reader may lose the address in a name it misreads, but must find no other
        careless_foreign = naive_read is None or any(address != expected for address in naive_read)
        if header.defects or len(header.groups) != 1 or strict_read != [expected] or careless_foreign:
            shown = " ".join(str(raw.get(name, "")).split())
            problems.append(f"the {name} header {shown!r} does not read as the one mailbox {expected}")
    if "Reply-To" in wanted and len(strict.get_all("Reply-To", [])) != 1:
        problems.append(f"the message has {len(strict.get_all('Reply-To', []))} Reply-To headers, not 1")
    return problems


def _careless_addresses(raw_value: str) -> list[str] | None:
    """The addresses a reader sees that decodes encoded words before it parses the header."""
    try:
        decoded = str(email.header.make_header(email.header.decode_header(raw_value)))
    except (email.errors.HeaderParseError, UnicodeError, ValueError, LookupError):
        return None
    # a misread name yields debris such as '"¡ <news@...>'; only a well-formed address is another sender
    return [address.lower() for _, address in getaddresses([decoded]) if is_plain_address(address)]


def check_campaign(
    config: Config,
    campaign: Campaign,
    mailing_list: MailingList | None,
    *,
    recipients: Iterable[Recipient] = (),
) -> list[str]:
    """Every problem that stops this campaign from being sent; an empty list means it may go.

    The campaign is rendered for each of `recipients` (a sample subscriber when there are
    none) and every rendered message is checked as a recipient's mail client would see it.
    """
    problems = list(check_subject(campaign.subject))
    problems += check_from(config, campaign.from_address)
    if is_placeholder_address(config.company.postal_address):
        problems.append("company.postal_address is missing or a placeholder; CAN-SPAM requires a real one")
    if campaign.kind is CampaignKind.CAMPAIGN and mailing_list is None:
        problems.append("the campaign has no mailing list")
    notice = campaign.kind is CampaignKind.NOTICE
    if notice:
        problems += notice_problems(config, campaign)
    try:
        composer = Composer(config, campaign, mailing_list)
    except MailerError as exc:
        problems.append(f"the campaign cannot be rendered: {exc}")
        return _unique(problems)
    for recipient in list(recipients) or [sample_recipient()]:
        try:
            rendered = render_for_check(composer, recipient)
        except TemplateError as exc:
            problems.append(f"the template fails to render for {recipient.email}: {exc}")
            continue
        except MailerError as exc:
            problems.append(f"no message can be built for {recipient.email}: {exc}")
            continue
        problems += check_message(config, rendered, notice=notice)
        problems += composer.left_out(recipient)
        problems += check_sender_headers(config, rendered.data, campaign.from_address)
        html_body, text_body = composer.campaign_bodies(recipient)
        problems += check_equivalence(html_body, text_body)
    return _unique(problems)


def render_for_check(composer: Composer, recipient: Recipient) -> RenderedMessage:
    """The recipient's message; at a sample address when theirs cannot go in a header.

    Such an address fails its own delivery at send time; the campaign is still checked with
    that person's data. Raises what Composer.render raises otherwise.
    """
    try:
        return composer.render(recipient)
    except InvalidInputError:
        return composer.render(dataclasses.replace(recipient, email=sample_recipient().email))


def ensure_compliant(
    config: Config,
    campaign: Campaign,
    mailing_list: MailingList | None,
    *,
    recipients: Iterable[Recipient] = (),
) -> None:
    """Raises ComplianceError listing every problem when the campaign may not be sent."""
    problems = check_campaign(config, campaign, mailing_list, recipients=recipients)
    if problems:
        raise ComplianceError(problems)


def check_message(config: Config, rendered: RenderedMessage, *, notice: bool = False) -> list[str]:
    """What a finished message breaks of COMPLIANCE 1, 5, 8, 11, 12 and 13."""
    data = rendered.data
    problems = _check_wire_form(data)
    message = parse_message(data)
    if message.defects:
        problems.append(f"the message does not parse cleanly: {message.defects}")
    problems += _check_headers(message)
    if message.get_content_type() != "multipart/alternative":
        problems.append(f"the message is {message.get_content_type()}, not multipart/alternative")
    text, html = message_parts(message)
    if not text.strip() or not html.strip():
        problems.append("the message lacks a non-empty text part and HTML part")
    visible = VisibleHtml.read(html)
    if not visible.has_html_tag:
        problems.append("the HTML part has no <html> tag")
    footer = FooterHtml.read(html)
    if not footer.found:
        problems.append("the HTML part has no footer after the campaign's content")
    return problems + _check_footer(config, message, text, visible, footer, notice=notice)


def _check_wire_form(data: bytes) -> list[str]:
    """Line ends and line lengths as SMTP carries them."""
    problems: list[str] = []
    if b"\n" in data.replace(b"\r\n", b"") or b"\r" in data.replace(b"\r\n", b""):
        problems.append("the message has a bare CR or LF")
    if any(len(line) > MAX_LINE_OCTETS for line in data.split(b"\r\n")):
        problems.append(f"the message has a line longer than {MAX_LINE_OCTETS} octets")
    return problems


def _check_headers(message: EmailMessage) -> list[str]:
    """Each header a message has once, well-formed, and no copies to anyone else."""
    problems: list[str] = []
    for name in ONCE_HEADERS:
        if len(message.get_all(name, [])) != 1:
            problems.append(f"the message has {len(message.get_all(name, []))} {name} headers, not 1")
    if not _MESSAGE_ID.match(str(message.get("Message-ID", ""))):
        problems.append("the Message-ID is not of the form <...@...>")
    try:
        email.utils.parsedate_to_datetime(str(message.get("Date", "")))
    except (TypeError, ValueError):
        problems.append("the Date is not an RFC 5322 date")
    for name in ("Cc", "Bcc"):
        if message.get_all(name):
            problems.append(f"the message has a {name} header")
    return problems


def _check_footer(
    config: Config, message: EmailMessage, text: str, visible: VisibleHtml, footer: FooterHtml, *, notice: bool
) -> list[str]:
    """What the footer must say in both parts: for a campaign the ad label and the unsubscribe
    link, for a notice neither; for both, who sends it, from where, and the privacy policy."""
    problems: list[str] = []
    company = config.company
    wanted = {
        "the company name": company.name,
        "the postal address": company.postal_address,
    }
    links = {"the privacy policy link": company.privacy_url}
    unsubscribe_url = ""
    if notice:
        label = config.compliance.ad_label
        if _has_phrase(text, label) or _has_phrase(visible.text, label):
            problems.append(f"a notice must not carry the advertisement label {label!r}")
        if message.get_all("List-Unsubscribe"):
            problems.append("a notice must not carry List-Unsubscribe")
    else:
        wanted["the advertisement label"] = config.compliance.ad_label
        unsubscribe_url = _check_list_unsubscribe(config, message, problems)
        if unsubscribe_url:
            links["the unsubscribe link"] = unsubscribe_url
        links["the preference centre link"] = _preferences_url(config, text, problems)
    # the footer is the system's, after the template's box where nothing of the template reaches:
    # what it says is what a reader sees
    for what, phrase in wanted.items():
        if not _has_phrase(text, phrase):
            problems.append(f"{what} is missing from the text part")
        if not _has_phrase(footer.text, phrase):
            problems.append(f"{what} is missing from the footer of the HTML part")
    for what, url in links.items():
        if url not in text:
            problems.append(f"{what} is missing from the text part")
        if url not in footer.hrefs:
            problems.append(f"{what} is missing from the footer of the HTML part")
    return problems


def check_equivalence(html_body: str, text_body: str) -> list[str]:
    """The text part must say what the HTML part says (SpamAssassin MPART_ALT_DIFF)."""
    html_words = set(_WORD.findall(VisibleHtml.read(html_body).text.casefold()))
    text_words = set(_WORD.findall(text_body.casefold()))
    if not html_words and not text_words:
        return ["the campaign's text and HTML are both empty"]
    shared = len(html_words & text_words)
    if shared / max(len(html_words), len(text_words)) < MIN_SHARED_WORDS:
        return [
            f"the text part and the HTML part say different things (only {shared} of "
            f"{max(len(html_words), len(text_words))} words in common); make the .txt.j2 match the HTML"
        ]
    return []


def _check_list_unsubscribe(config: Config, message: EmailMessage, problems: list[str]) -> str:
    """Checks List-Unsubscribe and -Post; returns the https URL when it is well-formed."""
    values = [" ".join(str(v).split()) for v in message.get_all("List-Unsubscribe", [])]
    posts = [str(v) for v in message.get_all("List-Unsubscribe-Post", [])]
    if posts != ["List-Unsubscribe=One-Click"]:
        problems.append("the message needs exactly one 'List-Unsubscribe-Post: List-Unsubscribe=One-Click'")
    if len(values) != 1:
        problems.append(f"the message has {len(values)} List-Unsubscribe headers, not 1")
        return ""
    match = _LIST_UNSUBSCRIBE.match(values[0])
    if match is None:
        problems.append(f"List-Unsubscribe is not '<https://...>, <mailto:...>': {values[0]!r}")
        return ""
    url = match[1]
    token = url.rpartition("/u/")[2]
    try:
        claim = read_unsubscribe_token(config.require_secret_keys(), token)
    except MailerError:
        problems.append("the unsubscribe token in List-Unsubscribe does not verify")
        return url
    if match[2] and not match[2].endswith(f"?subject=unsubscribe%20{token}"):
        problems.append("the mailto: unsubscribe address does not carry the same token")
    if claim.subscriber_id <= 0:
        problems.append("the unsubscribe token names no subscriber")
    return url


def _preferences_url(config: Config, text: str, problems: list[str]) -> str:
    """The footer's signed link to the subscriber's preference centre, as the text part gives it."""
    base = config.unsubscribe.base_url.rstrip("/") + "/p/"
    found = re.search(re.escape(base) + r"([A-Za-z0-9_.\-]+)", text)
    if found is None:
        return base  # reported below as missing from both parts
    try:
        read_preferences_token(config.require_secret_keys(), found[1])
    except MailerError:
        problems.append("the preference centre link does not verify")
    return found[0]


def _has_phrase(haystack: str, phrase: str) -> bool:
    return " ".join(phrase.split()).casefold() in " ".join(haystack.split()).casefold()


def _unique(problems: list[str]) -> list[str]:
    return list(dict.fromkeys(problems))
