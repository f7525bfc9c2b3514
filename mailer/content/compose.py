"""Builds campaign messages: the invariant MIME skeleton once per campaign, the per-recipient parts fast."""

from __future__ import annotations

import contextlib
import datetime as dt
import email.policy
import functools
import json
import re
import time
import uuid
from base64 import b64encode
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import jinja2
from markupsafe import Markup, escape

from mailer.addresses import parse_mailbox
from mailer.config import Config, SmtpProvider
from mailer.content.containment import CONTAINER_ID, CONTAINER_STYLE, ContainedHtml, contain_html
from mailer.content.dkim import DkimSigner, signer_from_config
from mailer.content.sandbox import MAX_RENDER_SECONDS, RenderTimeout, marking_outputs, render_clock
from mailer.content.shapes import GIVE_UP_AFTER, ShapeCache, shape_of
from mailer.content.templating import (
    TemplateSource,
    compile_campaign_templates,
    html_to_text,
    is_full_document,
    layout_environment,
    referenced_names,
    render_template,
)
from mailer.content.wire import (
    QuotedPrintableLines,
    dot_stuffed,
    is_clean_head,
    seven_bit,
    smtp_wire,
)
from mailer.errors import InvalidInputError, TemplateError
from mailer.kinds import CampaignKind
from mailer.plus_tag import make_unsubscribe_address
from mailer.tokens import UnsubscribeClaim, make_preferences_token, make_unsubscribe_token
from mailer.verp import PROVIDER_REFERENCE_NAME, make_return_path

if TYPE_CHECKING:
    from mailer.models import Campaign, MailingList

TEST_SUBJECT_PREFIX = "[TEST] "
# a subscriber id no real row reaches: links in previews and test messages unsubscribe nobody
SAMPLE_SUBSCRIBER_ID = 2**31 - 1
# names whose value differs per recipient; a template using none of them is rendered once
PERSONAL_NAMES = frozenset({"subscriber", "unsubscribe_url"})
DEFAULT_NOTICE_REASON = "it concerns your account or your subscription with us"

_SLOT = "\x00{}\x00"  # markers in the pre-rendered layout; no template or escaping produces NUL
_SLOT_RE = re.compile("\x00([a-z_]+)\x00")
# markers for subscriber values in a probe rendering of a personal HTML template (see _Probe)
_PROBE = "\x01{}\x01"
_PROBE_RE = re.compile("\x01([a-z0-9]+)\x01")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_ADDRESS_SPEC = re.compile(r"^[^\s<>()\[\]\\,;:\"@\x00-\x1f\x7f]+@[^\s<>()\[\]\\,;:\"@\x00-\x1f\x7f]+$")
_HEADER_POLICY = email.policy.SMTP


@dataclass(frozen=True)
class Recipient:
    """One person a message is rendered for."""

    delivery_id: int  # used for the VERP Return-Path and nothing else
    subscriber_id: int
    email: str
    name: str
    attributes: dict[str, Any]
    subscribed_at: dt.datetime | None  # for the "why you get this" footer line


@dataclass(frozen=True)
class RenderedMessage:
    """A finished message and its envelope."""

    envelope_from: str  # the VERP return path, for MAIL FROM
    recipient: str  # the single RCPT TO
    message_id: str  # "<...@sending-domain>", the same for every resend to this subscriber
    data: bytes  # the complete RFC 5322 message, CRLF line endings, DKIM-Signature first when signed
    # the message as SMTP carries it after DATA (see wire.smtp_wire), made where the message is
    # rendered so the sending loop does not scan it again; derived from data when not given
    wire: bytes = b""

    def __post_init__(self) -> None:
        if not self.wire:
            object.__setattr__(self, "wire", smtp_wire(self.data))

    @property
    def outgoing(self) -> Outgoing:
        return Outgoing(self.envelope_from, self.recipient, self.wire)


class Outgoing(NamedTuple):
    """What the sending loop needs of a rendered message: a render helper sends it this, half the bytes."""

    envelope_from: str
    recipient: str
    wire: bytes


@dataclass(frozen=True)
class CampaignContent:
    """What the composer reads of a campaign and its list, as plain values.

    A render helper is given this rather than loading the campaign itself: it then starts
    without the database layer, in a third of the time, while the sender renders for it."""

    id: int
    kind: CampaignKind
    subject: str
    from_address: str
    template_name: str
    html_template: str
    text_template: str | None
    notice_reason: str
    archived: bool
    list_id: int | None  # None: the campaign goes to no list (a notice to everyone)
    list_name: str
    list_title: str  # the list's title, else its name

    @classmethod
    def of(cls, campaign: Campaign, mailing_list: MailingList | None) -> CampaignContent:
        return cls(
            id=campaign.id, kind=campaign.kind, subject=campaign.subject, from_address=campaign.from_address,
            template_name=campaign.template_name, html_template=campaign.html_template,
            text_template=campaign.text_template, notice_reason=campaign.notice_reason,
            archived=campaign.archived,
            list_id=mailing_list.id if mailing_list is not None else None,
            list_name=mailing_list.name if mailing_list is not None else "",
            list_title=(mailing_list.title or mailing_list.name) if mailing_list is not None else "",
        )


class SampleAttributes(dict[str, Any]):
    """Attributes of the sample subscriber: any key a template asks for shows as `[key]`."""

    def __missing__(self, key: str) -> str:
        return f"[{key}]"


def sample_recipient(email: str = "subscriber@example.com", name: str = "Sample Subscriber") -> Recipient:
    """A made-up recipient for previews and checks of a list with nobody on it yet."""
    return Recipient(
        delivery_id=0, subscriber_id=SAMPLE_SUBSCRIBER_ID, email=email, name=name,
        attributes=SampleAttributes(), subscribed_at=None,
    )


def archive_url(config: Config, campaign: Campaign | CampaignContent) -> str:
    """Where an archived campaign can be read in a browser ("" when it is not archived)."""
    if not campaign.archived or campaign.kind is not CampaignKind.CAMPAIGN:
        return ""
    return f"{config.unsubscribe.base_url.rstrip('/')}/archive/{campaign.id}"


def neutral_recipient() -> Recipient:
    """Nobody: the archive's reader, with no name, no address and no attribute values."""
    return Recipient(delivery_id=0, subscriber_id=SAMPLE_SUBSCRIBER_ID, email="", name="",
                     attributes=NeutralAttributes(), subscribed_at=None)


class NeutralAttributes(dict[str, Any]):
    """Attributes of nobody: every key a template asks for is empty."""

    def __missing__(self, key: str) -> str:
        return ""


def one_line(text: str) -> str:
    """Any control character (CR, LF, TAB, NEL, U+2028...) becomes a space: data never breaks a header."""
    return _CONTROL.sub(" ", text).strip()


def header_address(email_address: str) -> str:
    """The address as it goes into To and RCPT TO; raises InvalidInputError when it cannot."""
    address = email_address.strip()
    if not _ADDRESS_SPEC.match(address):
        raise InvalidInputError(f"cannot address a message to {email_address!r}")
    local, _, domain = address.rpartition("@")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidInputError(f"cannot address a message to {email_address!r}: bad domain") from None
    if not local.isascii():
        raise InvalidInputError(
            f"cannot address a message to {email_address!r}: a non-ASCII mailbox name needs SMTPUTF8"
        )
    return f"{local}@{domain}"


def encoded_words(text: str) -> str:
    """RFC 2047 base64 encoded words of at most 75 characters, folded onto continuation lines."""
    words = []
    chunk = ""
    for char in text:
        if len((chunk + char).encode("utf-8")) > 45:  # 45 bytes -> 60 base64 chars -> 72-char word
            words.append(chunk)
            chunk = ""
        chunk += char
    if chunk:
        words.append(chunk)
    return "\r\n ".join(
        "=?utf-8?b?" + b64encode(word.encode("utf-8")).decode("ascii") + "?=" for word in words
    )


def display_phrase(name: str) -> str:
    """A display name as a header phrase: a quoted string when ASCII, else RFC 2047 encoded words."""
    display = one_line(name)
    if not display:
        return ""
    if display.isascii() and "=?" not in display:
        quoted = display.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{quoted}"'
    return encoded_words(display)


def format_mailbox(name: str, address: str) -> str:
    """`"Name" <address>`, or the bare address when there is no name."""
    phrase = display_phrase(name)
    return f"{phrase} <{address}>" if phrase else address


def mailbox_line(name: str, value: str) -> bytes:
    """A From or Reply-To line built from the mailbox's parts, never from the string as typed.

    Raises InvalidInputError when the value is not one plain mailbox (see parse_mailbox).
    """
    mailbox = parse_mailbox(value)
    header = format_mailbox(mailbox.display_name, header_address(mailbox.addr_spec))
    return f"{name}: {header}\r\n".encode("ascii")


def fold_header(name: str, value: str) -> bytes:
    """A header line folded and RFC 2047-encoded by the standard library, for values fixed per campaign."""
    _, header = _HEADER_POLICY.header_store_parse(name, one_line(value))
    return str(_HEADER_POLICY.fold(name, header)).encode("ascii")


def subject_header(subject: str) -> bytes:
    """The Subject line; text that looks like an encoded word is itself encoded, so readers show it as typed.

    The standard library would take `=?utf-8?q?Re:_hi?=` for an encoded word and send it on as
    "Re: hi", past the gate that judged the subject as typed; and folding non-ASCII text it can
    drop a blank between two encoded words. Our own words decode back exactly.
    """
    if "=?" in subject or not subject.isascii():
        return b"Subject: " + encoded_words(one_line(subject)).encode("ascii") + b"\r\n"
    return fold_header("Subject", subject)


def subscribed_phrase(subscribed_at: dt.datetime | None) -> str:
    if subscribed_at is None:
        return ""
    return f" on {subscribed_at.day} {_month_and_year(subscribed_at.year, subscribed_at.month)}"


@functools.lru_cache(maxsize=256)
def _month_and_year(year: int, month: int) -> str:
    # strftime for every message cost more than the rest of the footer's values
    return f"{dt.date(year, month, 1):%B %Y}"


class _Skeleton:
    """Text rendered once with slot markers; filling the slots is a join, not a render."""

    def __init__(self, rendered: str, slots: re.Pattern[str] = _SLOT_RE) -> None:
        pieces = slots.split(rendered)
        self.static = pieces[0::2]
        self.slots = pieces[1::2]

    def fill(self, values: Mapping[str, str]) -> str:
        out = [self.static[0]]
        for name, text in zip(self.slots, self.static[1:], strict=True):
            out.append(values[name])
            out.append(text)
        return "".join(out)


class _ProbeAttributes(dict[str, Any]):
    """Attributes that answer every key with a marker, remembering which key each marker stands for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def __missing__(self, key: str) -> str:
        if key not in self.asked:
            self.asked.append(key)
        return _PROBE.format(f"a{self.asked.index(key)}")

    def get(self, key: str, default: Any = None) -> Any:
        return self[key]


class _Probe:
    """A personal HTML template rendered once with markers, for what stays the same for everyone.

    Parsing, inlining and deriving text cost milliseconds a message. When a recipient's rendering
    equals the probe's with their values in place of the markers, the template took the same
    path for them: their contained HTML is the probe's shape filled with their values (see
    shapes; a value in an unquoted attribute stays whole there), and their derived text the
    probe's with their values in place. Any other rendering (a branch
    on a value, a filter that changed one) is contained and converted as usual.
    """

    def __init__(self, template: jinja2.Template, context: Mapping[str, Any], *, derive_text: bool) -> None:
        self._attributes = _ProbeAttributes()
        subscriber = {"email": _PROBE.format("e"), "name": _PROBE.format("n"), "attributes": self._attributes}
        raw = render_template(
            template, {**context, "subscriber": subscriber, "unsubscribe_url": _PROBE.format("u")},
            label="HTML template",
        )
        self._raw = _Skeleton(raw, _PROBE_RE)
        # values go only where their text cannot change the structure (see shapes)
        self._shape = shape_of(self._raw.static, unquoted_whole=True)
        self._text = _Skeleton(html_to_text(contain_html(raw).body), _PROBE_RE) if derive_text else None
        self._held = 0
        self._failed = 0

    @property
    def gave_up(self) -> bool:
        """The probe held for none of the first GIVE_UP_AFTER recipients (a value the template
        derives, say a first name, differs from its marker) and brings only HTML, which the
        shapes give as well: trying it for each recipient would cost time for nothing."""
        return self._text is None and not self._held and self._failed >= GIVE_UP_AFTER

    def bodies(self, raw: str, recipient: Recipient, url: str) -> tuple[ContainedHtml | None, str | None] | None:
        """None when the probe does not hold for the recipient; else their contained HTML and derived
        text, each None where it cannot be had from the probe (the HTML is then contained as is)."""
        values = {"e": recipient.email, "n": recipient.name, "u": url}
        for index, key in enumerate(self._attributes.asked):
            if key not in recipient.attributes:
                return None
            values[f"a{index}"] = str(recipient.attributes[key])
        escaped = {slot: str(escape(value)) for slot, value in values.items()}
        if self._raw.fill(escaped) != raw:
            self._failed += 1
            return None
        self._held += 1
        html = None
        if self._shape is not None:
            html = self._shape.fill_escaped([escaped[name] for name in self._raw.slots])
        text = None
        # the converter folds runs of blanks as a browser would; values holding them take the slow path
        if self._text is not None and all(" ".join(value.split()) == value for value in values.values()):
            text = self._text.fill(values)
        return html, text


class Composer:
    """Renders one campaign's personalized messages; build one per campaign and reuse it."""

    def __init__(
        self, config: Config, campaign: Campaign, mailing_list: MailingList | None, *, test: bool = False
    ) -> None:
        """Parse/compile the campaign's templates ONCE (raises TemplateError); `test=True` marks the subject.

        Raises ConfigError when no signing key is set or the DKIM key cannot be read, and
        InvalidInputError when From or Reply-To is not one plain mailbox.
        """
        self._setup(config, CampaignContent.of(campaign, mailing_list), test)

    @classmethod
    def for_content(cls, config: Config, content: CampaignContent) -> Composer:
        """The composer of a campaign given as its content (see CampaignContent); raises as __init__ does."""
        composer = cls.__new__(cls)
        composer._setup(config, content, test=False)
        return composer

    def _setup(self, config: Config, campaign: CampaignContent, test: bool) -> None:
        self.content = campaign
        self._config = config
        self._keys = config.require_secret_keys()
        self._test = test
        self.campaign_id = campaign.id
        self.is_notice = campaign.kind is CampaignKind.NOTICE
        self._list_id = campaign.list_id
        self._domain = config.sender.sending_domain
        self._unsubscribe_base = config.unsubscribe.base_url.rstrip("/") + "/u/"
        self._preferences_base = config.unsubscribe.base_url.rstrip("/") + "/p/"
        self._mailto = config.unsubscribe.mailto
        self._plus_tag = config.unsubscribe.mailto_plus_tag and bool(self._mailto)
        self.subject = (TEST_SUBJECT_PREFIX if test else "") + one_line(campaign.subject)
        self._signer: DkimSigner | None = signer_from_config(config)
        self._provider = config.smtp.provider

        name = campaign.template_name or f"campaign {campaign.id}"
        source = TemplateSource(name=name, html=campaign.html_template, text=campaign.text_template)
        self._html_template, self._text_template = compile_campaign_templates(source)
        self._html_personal = bool(referenced_names(source.html, html=True) & PERSONAL_NAMES)
        self._text_personal = source.text is not None and bool(
            referenced_names(source.text, html=False) & PERSONAL_NAMES
        )
        self._full_document = is_full_document(source.html)
        list_title = campaign.list_title
        # plain dicts: the sandbox looks keys up directly, where attributes cost a safety check each
        self._context: dict[str, Any] = {
            "campaign": {
                "id": campaign.id, "subject": one_line(campaign.subject), "kind": campaign.kind.value,
                "list_name": campaign.list_name, "list_title": list_title,
            },
            "company": {
                "name": config.company.name, "postal_address": config.company.postal_address,
                "privacy_url": config.company.privacy_url,
            },
            "view_in_browser_url": archive_url(config, campaign),  # "" while it is not published
        }
        self._prepare_static()
        self._build_layout(list_title, campaign.notice_reason)
        self._build_headers(campaign, list_title)

    def _prepare_static(self) -> None:
        """Render, contain and convert once what is the same for every recipient."""
        # templates that use no per-recipient name are rendered, contained and converted once, here
        self._static_html: ContainedHtml | None = None
        if not self._html_personal:
            self._static_html = contain_html(self._render_html(self._context))
        self._static_text: str | None = None
        if self._text_template is not None and not self._text_personal:
            self._static_text = self._render_text(self._context)
        elif self._text_template is None and self._static_html is not None:
            self._static_text = html_to_text(self._static_html.body)
        self._probe: _Probe | None = None
        self._shapes = ShapeCache()
        if self._static_html is None:
            # a template that needs real values (say a number) cannot be probed; each one is contained
            with contextlib.suppress(TemplateError):
                self._probe = _Probe(self._html_template, self._context, derive_text=self._text_template is None)

    def _build_layout(self, list_title: str, notice_reason: str) -> None:
        env = layout_environment()
        context: dict[str, Any] = {
            **self._context,
            "subject": self.subject,
            "notice": self.is_notice,
            "notice_reason": one_line(notice_reason) or DEFAULT_NOTICE_REASON,
            "ad_label": self._config.compliance.ad_label,
            "list_title": list_title or f"mail from {self._config.company.name}",
            "unsubscribe_url": _SLOT.format("unsubscribe_url"),
            "preferences_url": _SLOT.format("preferences_url"),
            "recipient_email": _SLOT.format("recipient_email"),
            "subscribed_on": _SLOT.format("subscribed_on"),
        }
        try:
            html = env.get_template("layout.html.j2").render({
                **context,
                "document": self._full_document,
                "container_id": CONTAINER_ID,
                "container_style": CONTAINER_STYLE,
                "body": Markup(_SLOT.format("body")),
                "template_css": Markup(_SLOT.format("template_css")),
            })
            text = env.get_template("layout.txt.j2").render({**context, "body": _SLOT.format("body")})
        except jinja2.TemplateError as exc:  # our own templates: a packaging fault, not user input
            raise RuntimeError(f"the email layout templates are broken: {exc}") from exc
        self._html_layout = _Skeleton(html)
        self._text_layout = _Skeleton(text)

    def _build_headers(self, campaign: CampaignContent, list_title: str) -> None:
        config = self._config
        # '=_' never occurs in quoted-printable text; a 7bit part holding the boundary goes quoted-printable
        self._boundary = f"=_hm_{uuid.uuid4().hex}"
        self._from_line = mailbox_line("From", campaign.from_address or config.sender.from_address)
        self._subject_line = subject_header(self.subject)
        middle = [b"MIME-Version: 1.0\r\n"]
        if config.sender.reply_to:
            middle.append(mailbox_line("Reply-To", config.sender.reply_to))
        if campaign.list_id is not None and not self.is_notice:
            # RFC 2919: an optional phrase, then the list's unique id in angle brackets
            list_id = f"{campaign.list_name}.{self._domain}"
            phrase = display_phrase(list_title)
            value = f"{phrase} <{list_id}>" if phrase else f"<{list_id}>"
            middle.append(b"List-Id: " + value.encode("ascii") + b"\r\n")
        self._middle_lines = b"".join(middle)
        tail = []
        if not self.is_notice:
            tail.append(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
        tail.append(f'Content-Type: multipart/alternative;\r\n boundary="{self._boundary}"\r\n'.encode("ascii"))
        tail.append(b"\r\n")
        self._tail_lines = b"".join(tail)
        self._part_headers = {(subtype, encoding): self._part_header(subtype, encoding)
                              for subtype in ("plain", "html") for encoding in ("7bit", "quoted-printable")}
        self._closing = f"\r\n--{self._boundary}--\r\n".encode("ascii")
        self._date_cache: tuple[int, bytes] = (0, b"")
        self._qp = QuotedPrintableLines()

    def _part_header(self, subtype: str, encoding: str) -> bytes:
        charset = "us-ascii" if encoding == "7bit" else "utf-8"
        return (
            f"--{self._boundary}\r\n"
            f'Content-Type: text/{subtype}; charset="{charset}"\r\n'
            f"Content-Transfer-Encoding: {encoding}\r\n\r\n"
        ).encode("ascii")

    def _part(self, subtype: str, text: str) -> bytes:
        """A part with its header: as written when it is plain ASCII in short lines (most of a
        campaign's are, and encoding them cost more than rendering), else quoted-printable."""
        content = seven_bit(text, self._boundary)
        if content is not None:
            return self._part_headers[subtype, "7bit"] + content
        return self._part_headers[subtype, "quoted-printable"] + self._qp.encode(text)

    def _render_html(self, context: Mapping[str, Any]) -> str:
        return render_template(self._html_template, context, label="HTML template")

    def _render_text(self, context: Mapping[str, Any]) -> str:
        assert self._text_template is not None
        return render_template(self._text_template, context, label="text template")

    def unsubscribe_token(self, recipient: Recipient) -> str:
        return make_unsubscribe_token(self._keys, recipient.subscriber_id, self._list_id, self.campaign_id)

    def preferences_url(self, recipient: Recipient) -> str:
        """The footer's link to the preference centre: signed per subscriber, never expires."""
        return self._preferences_base + make_preferences_token(self._keys, recipient.subscriber_id)

    def message_id(self, recipient: Recipient) -> str:
        if self._test:
            return f"<test-{self.campaign_id}.{uuid.uuid4().hex}@{self._domain}>"
        kind = "notice" if self.is_notice else "campaign"
        return f"<{kind}-{self.campaign_id}.subscriber-{recipient.subscriber_id}@{self._domain}>"

    def render(self, recipient: Recipient) -> RenderedMessage:
        """Render one personalized message; Date is set now (the message is handed to SMTP right after).

        Raises TemplateError when the template fails for this recipient (say an attribute it
        lacks, or a name or attribute stored before text that is not UTF-8 was refused) and
        InvalidInputError when the address cannot be put in a header.
        """
        try:
            # one clock for all of the message's renders: arming it costs more than a small render
            with render_clock():
                return self._render_message(recipient)
        except RenderTimeout:
            raise TemplateError(
                f"rendering the message took longer than {MAX_RENDER_SECONDS:g} seconds; "
                "a loop in the template runs away"
            ) from None
        except UnicodeEncodeError as exc:
            if not "\ud800" <= exc.object[exc.start] <= "\udfff":
                raise
            # a lone surrogate stored by an older version: it fails this subscriber's message,
            # never the whole run
            raise TemplateError(
                "the subscriber's name or an attribute is not valid UTF-8; correct it with `subscriber update`"
            ) from None

    def _render_message(self, recipient: Recipient) -> RenderedMessage:
        address = header_address(recipient.email)
        token = self.unsubscribe_token(recipient)
        url = self._unsubscribe_base + token
        html_body, text_body = self._bodies(recipient, url)
        phrase = subscribed_phrase(recipient.subscribed_at)
        # a notice's footer has no preference link: its slot is not in the layout
        preferences = "" if self.is_notice else self.preferences_url(recipient)
        html = self._html_layout.fill(
            {"body": html_body.body, "template_css": _style_element(html_body.css),
             "unsubscribe_url": str(escape(url)), "preferences_url": str(escape(preferences)),
             "recipient_email": str(escape(address)), "subscribed_on": phrase}
        )
        text = self._text_layout.fill(
            {"body": text_body.rstrip("\n"), "unsubscribe_url": url, "preferences_url": preferences,
             "recipient_email": address, "subscribed_on": phrase}
        )
        message_id = self.message_id(recipient)
        envelope_from = make_return_path(self._config, recipient.delivery_id)
        lines = [
            self._from_line,
            b"To: " + format_mailbox(recipient.name, address).encode("ascii") + b"\r\n",
            self._subject_line,
            self._date_line(),
            b"Message-ID: " + message_id.encode("ascii") + b"\r\n",
            self._middle_lines,
        ]
        if self._provider is not SmtpProvider.NONE:
            # the return path's signed local part: the provider echoes it in its webhooks
            lines.append(provider_header(self._provider, envelope_from.partition("@")[0]))
        if not self.is_notice:
            unsubscribe = f"List-Unsubscribe: <{url}>"
            if self._mailto:
                mailto = self._mailto
                if self._plus_tag:
                    claim = UnsubscribeClaim(recipient.subscriber_id, self._list_id, self.campaign_id)
                    mailto = make_unsubscribe_address(self._keys[0], mailto, claim)
                unsubscribe += f",\r\n <mailto:{mailto}?subject=unsubscribe%20{token}>"
            lines.append(unsubscribe.encode("ascii") + b"\r\n")
        lines.append(self._tail_lines)
        return self._finished(envelope_from, address, message_id, b"".join(lines),
                              (self._part("plain", text), self._part("html", html)))

    def _finished(self, envelope_from: str, address: str, message_id: str, head: bytes,
                  parts: tuple[bytes, bytes]) -> RenderedMessage:
        """The message from its head and its two parts, signed when DKIM is set, and its wire form."""
        text, html = parts
        data = b"".join((head, text, b"\r\n", html, self._closing))
        if self._signer is not None:
            signature = self._signer.sign(data)
            data, head = signature + data, signature + head
        # only a line of a part can start with a dot; the rest is ours and needs no pass over it
        if is_clean_head(head):
            wire = b"".join((head, dot_stuffed(text), b"\r\n", dot_stuffed(html), self._closing,
                             b".\r\n"))
        else:
            wire = smtp_wire(data)
        return RenderedMessage(envelope_from=envelope_from, recipient=address, message_id=message_id,
                               data=data, wire=wire)

    def campaign_bodies(self, recipient: Recipient) -> tuple[str, str]:
        """The campaign's own HTML (as it goes in the box) and text for a recipient, without layout and footer."""
        html, text = self._bodies(recipient, self._unsubscribe_base + self.unsubscribe_token(recipient))
        return html.body, text

    def public_bodies(self, unsubscribe_url: str) -> ContainedHtml:
        """The campaign's own HTML for the public archive: rendered for nobody, with `unsubscribe_url`
        (a page, not anyone's token) wherever the template links to unsubscribe."""
        html, _ = self._bodies(neutral_recipient(), unsubscribe_url)
        return html

    def left_out(self, recipient: Recipient) -> tuple[str, ...]:
        """What the template may not do and what is left out of its HTML for this recipient, one line each."""
        html, _ = self._bodies(recipient, self._unsubscribe_base + self.unsubscribe_token(recipient))
        return html.left_out

    def _bodies(self, recipient: Recipient, url: str) -> tuple[ContainedHtml, str]:
        context: dict[str, Any] | None = None
        probed_text: str | None = None
        if self._static_html is not None:
            html_body = self._static_html
        else:
            context = self._personal_context(recipient, url)
            raw = self._render_html(context)
            probe = self._probe
            probed = probe.bodies(raw, recipient, url) if probe is not None and not probe.gave_up else None
            if probed is None:
                shaped = self._shaped(context, raw)
            else:
                # the probe held: its shape is this rendering's, and where it has none no shape fits
                shaped, probed_text = probed
            html_body = shaped if shaped is not None else contain_html(raw)
        if self._static_text is not None:
            text_body = self._static_text
        elif self._text_template is not None:
            text_body = self._render_text(context or self._personal_context(recipient, url))
        else:
            text_body = probed_text if probed_text is not None else html_to_text(html_body.body)
        return html_body, text_body

    def _shaped(self, context: Mapping[str, Any], raw: str) -> ContainedHtml | None:
        """The recipient's contained HTML from the shape their rendering shares with others, if it does."""
        if self._shapes.gave_up:
            return None
        if (known := self._shapes.known(raw)) is not None:
            return known  # no marked rendering needed
        try:
            with marking_outputs():
                marked = self._render_html(context)
        except TemplateError:
            return None
        return self._shapes.contained(marked, raw)

    def _personal_context(self, recipient: Recipient, url: str) -> dict[str, Any]:
        subscriber = {"email": recipient.email, "name": recipient.name, "attributes": recipient.attributes}
        return {**self._context, "subscriber": subscriber, "unsubscribe_url": url}

    def _date_line(self) -> bytes:
        # one Date per second is exact to the second and saves formatting it per message
        now = int(time.time())
        if self._date_cache[0] != now:
            stamp = format_datetime(dt.datetime.fromtimestamp(now, dt.UTC))
            self._date_cache = (now, f"Date: {stamp}\r\n".encode("ascii"))
        return self._date_cache[1]


def provider_header(provider: SmtpProvider, reference: str) -> bytes:
    """The header in which the relay's provider keeps our delivery reference and echoes it in its webhooks."""
    name = PROVIDER_REFERENCE_NAME
    if provider is SmtpProvider.SES:
        line = f"X-SES-MESSAGE-TAGS: {name}={reference}"
    elif provider is SmtpProvider.SENDGRID:
        line = "X-SMTPAPI: " + json.dumps({"unique_args": {name: reference}})
    elif provider is SmtpProvider.POSTMARK:
        line = f"X-PM-Metadata-{name}: {reference}"
    else:
        line = "X-Mailgun-Variables: " + json.dumps({name: reference})
    return line.encode("ascii") + b"\r\n"


def _style_element(css: str) -> str:
    """The template's kept @media rules for the <head>; they may select only inside the box."""
    return f"<style>\n{css}\n</style>" if css else ""
