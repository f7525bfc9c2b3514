"""The doctor's look at the relay: aiosmtpd on loopback with and without STARTTLS and AUTH."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from serve_helpers import free_port

from mailer.config import Config, config_from_dict
from mailer.doctor.relay import relay_findings
from mailer.doctor.results import Finding, Status

USER, PASSWORD = "mailer", "relay-password-123"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: trusted only where a test says so."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


class Sink:
    """Accepts nothing: the doctor must never get as far as sending."""

    def __init__(self) -> None:
        self.mail_from: list[str] = []

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        self.mail_from.append(address)
        return "550 the doctor must not send"


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (USER.encode(), PASSWORD.encode())
    return AuthResult(success=ok, handled=False)


@contextmanager
def relay(certificate: tuple[Path, Path] | None, auth: bool) -> Iterator[tuple[int, Sink]]:
    kwargs: dict[str, Any] = {}
    if certificate is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*certificate)
        kwargs.update(tls_context=context, require_starttls=True)
    if auth:
        kwargs.update(authenticator=_authenticate, auth_require_tls=certificate is not None)
    sink, port = Sink(), free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield port, sink
    finally:
        controller.stop()


def config(port: int, starttls: str, username: str = "", password: str = "") -> Config:
    return config_from_dict({"smtp": {"host": "127.0.0.1", "port": port, "starttls": starttls, "timeout": 5,
                                      "username": username, "password": password}})


def by_check(config: Config) -> dict[str, Finding]:
    return {finding.check: finding for finding in relay_findings(config)}


def test_starttls_with_a_trusted_certificate_and_auth_pass(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    with relay(certificate, auth=True) as (port, sink):
        found = by_check(config(port, "required", USER, PASSWORD))
    assert found["relay"].status is Status.PASS
    assert found["starttls"].status is Status.PASS, found["starttls"]
    assert found["auth"].status is Status.PASS and f"accepted the login of {USER}" in found["auth"].message
    assert sink.mail_from == []


def test_a_wrong_password_fails_auth(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    with relay(certificate, auth=True) as (port, _):
        found = by_check(config(port, "required", USER, "not-the-password"))
    assert found["auth"].status is Status.FAIL, found
    assert "refused the login of mailer: 535" in found["auth"].message


def test_an_untrusted_certificate_fails_starttls(certificate: tuple[Path, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-ca.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    with relay(certificate, auth=False) as (port, _):
        found = by_check(config(port, "required"))
    assert found["starttls"].status is Status.FAIL
    assert "CERTIFICATE_VERIFY_FAILED" in found["starttls"].message


def test_a_relay_without_starttls_or_auth_is_named() -> None:
    with relay(None, auth=False) as (port, _):
        clear = by_check(config(port, "opportunistic"))
        no_auth = by_check(config(port, "opportunistic", USER, PASSWORD))
    assert clear["starttls"].status is Status.WARN and "does not offer STARTTLS" in clear["starttls"].message
    assert "auth" not in clear
    assert no_auth["auth"].status is Status.FAIL and "offers no AUTH" in no_auth["auth"].message
    assert clear["extensions"].status is Status.WARN and "PIPELINING" in clear["extensions"].message


def test_nothing_listening_is_one_failure() -> None:
    found = list(relay_findings(config(free_port(), "off")))
    assert [(f.check, f.status) for f in found] == [("relay", Status.FAIL)]
    assert "cannot connect to 127.0.0.1" in found[0].message
