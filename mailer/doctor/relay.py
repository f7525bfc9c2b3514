"""The relay as the sender will meet it: greeting, EHLO, STARTTLS, AUTH and extensions; nothing is sent."""

from __future__ import annotations

import smtplib
import socket
import ssl
from collections.abc import Iterator

from mailer.config import Config, SmtpConfig, StartTLS
from mailer.doctor.results import Finding, Status

# what a bulk sender wants from its relay, and why
WANTED_EXTENSIONS = {
    "pipelining": "one round trip per message instead of four",
    "size": "an oversized message refused before its body is sent",
    "smtputf8": "addresses with non-ASCII local parts delivered",
}


def helo_name(config: Config) -> str | None:
    """smtp.helo_name when this version of the config has it, else the machine's name."""
    name = getattr(config.smtp, "helo_name", "")
    return str(name) if name else None


def relay_findings(config: Config, timeout: float | None = None) -> Iterator[Finding]:
    """Connect, EHLO, STARTTLS per the config, AUTH when configured, then QUIT."""
    smtp = config.smtp
    where = f"{smtp.host}:{smtp.port}"
    try:
        client = smtplib.SMTP(smtp.host, smtp.port, local_hostname=helo_name(config),
                              timeout=timeout or smtp.timeout)
    except (OSError, smtplib.SMTPException) as exc:
        yield Finding("relay", Status.FAIL, f"cannot connect to {where}: {_why(exc)}; check smtp.host and smtp.port")
        return
    try:
        yield from _conversation(client, smtp, where)
    except (OSError, smtplib.SMTPException) as exc:
        yield Finding("relay", Status.FAIL, f"{where} broke off the conversation: {_why(exc)}")
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()


def _why(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


def _conversation(client: smtplib.SMTP, smtp: SmtpConfig, where: str) -> Iterator[Finding]:
    code, reply = client.ehlo()
    if code != 250:
        yield Finding("relay", Status.FAIL, f"{where} refused EHLO {client.local_hostname}: {code} "
                      f"{reply.decode('utf-8', 'replace')}; set smtp.helo_name to the relay's expected name")
        return
    yield Finding("relay", Status.PASS, f"{where} answered EHLO {client.local_hostname}")
    yield _starttls(client, smtp, where)
    if smtp.username:
        yield _auth(client, smtp, where)
    yield from _extensions(client, where)


def _starttls(client: smtplib.SMTP, smtp: SmtpConfig, where: str) -> Finding:
    offered = client.has_extn("starttls")
    if smtp.starttls is StartTLS.OFF:
        status = Status.PASS if smtp.is_loopback else Status.WARN
        return Finding("starttls", status, "smtp.starttls is off: fine on loopback, elsewhere set "
                       "\"required\" so nobody on the way reads or changes the mail")
    if not offered:
        status = Status.WARN if smtp.is_loopback or smtp.starttls is StartTLS.OPPORTUNISTIC else Status.FAIL
        return Finding("starttls", status, f"{where} does not offer STARTTLS, so mail goes in clear; "
                       "enable TLS on the relay" + ("" if status is Status.WARN else " (smtp.starttls is required)"))
    try:
        client.starttls(context=ssl.create_default_context())
    except ssl.SSLError as exc:
        return Finding("starttls", Status.FAIL, f"TLS with {where} failed: {exc.reason or exc}; give the relay "
                       "a certificate for its name that a public CA signed")
    client.ehlo()
    return Finding("starttls", Status.PASS, f"{where} offers STARTTLS and its certificate is trusted")


def _auth(client: smtplib.SMTP, smtp: SmtpConfig, where: str) -> Finding:
    if not client.has_extn("auth"):
        return Finding("auth", Status.FAIL, f"{where} offers no AUTH (here, after STARTTLS if any), but "
                       "smtp.username is set; remove it or use the relay's submission port")
    try:
        _login(client, smtp)
    except smtplib.SMTPAuthenticationError as exc:
        return Finding("auth", Status.FAIL, f"{where} refused the login of {smtp.username}: {exc.smtp_code}; "
                       "check smtp.username and smtp.password (MAILER_SMTP_PASSWORD)")
    return Finding("auth", Status.PASS, f"{where} accepted the login of {smtp.username}")


def _login(client: smtplib.SMTP, smtp: SmtpConfig) -> None:
    """One attempt with one mechanism: smtplib's login() tries the next after a refusal, and some
    relays hang up or slow down on a second try."""
    offered = client.esmtp_features.get("auth", "").upper().split()
    client.user, client.password = smtp.username, smtp.password
    if "PLAIN" in offered:
        client.auth("PLAIN", client.auth_plain)
    elif "LOGIN" in offered:
        client.auth("LOGIN", client.auth_login, initial_response_ok=False)
    else:
        client.login(smtp.username, smtp.password)


def _extensions(client: smtplib.SMTP, where: str) -> Iterator[Finding]:
    missing = [name for name in WANTED_EXTENSIONS if not client.has_extn(name)]
    if not missing:
        yield Finding("extensions", Status.PASS, f"{where} offers PIPELINING, SIZE and SMTPUTF8")
        return
    lacks = ", ".join(f"{name.upper()} ({WANTED_EXTENSIONS[name]})" for name in missing)
    yield Finding("extensions", Status.WARN, f"{where} lacks {lacks}; enable them on the relay if it can")
