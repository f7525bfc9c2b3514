"""The parts of the config only a person can get right: the postal address, the secrets, the web app."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

from mailer.config import DEFAULT_POSTAL_ADDRESS, Config, is_placeholder_address
from mailer.doctor.results import Finding, Status


def config_findings(config: Config) -> Iterator[Finding]:
    address = config.company.postal_address
    if is_placeholder_address(address):
        yield Finding("postal", Status.FAIL, "company.postal_address is a placeholder; CAN-SPAM requires "
                      "the company's real postal address in every message")
    elif address == DEFAULT_POSTAL_ADDRESS and config.company.name != "Harmony Mails":
        yield Finding("postal", Status.WARN, f"company.postal_address is still the example's address; "
                      f"set the real address of {config.company.name}")
    else:
        yield Finding("postal", Status.PASS, f"company.postal_address: {address}")
    yield _secrets(config)


def _secrets(config: Config) -> Finding:
    missing = []
    if not config.unsubscribe.secret_keys:
        missing.append("unsubscribe.secret_keys (MAILER_SECRET_KEYS)")
    if config.smtp.username and not config.smtp.password:
        missing.append("smtp.password (MAILER_SMTP_PASSWORD)")
    if missing:
        return Finding("secrets", Status.FAIL, f"not set: {', '.join(missing)}")
    password = " and the relay's password" if config.smtp.username else ""
    return Finding("secrets", Status.PASS, f"the unsubscribe signing keys{password} are set")


def web_finding(config: Config, timeout: float = 10.0) -> Finding:
    """GET base_url/healthz, as a recipient's click would reach `mailer serve`."""
    url = config.unsubscribe.base_url.rstrip("/") + "/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Finding("web", Status.FAIL, f"{url} is unreachable ({reason}); start `mailer serve` "
                       "behind the proxy that base_url names")
    if status != 200:
        return Finding("web", Status.FAIL, f"{url} answered {status}; `mailer serve` should answer 200 there")
    return Finding("web", Status.PASS, f"{url} answers 200: unsubscribe links work")
