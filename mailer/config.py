"""Loads and validates mailer.toml: defaults, then the file, then secrets from the environment."""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from email.utils import parseaddr
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mailer.addresses import parse_mailbox
from mailer.errors import ConfigError, InvalidInputError
from mailer.plus_tag import MAX_LOCAL_PART_OCTETS, ROOM_NEEDED, room_for_tag

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

DEFAULT_CONFIG_NAME = "mailer.toml"
DEFAULT_POSTAL_ADDRESS = (
    "1968 S Coast HWY #2045, Laguna Beach, California 92651, United States"
)
# an address made of these words is a template left unfilled, not a real place
PLACEHOLDER_WORDS = ("todo", "tbd", "changeme", "change me", "your address", "example", "xxx",
                     "123 main st", "address here", "placeholder")
# a feedback-loop sender: one address, or one domain (dot-separated labels)
_FEEDBACK_LOOP_SENDER = re.compile(
    r"(?:[^@\s\"(),:;<>\[\]\\]+@)?(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z0-9-]*[A-Za-z]"
)

# what Flask-Limiter's parser reads, one limit only: "10 per hour", "10/hour", "3 per 1 day"
_RATE_LIMIT = re.compile(r"[1-9][0-9]*\s*(?:per|/)\s*(?:[1-9][0-9]*\s+)?(?:second|minute|hour|day|month|year)s?")


# an EHLO name: dot-separated labels, or an address literal such as [192.0.2.1]
_HELO_NAME = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                        r"|\[[0-9A-Fa-f:.]+\]|\[IPv6:[0-9A-Fa-f:.]+\]")


def public_url(url: str) -> str:
    """The database URL without its password, for messages and logs."""
    from sqlalchemy.engine import make_url

    if not _parses_as_url(url):
        # no telling which part of it is the password: show none of it
        return "<not a database URL>"
    return make_url(url).render_as_string(hide_password=True)


def _parses_as_url(url: str) -> bool:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except ArgumentError:
        return False
    return True


class StartTLS(enum.StrEnum):
    """How the SMTP connection is protected."""

    REQUIRED = "required"  # refuse to send unless STARTTLS succeeds (loopback excepted)
    OPPORTUNISTIC = "opportunistic"  # use STARTTLS when the server offers it
    OFF = "off"  # never; only for relays on loopback or a trusted network


class SmtpProvider(enum.StrEnum):
    """The relay behind smtp.host, when it is a provider that reports bounces by webhook."""

    NONE = "none"  # our own MTA or another relay: no provider header
    SES = "ses"  # Amazon SES: X-SES-MESSAGE-TAGS
    SENDGRID = "sendgrid"  # SendGrid: X-SMTPAPI unique_args
    POSTMARK = "postmark"  # Postmark: X-PM-Metadata-*
    MAILGUN = "mailgun"  # Mailgun: X-Mailgun-Variables


class UnsubscribeScope(enum.StrEnum):
    """What one unsubscribe removes the recipient from."""

    ALL = "all"  # every list and every campaign: the privacy policy's promise
    LIST = "list"  # only the list the message was sent to


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "sqlite:///mailer.db"
    reconnect_for: float = 60.0  # seconds a send waits for a database that went away before it gives up

    def __repr__(self) -> str:
        # a PostgreSQL URL may carry a password; a config ends up in logs and tracebacks
        return f"DatabaseConfig(url={public_url(self.url)!r}, reconnect_for={self.reconnect_for!r})"


@dataclass(frozen=True)
class CompanyConfig:
    name: str = "Harmony Mails"
    postal_address: str = DEFAULT_POSTAL_ADDRESS
    privacy_url: str = "https://harmonymails.com/privacy"


@dataclass(frozen=True)
class SenderConfig:
    from_address: str = "Harmony Mails <news@harmonymails.com>"
    reply_to: str = ""
    bounce_domain: str = "bounces.harmonymails.com"
    domain: str = ""  # the sending domain; empty means the domain of from_address

    @property
    def from_domain(self) -> str:
        """The domain of from_address, lower-cased."""
        return parseaddr(self.from_address)[1].rpartition("@")[2].lower()

    @property
    def sending_domain(self) -> str:
        if self.domain:
            return self.domain.lower()
        return self.from_domain


@dataclass(frozen=True)
class SmtpConfig:
    host: str = "127.0.0.1"
    port: int = 25
    username: str = ""
    password: str = field(default="", repr=False)
    starttls: StartTLS = StartTLS.REQUIRED
    timeout: float = 30.0
    connections: int = 4
    messages_per_second: float = 0.0  # 0 means no limit
    retry_for: float = 24 * 3600.0  # seconds a deferred message keeps being retried
    max_consecutive_errors: int = 10  # connection failures in a row before a campaign pauses
    # the provider behind the relay: its header carries each delivery's signed reference
    provider: SmtpProvider = SmtpProvider.NONE
    ca_file: str = ""  # PEM: a private CA or the relay's own certificate, trusted besides the system's
    client_cert: str = ""  # PEM certificate shown to a relay that asks for one
    client_key: str = ""  # its private key, when not in client_cert's file
    helo_name: str = ""  # the name said in EHLO; empty: this machine's fully qualified name

    @property
    def is_loopback(self) -> bool:
        return _is_loopback(self.host)


@dataclass(frozen=True)
class SendingConfig:
    batch_size: int = 100  # deliveries claimed at once; bounds memory and what a crash leaves in doubt
    max_lateness: float = 24 * 3600.0  # seconds past its time a scheduled campaign may still start
    soft_bounce_limit: int = 3  # transient bounces from different campaigns before suppression
    claim_timeout: float = 300.0  # seconds without a heartbeat before another host takes a claim as in doubt
    render_processes: int = 1  # helper processes rendering ahead in large sends; 0: render in the sender
    policy_block_pause_share: float = 0.05  # share of tried deliveries refused by policy that pauses; 0: never
    policy_block_pause_min: int = 20  # deliveries tried before that share is weighed


@dataclass(frozen=True)
class UnsubscribeConfig:
    base_url: str = "https://harmonymails.com"
    mailto: str = "unsubscribe@harmonymails.com"
    secret_keys: tuple[str, ...] = field(default=(), repr=False)
    scope: UnsubscribeScope = UnsubscribeScope.ALL
    trusted_proxies: int = 0  # reverse proxies in front of `mailer serve` whose X-Forwarded-* to believe
    # the peer `mailer serve` takes X-Forwarded-* from (the proxy next to it); "*": any peer
    trusted_proxy_address: str = "127.0.0.1"
    # tag the mailto address per recipient (unsubscribe+TAG@...): the relay must deliver plus-addresses
    mailto_plus_tag: bool = False


@dataclass(frozen=True)
class DkimConfig:
    domain: str = ""
    selector: str = ""
    private_key: str = field(default="", repr=False)  # path to a PEM file

    @property
    def enabled(self) -> bool:
        return bool(self.domain and self.selector and self.private_key)


@dataclass(frozen=True)
class ComplianceConfig:
    ad_label: str = "Advertisement"


@dataclass(frozen=True)
class ConsentConfig:
    confirm_expiry: float = 7 * 24 * 3600.0  # seconds a double opt-in link stays valid


# the schemes a bounce mailbox is read over, and each one's usual port
MAILBOX_PORTS = {"imaps": 993, "imap": 143, "pop3s": 995, "pop3": 110}
_MAILBOX_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True)
class MailboxURL:
    """Where a bounce mailbox is: imaps://USER@HOST[:PORT]/FOLDER, imap://, pop3s://, pop3://."""

    scheme: str
    user: str
    host: str
    port: int
    folder: str  # always INBOX for POP3

    @property
    def is_imap(self) -> bool:
        return self.scheme.startswith("imap")

    @property
    def implicit_tls(self) -> bool:
        return self.scheme.endswith("s")

    @property
    def is_loopback(self) -> bool:
        return _is_loopback(self.host)


@dataclass(frozen=True)
class MailboxConfig:
    """One [[inbound.mailboxes]] entry, read by `mailer inbound fetch`."""

    name: str = ""
    url: str = ""
    password: str = field(default="", repr=False)  # or MAILER_INBOUND_<NAME>_PASSWORD
    ca_file: str = ""  # the CA to trust instead of the system's
    done: str = "seen"  # what becomes of a handled message: "seen", "delete" or "move:FOLDER"

    @property
    def password_variable(self) -> str:
        return f"MAILER_INBOUND_{self.name.upper().replace('-', '_')}_PASSWORD"

    @property
    def location(self) -> MailboxURL:
        """The parsed url; raises ValueError saying what is wrong with it."""
        return parse_mailbox_url(self.url)

    @property
    def move_to(self) -> str:
        """The folder handled messages move to, or "" when they do not move."""
        return self.done.partition(":")[2] if self.done.startswith("move:") else ""


def parse_mailbox_url(url: str) -> MailboxURL:
    """Split a mailbox URL; raises ValueError saying what is wrong with it."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in MAILBOX_PORTS:
        raise ValueError(f"must start with {', '.join(s + '://' for s in MAILBOX_PORTS)}")
    if parts.password is not None:
        raise ValueError("must not hold the password; set password or the environment variable")
    try:
        port = parts.port or MAILBOX_PORTS[parts.scheme]
    except ValueError:
        raise ValueError("the port must be a number from 1 to 65535") from None
    if not parts.username or not parts.hostname:
        raise ValueError("must name the user and the host, as imaps://USER@HOST/FOLDER")
    if parts.query or parts.fragment:
        raise ValueError("must not have a ?query or #fragment")
    folder = urllib.parse.unquote(parts.path.lstrip("/"))
    if parts.scheme.startswith("pop3") and folder:
        raise ValueError("a POP3 mailbox has no folders; drop the /FOLDER")
    return MailboxURL(parts.scheme, urllib.parse.unquote(parts.username), parts.hostname, port,
                      folder or "INBOX")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class InboundConfig:
    # addresses or domains whose ARF complaints are believed when they name an address without
    # our token or return path; the From of a report is all that is checked, so list only senders
    # whose mail the MTA in front of the mailbox authenticates (DMARC/SPF)
    feedback_loop_senders: tuple[str, ...] = ()
    # authserv-ids of the MTAs in front of the mailbox; when set, a feedback-loop sender counts
    # only with a DMARC pass for its From domain in an Authentication-Results header they added
    trusted_authserv_ids: tuple[str, ...] = ()
    # bounce mailboxes at a provider, read by `mailer inbound fetch` ([[inbound.mailboxes]])
    mailboxes: tuple[MailboxConfig, ...] = ()


@dataclass(frozen=True)
class WebhooksConfig:
    """The providers' webhooks under `mailer serve`; each is off (404) until its keys are set."""

    ses_topic_arns: tuple[str, ...] = ()  # SNS topics whose notifications and subscriptions are believed
    sendgrid_public_key: str = field(default="", repr=False)  # the Signed Event Webhook's verification key
    postmark_username: str = ""  # the HTTP basic auth Postmark's webhook URL carries
    postmark_password: str = field(default="", repr=False)
    mailgun_signing_key: str = field(default="", repr=False)  # the HTTP webhook signing key


@dataclass(frozen=True)
class WebConfig:
    """The subscribers' pages that `mailer serve` shows besides the unsubscribe page."""

    # sites whose pages may POST a JSON sign-up from script (CORS); a plain HTML form needs none
    allowed_origins: tuple[str, ...] = ()
    # a directory whose files replace the shipped page templates of the same name (web/*.html)
    templates_dir: str = ""
    # Flask-Limiter rate limits ("N per minute/hour/day") on sign-ups, per client IP and per address
    signup_limit_per_ip: str = "10 per hour"
    signup_limit_per_address: str = "3 per day"
    # where the counts live: "memory://" is per process; see the limits library for shared stores
    rate_limit_storage: str = "memory://"


@dataclass(frozen=True)
class DoctorConfig:
    """What `mailer doctor` asks and whom: the resolver and the relay's public addresses."""

    # "HOST:PORT" of the DNS server to ask; empty: the system's resolver; "off": no look-ups
    nameserver: str = ""
    # the addresses receivers see the relay connect from, checked against SPF; empty: smtp.host's
    sending_ips: tuple[str, ...] = ()

    @property
    def dns_off(self) -> bool:
        return self.nameserver.strip().lower() == "off"

    def nameserver_address(self) -> tuple[str, int] | None:
        """(host, port) of `nameserver`, or None for the system's resolver."""
        text = self.nameserver.strip()
        if not text or self.dns_off:
            return None
        host, _, port = text.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Config:
    """The whole configuration, one frozen section per table of mailer.toml."""

    database: DatabaseConfig = DatabaseConfig()
    company: CompanyConfig = CompanyConfig()
    sender: SenderConfig = SenderConfig()
    smtp: SmtpConfig = SmtpConfig()
    sending: SendingConfig = SendingConfig()
    unsubscribe: UnsubscribeConfig = UnsubscribeConfig()
    dkim: DkimConfig = DkimConfig()
    compliance: ComplianceConfig = ComplianceConfig()
    consent: ConsentConfig = ConsentConfig()
    inbound: InboundConfig = InboundConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    web: WebConfig = WebConfig()
    doctor: DoctorConfig = DoctorConfig()
    source: str = "<defaults>"  # the file the values came from, for error messages

    def require_secret_keys(self) -> tuple[str, ...]:
        """Return the signing keys, newest first; raises ConfigError when there are none."""
        if not self.unsubscribe.secret_keys:
            raise ConfigError(
                self.source,
                "unsubscribe.secret_keys",
                "no signing key set; add one to the file or set MAILER_SECRET_KEYS",
            )
        return self.unsubscribe.secret_keys


def is_secret(section: type[Any], attr: str) -> bool:
    """True for a value never shown: a field kept out of repr, or a URL that may hold a password."""
    if (section, attr) == (DatabaseConfig, "url"):
        return True
    found = section.__dataclass_fields__.get(attr)
    return found is not None and not found.repr


# key in the file -> attribute name where they differ (`from` is a Python keyword)
_RENAMED = {("sender", "from"): "from_address"}
_RENAMED_ATTRS = set(_RENAMED.values())

_SECTIONS: dict[str, type[Any]] = {
    "database": DatabaseConfig,
    "company": CompanyConfig,
    "sender": SenderConfig,
    "smtp": SmtpConfig,
    "sending": SendingConfig,
    "unsubscribe": UnsubscribeConfig,
    "dkim": DkimConfig,
    "compliance": ComplianceConfig,
    "consent": ConsentConfig,
    "inbound": InboundConfig,
    "webhooks": WebhooksConfig,
    "web": WebConfig,
    "doctor": DoctorConfig,
}


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """Return the config file to use: --config, then $MAILER_CONFIG, then ./mailer.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("MAILER_CONFIG")
    if env:
        return Path(env)
    local = Path(DEFAULT_CONFIG_NAME)
    return local if local.exists() else None


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Load and validate the configuration; raises ConfigError naming file, key and reason."""
    environ = os.environ if environ is None else environ
    found = find_config_path(path)
    data: dict[str, Any] = {}
    source = "<defaults>"
    if found is not None:
        source = str(found)
        try:
            with open(found, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(source, "-", "file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, "-", f"not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(source, "-", exc.strerror or str(exc)) from None
    return config_from_dict(data, source=source, environ=environ)


def config_from_dict(
    data: Mapping[str, Any], source: str = "<dict>", environ: Mapping[str, str] | None = None
) -> Config:
    """Build a validated Config from parsed TOML data and the environment's secrets."""
    environ = {} if environ is None else environ
    sections: dict[str, Any] = {}
    for name, value in data.items():
        if name not in _SECTIONS:
            raise ConfigError(source, name, f"unknown section; expected one of {', '.join(_SECTIONS)}")
        if not isinstance(value, dict):
            raise ConfigError(source, name, "must be a table ([section])")
        sections[name] = _build_section(name, _SECTIONS[name], value, source)
    config = Config(source=source, **sections)
    config = _apply_environment(config, environ)
    validate_config(config)
    return config


def _build_section(name: str, cls: type[Any], values: dict[str, Any], source: str) -> Any:
    defaults = cls()
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        attr = _RENAMED.get((name, key), key)
        renamed_away = (name, key) not in _RENAMED and attr in _RENAMED_ATTRS
        if attr not in cls.__dataclass_fields__ or renamed_away:
            raise ConfigError(source, f"{name}.{key}", "unknown key")
        if (name, attr) == ("inbound", "mailboxes"):
            kwargs[attr] = _build_mailboxes(raw, source)
            continue
        kwargs[attr] = _coerce(f"{name}.{key}", getattr(defaults, attr), raw, source, is_secret(cls, attr))
    return cls(**kwargs)


def _build_mailboxes(raw: Any, source: str) -> tuple[MailboxConfig, ...]:
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ConfigError(source, "inbound.mailboxes", "must be tables: [[inbound.mailboxes]]")
    return tuple(_build_section(f"inbound.mailboxes[{index}]", MailboxConfig, item, source)
                 for index, item in enumerate(raw))


def _coerce(key: str, default: Any, raw: Any, source: str, secret: bool = False) -> Any:
    # a secret of the wrong type is still a secret: its error names only the type it has
    got = f"got {_kind(raw)}" if secret else f"got {raw!r}"
    if isinstance(default, enum.Enum):
        choices = [m.value for m in type(default)]
        if raw not in choices:
            raise ConfigError(source, key, f"must be one of {', '.join(choices)}; {got}")
        return type(default)(raw)
    if isinstance(default, bool):
        if not isinstance(raw, bool):
            raise ConfigError(source, key, "must be true or false")
        return raw
    if isinstance(default, int):
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(source, key, f"must be a whole number; {got}")
        return raw
    if isinstance(default, float):
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ConfigError(source, key, f"must be a number; {got}")
        return float(raw)
    if isinstance(default, tuple):
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
            raise ConfigError(source, key, "must be a list of strings")
        return tuple(raw)
    if not isinstance(raw, str):
        raise ConfigError(source, key, f"must be a string; {got}")
    return raw


def _kind(raw: Any) -> str:
    """What TOML type a value has, in words, for an error that must not show the value."""
    kinds = {bool: "true or false", int: "a number", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    return next((word for kind, word in kinds.items() if isinstance(raw, kind)), "a date or time")


def _apply_environment(config: Config, environ: Mapping[str, str]) -> Config:
    """Secrets may live in the environment rather than the file; the environment wins."""
    if environ.get("MAILER_DATABASE_URL"):
        config = replace(config, database=replace(config.database, url=environ["MAILER_DATABASE_URL"]))
    if environ.get("MAILER_SECRET_KEYS"):
        keys = tuple(k.strip() for k in environ["MAILER_SECRET_KEYS"].split(",") if k.strip())
        config = replace(config, unsubscribe=replace(config.unsubscribe, secret_keys=keys))
    if environ.get("MAILER_SMTP_PASSWORD"):
        config = replace(config, smtp=replace(config.smtp, password=environ["MAILER_SMTP_PASSWORD"]))
    config = _webhook_secrets(config, environ)
    if environ.get("MAILER_DKIM_PRIVATE_KEY"):
        config = replace(config, dkim=replace(config.dkim, private_key=environ["MAILER_DKIM_PRIVATE_KEY"]))
    if config.inbound.mailboxes:
        boxes = tuple(replace(box, password=environ.get(box.password_variable) or box.password)
                      for box in config.inbound.mailboxes)
        config = replace(config, inbound=replace(config.inbound, mailboxes=boxes))
    return config


# the webhooks' secrets, from the environment when set there
_WEBHOOK_SECRETS = {
    "MAILER_WEBHOOKS_SENDGRID_PUBLIC_KEY": "sendgrid_public_key",
    "MAILER_WEBHOOKS_POSTMARK_PASSWORD": "postmark_password",
    "MAILER_WEBHOOKS_MAILGUN_SIGNING_KEY": "mailgun_signing_key",
}


def _webhook_secrets(config: Config, environ: Mapping[str, str]) -> Config:
    found: dict[str, Any] = {attr: environ[name] for name, attr in _WEBHOOK_SECRETS.items() if environ.get(name)}
    return replace(config, webhooks=replace(config.webhooks, **found)) if found else config


def is_placeholder_address(text: str) -> bool:
    """True when a postal address is empty or an unfilled template."""
    folded = " ".join(text.lower().split())
    if len(folded) < 10 or not any(ch.isdigit() for ch in folded):
        return True
    return any(word in folded for word in PLACEHOLDER_WORDS) or "<" in folded


def validate_config(config: Config) -> None:
    """Refuse values that would make a message non-compliant or a send unsafe."""
    src = config.source
    _check_database(src, config)
    _check_company(src, config)
    _check_sender(src, config)
    _check_smtp(src, config)
    _check_sending(src, config)
    _check_unsubscribe(src, config)
    _check_dkim(src, config)
    if not config.compliance.ad_label.strip():
        raise ConfigError(src, "compliance.ad_label", "must not be empty")
    if config.consent.confirm_expiry <= 0:
        raise ConfigError(src, "consent.confirm_expiry", "must be more than 0 seconds")
    _check_inbound(src, config)
    _check_webhooks(src, config)
    _check_web(src, config.web)
    _check_doctor(src, config)


def _check_database(src: str, config: Config) -> None:
    """The database URL."""
    if not config.database.url.strip():
        raise ConfigError(src, "database.url", "must not be empty")
    if not _parses_as_url(config.database.url):
        raise ConfigError(src, "database.url", "not a database URL such as sqlite:///mailer.db")
    if not 0 <= config.database.reconnect_for <= 24 * 3600:
        raise ConfigError(src, "database.reconnect_for", "must be from 0 to 86400 seconds")


def _check_company(src: str, config: Config) -> None:
    """Who the mail is from, as every message must say: name, postal address, privacy policy."""
    if not config.company.name.strip():
        raise ConfigError(src, "company.name", "must not be empty")
    if is_placeholder_address(config.company.postal_address):
        raise ConfigError(
            src, "company.postal_address",
            "must be the company's real postal address (CAN-SPAM requires it in every message)",
        )
    if not config.company.privacy_url.startswith(("https://", "http://")):
        raise ConfigError(src, "company.privacy_url", "must be an http(s) URL")


def _check_sender(src: str, config: Config) -> None:
    """From and Reply-To as one mailbox each on the sending domain, and the bounce domain."""
    _check_mailbox(src, "sender.from", config.sender.from_address)
    if config.sender.reply_to:
        _check_mailbox(src, "sender.reply_to", config.sender.reply_to)
    if config.sender.from_domain != config.sender.sending_domain:
        raise ConfigError(
            src, "sender.from", f"must be on the sending domain {config.sender.sending_domain}"
        )
    if not config.sender.bounce_domain or "@" in config.sender.bounce_domain:
        raise ConfigError(src, "sender.bounce_domain", "must be a domain name such as bounces.example.com")


def _check_smtp(src: str, config: Config) -> None:
    """The relay: where it is and how hard to push it."""
    if not 1 <= config.smtp.port <= 65535:
        raise ConfigError(src, "smtp.port", "must be from 1 to 65535")
    if config.smtp.timeout <= 0:
        raise ConfigError(src, "smtp.timeout", "must be more than 0 seconds")
    if not 1 <= config.smtp.connections <= 100:
        raise ConfigError(src, "smtp.connections", "must be from 1 to 100")
    if config.smtp.messages_per_second < 0:
        raise ConfigError(src, "smtp.messages_per_second", "must be 0 (no limit) or more")
    if config.smtp.retry_for < 0:
        raise ConfigError(src, "smtp.retry_for", "must be 0 or more seconds")
    if config.smtp.max_consecutive_errors < 1:
        raise ConfigError(src, "smtp.max_consecutive_errors", "must be at least 1")
    _check_smtp_identity(src, config.smtp)


def _check_smtp_identity(src: str, smtp: SmtpConfig) -> None:
    """The name said in EHLO and the certificate files, loaded now so that a bad one fails here."""
    if smtp.helo_name and not _HELO_NAME.fullmatch(smtp.helo_name):
        raise ConfigError(src, "smtp.helo_name", "must be a host name such as mail.example.com, or empty")
    if smtp.client_key and not smtp.client_cert:
        raise ConfigError(src, "smtp.client_key", "needs smtp.client_cert")
    if not (smtp.ca_file or smtp.client_cert):
        return
    import ssl  # only when there is a file to check: it slows every command's start

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if smtp.ca_file:
        try:
            context.load_verify_locations(cafile=smtp.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(src, "smtp.ca_file", f"cannot load PEM certificates from {smtp.ca_file}: "
                              f"{exc.strerror or exc}") from None
    if smtp.client_cert:
        try:
            context.load_cert_chain(smtp.client_cert, smtp.client_key or None)
        except (OSError, ssl.SSLError) as exc:
            setting = "smtp.client_key" if smtp.client_key else "smtp.client_cert"
            raise ConfigError(src, setting, f"cannot load the certificate and its key: {exc.strerror or exc}") from None


def _check_sending(src: str, config: Config) -> None:
    """The sending engine's limits."""
    if not 1 <= config.sending.batch_size <= 10_000:
        raise ConfigError(src, "sending.batch_size", "must be from 1 to 10000")
    if config.sending.max_lateness < 0:
        raise ConfigError(src, "sending.max_lateness", "must be 0 or more seconds")
    if not 0 <= config.sending.render_processes <= 32:
        raise ConfigError(src, "sending.render_processes", "must be from 0 to 32")
    if config.sending.claim_timeout < 10:
        raise ConfigError(src, "sending.claim_timeout", "must be at least 10 seconds")
    if config.sending.soft_bounce_limit < 1:
        raise ConfigError(src, "sending.soft_bounce_limit", "must be at least 1")
    if not 0 <= config.sending.policy_block_pause_share <= 1:
        raise ConfigError(src, "sending.policy_block_pause_share", "must be from 0 (never pause) to 1")
    if config.sending.policy_block_pause_min < 1:
        raise ConfigError(src, "sending.policy_block_pause_min", "must be at least 1")


def _check_unsubscribe(src: str, config: Config) -> None:
    """The unsubscribe links, the proxies in front of the web app and the signing keys."""
    if not config.unsubscribe.base_url.startswith(("https://", "http://")):
        raise ConfigError(src, "unsubscribe.base_url", "must be an http(s) URL")
    if config.unsubscribe.mailto and "@" not in config.unsubscribe.mailto:
        raise ConfigError(src, "unsubscribe.mailto", "must be an email address")
    _check_mailto_room(config)
    if not 0 <= config.unsubscribe.trusted_proxies <= 10:
        raise ConfigError(src, "unsubscribe.trusted_proxies", "must be from 0 to 10")
    _check_proxy_address(src, config.unsubscribe.trusted_proxy_address)
    for key in config.unsubscribe.secret_keys:
        if len(key) < 16:
            raise ConfigError(src, "unsubscribe.secret_keys", "each key must be at least 16 characters")


def _check_dkim(src: str, config: Config) -> None:
    """DKIM set all together or not at all, on a domain aligned with From."""
    dkim = config.dkim
    if any((dkim.domain, dkim.selector, dkim.private_key)) and not dkim.enabled:
        raise ConfigError(src, "dkim", "set domain, selector and private_key together, or none")
    if dkim.enabled and dkim.domain.lower() != config.sender.sending_domain and not (
        config.sender.sending_domain.endswith("." + dkim.domain.lower())
    ):
        raise ConfigError(src, "dkim.domain", f"must align with the sending domain {config.sender.sending_domain}")


def _check_inbound(src: str, config: Config) -> None:
    """Who may send feedback loop reports and whose authentication results are believed."""
    for sender in config.inbound.feedback_loop_senders:
        if not _FEEDBACK_LOOP_SENDER.fullmatch(sender.strip()):
            raise ConfigError(src, "inbound.feedback_loop_senders",
                              f"each entry must be an address or a domain such as fbl.example.net; got {sender!r}")
    for authserv_id in config.inbound.trusted_authserv_ids:
        if not authserv_id.strip() or any(ch.isspace() or ch in ';()"' for ch in authserv_id.strip()):
            raise ConfigError(src, "inbound.trusted_authserv_ids",
                              f"each entry must be one authserv-id such as mx.example.com; got {authserv_id!r}")
    names: set[str] = set()
    for index, box in enumerate(config.inbound.mailboxes):
        _check_mailbox_entry(src, f"inbound.mailboxes[{index}]", box, names)


def _check_mailbox_entry(src: str, key: str, box: MailboxConfig, names: set[str]) -> None:
    """A bounce mailbox: a unique name, a URL we can read, and a done action its protocol can do."""
    if not _MAILBOX_NAME.fullmatch(box.name):
        raise ConfigError(src, f"{key}.name", "must be letters, digits, - and _ (at most 64), "
                          f"such as \"bounces\"; got {box.name!r}")
    if box.name.lower() in names:
        raise ConfigError(src, f"{key}.name", f"{box.name!r} is used by another mailbox")
    names.add(box.name.lower())
    try:
        location = box.location
    except ValueError as exc:
        raise ConfigError(src, f"{key}.url", f"{exc}; got {_without_password(box.url)!r}") from None
    if box.done not in ("seen", "delete") and not (box.done.startswith("move:") and box.move_to.strip()):
        raise ConfigError(src, f"{key}.done", f'must be "seen", "delete" or "move:FOLDER"; got {box.done!r}')
    if not location.is_imap and box.done != "delete":
        raise ConfigError(src, f"{key}.done", 'a POP3 server can only delete: set done = "delete" '
                          "(or read the mailbox over IMAP)")


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{userinfo.partition(':')[0]}{at}{host}" if at else url


# arn:aws:sns:REGION:ACCOUNT:TOPIC (aws-cn and aws-us-gov partitions too)
_TOPIC_ARN = re.compile(r"arn:aws(?:-[a-z]+)*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}(?:\.fifo)?")


def _check_webhooks(src: str, config: Config) -> None:
    """Each provider's keys: all of them or none, and in the shape the provider gives them."""
    hooks = config.webhooks
    for arn in hooks.ses_topic_arns:
        if not _TOPIC_ARN.fullmatch(arn.strip()):
            raise ConfigError(src, "webhooks.ses_topic_arns",
                              f"each entry must be an SNS topic ARN such as arn:aws:sns:us-east-1:123456789012:ses-bounces; got {arn!r}")
    if hooks.sendgrid_public_key:
        try:
            load_ec_public_key(hooks.sendgrid_public_key)
        except InvalidInputError as exc:
            raise ConfigError(src, "webhooks.sendgrid_public_key", str(exc)) from None
    if bool(hooks.postmark_username) != bool(hooks.postmark_password):
        raise ConfigError(src, "webhooks.postmark_password" if hooks.postmark_username else "webhooks.postmark_username",
                          "set postmark_username and postmark_password together, or neither")
    if hooks.postmark_password and len(hooks.postmark_password) < 16:
        raise ConfigError(src, "webhooks.postmark_password", "must be at least 16 characters")
    if ":" in hooks.postmark_username:
        raise ConfigError(src, "webhooks.postmark_username", "must not contain a colon (HTTP basic auth)")


def _check_doctor(src: str, config: Config) -> None:
    """The doctor's nameserver as HOST:PORT (or "off") and the relay's addresses as IPs."""
    text = config.doctor.nameserver.strip()
    if text and not config.doctor.dns_off:
        host, _, port = text.rpartition(":")
        try:
            ipaddress.ip_address(host.strip("[]"))
            valid = port.isdigit() and 1 <= int(port) <= 65535
        except ValueError:
            valid = False
        if not valid:
            raise ConfigError(src, "doctor.nameserver",
                              f'must be "IP:PORT" such as "127.0.0.1:53", "[::1]:53", or "off"; got {text!r}')
    for address in config.doctor.sending_ips:
        try:
            ipaddress.ip_address(address.strip())
        except ValueError:
            raise ConfigError(src, "doctor.sending_ips",
                              f"each entry must be an IP address such as 203.0.113.5; got {address!r}") from None


def load_ec_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """An ECDSA public key as SendGrid shows it (base64 of the DER key) or as PEM.

    Raises InvalidInputError when it is neither, or not a P-256 key."""
    # loaded here: every command reads the config, few of them check a SendGrid key
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        if "-----BEGIN" in text:
            key = serialization.load_pem_public_key(text.strip().encode("ascii"))
        else:
            key = serialization.load_der_public_key(base64.b64decode("".join(text.split()), validate=True))
    except (ValueError, UnicodeEncodeError, binascii.Error, UnsupportedAlgorithm):
        raise InvalidInputError("not an ECDSA public key: paste the verification key SendGrid shows") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise InvalidInputError("not a P-256 (prime256v1) ECDSA public key")
    return key


def _check_web(src: str, web: WebConfig) -> None:
    """The origins allowed to post sign-ups, the template directory and the rate limits."""
    for origin in web.allowed_origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.path or parts.query:
            raise ConfigError(src, "web.allowed_origins",
                              f"each entry must be an origin such as https://www.example.com; got {origin!r}")
    if web.templates_dir and not Path(web.templates_dir).is_dir():
        raise ConfigError(src, "web.templates_dir", f"no such directory: {web.templates_dir}")
    for key in ("signup_limit_per_ip", "signup_limit_per_address"):
        if not _RATE_LIMIT.fullmatch(getattr(web, key).strip()):
            raise ConfigError(src, f"web.{key}", f'must read like "10 per hour"; got {getattr(web, key)!r}')
    if "://" not in web.rate_limit_storage:
        raise ConfigError(src, "web.rate_limit_storage", 'must be a storage URL such as "memory://"')


def _check_proxy_address(source: str, value: str) -> None:
    if value == "*":
        return
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(source, "unsubscribe.trusted_proxy_address",
                          f'must be an IP address such as "127.0.0.1", or "*"; got {value!r}') from None


def _check_mailto_room(config: Config) -> None:
    """The mailto local part fits RFC 5321's 64 octets, with room for a plus-tag when one is added."""
    src, mailto = config.source, config.unsubscribe.mailto
    local = mailto.rpartition("@")[0]
    if len(local.encode("utf-8")) > MAX_LOCAL_PART_OCTETS:
        raise ConfigError(src, "unsubscribe.mailto", f"the part before @ is longer than {MAX_LOCAL_PART_OCTETS} octets")
    if not config.unsubscribe.mailto_plus_tag:
        return
    if not mailto:
        raise ConfigError(src, "unsubscribe.mailto_plus_tag", "needs unsubscribe.mailto")
    if "+" in local:
        raise ConfigError(src, "unsubscribe.mailto", "must not contain + when mailto_plus_tag is on")
    if room_for_tag(mailto) < ROOM_NEEDED:
        raise ConfigError(
            src, "unsubscribe.mailto",
            f"the part before @ leaves {max(room_for_tag(mailto), 0)} of the {ROOM_NEEDED} octets a plus-tag "
            f"needs within {MAX_LOCAL_PART_OCTETS}; shorten it or set mailto_plus_tag = false",
        )


def _check_mailbox(source: str, key: str, value: str) -> None:
    try:
        parse_mailbox(value)
    except InvalidInputError as exc:
        raise ConfigError(source, key, str(exc)) from None
