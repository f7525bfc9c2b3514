"""STARTTLS and identity against aiosmtpd with a certificate from a CA created in the test."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cli_helpers import write_config
from relay_helpers import Pki, Relay, make_pki, relay

from mailer.config import SmtpConfig, StartTLS, load_config
from mailer.delivery.transport import SendResult, SendStatus, SmtpTransport
from mailer.errors import ConfigError

MESSAGE = b"From: news@harmonymails.com\r\nTo: a@example.com\r\nSubject: hi\r\n\r\nHello\r\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def send_one(server: Relay, *, remote: bool = False, **settings: object) -> SendResult:
    smtp = SmtpConfig(host=server.host, port=server.port, timeout=5, connections=1, **settings)  # type: ignore[arg-type]

    async def run() -> SendResult:
        transport = SmtpTransport(smtp)
        if remote:
            # what a relay elsewhere gets: STARTTLS demanded, no loopback exception
            transport.connections[0].start_tls = True
        try:
            return await transport.send("b@bounces.harmonymails.com", "a@example.com", MESSAGE)
        finally:
            await transport.close()

    return asyncio.run(run())


@pytest.mark.parametrize("remote", [False, True], ids=["loopback", "remote"])
def test_required_starttls_trusts_the_relay_through_ca_file(pki: Pki, remote: bool) -> None:
    with relay(tls=pki.server_context()) as server:
        result = send_one(server, remote=remote, starttls=StartTLS.REQUIRED, ca_file=str(pki.ca))
        assert result.status is SendStatus.SENT
        assert [m.rcpt_tos for m in server.messages] == [["a@example.com"]]
        assert server.log.tls_messages == 1


def test_required_starttls_without_ca_file_names_the_setting(pki: Pki) -> None:
    with relay(tls=pki.server_context()) as server:
        result = send_one(server, starttls=StartTLS.REQUIRED)
        assert result.status is SendStatus.NOT_SENT
        assert result.connection_failed  # counts toward pausing the campaign, as a relay that is down
        assert "smtp.ca_file" in result.response and "certificate" in result.response
        assert "\n" not in result.response
        assert server.messages == []


def test_opportunistic_encrypts_with_a_certificate_nobody_vouches_for(pki: Pki) -> None:
    with relay(tls=pki.server_context()) as server:
        result = send_one(server, remote=False, starttls=StartTLS.OPPORTUNISTIC)
        assert result.status is SendStatus.SENT
        assert server.log.tls_messages == 1  # encrypted, although nothing verified the relay


def test_opportunistic_sends_in_clear_to_a_relay_without_starttls() -> None:
    with relay() as server:
        assert send_one(server, starttls=StartTLS.OPPORTUNISTIC).status is SendStatus.SENT
        assert server.log.tls_messages == 0


def test_helo_name_is_what_the_relay_sees(pki: Pki) -> None:
    with relay(tls=pki.server_context()) as server:
        result = send_one(server, starttls=StartTLS.OPPORTUNISTIC, helo_name="mail.harmonymails.com")
        assert result.status is SendStatus.SENT
        # once before STARTTLS and once after, both with the configured name
        assert server.log.helo_names == ["mail.harmonymails.com", "mail.harmonymails.com"]


def test_a_client_certificate_is_presented_when_the_relay_demands_one(pki: Pki) -> None:
    with relay(tls=pki.server_context(ask_client_cert=True)) as server:
        without = send_one(server, starttls=StartTLS.REQUIRED, ca_file=str(pki.ca))
        assert without.status is SendStatus.NOT_SENT  # the relay refused the handshake
        result = send_one(server, starttls=StartTLS.REQUIRED, ca_file=str(pki.ca),
                          client_cert=str(pki.client_cert), client_key=str(pki.client_key))
        assert result.status is SendStatus.SENT
        assert server.log.client_certs == ["mailer.harmonymails.com"]


@pytest.mark.parametrize(("lines", "setting"), [
    ('ca_file = "{missing}"', "smtp.ca_file"),
    ('ca_file = "{not_pem}"', "smtp.ca_file"),
    ('client_cert = "{client_cert}"', "smtp.client_cert"),  # the key is in another file
    ('client_key = "{client_key}"', "smtp.client_key"),  # a key without its certificate
    ('helo_name = "mail example com"', "smtp.helo_name"),
    ('helo_name = "mail.example.com\\r\\nRSET"', "smtp.helo_name"),
])
def test_bad_tls_and_identity_settings_fail_at_load_naming_the_setting(tmp_path: Path, pki: Pki, lines: str,
                                                                        setting: str) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n", encoding="utf-8")
    smtp = lines.format(missing=tmp_path / "nope.pem", not_pem=not_pem, client_cert=pki.client_cert,
                        client_key=pki.client_key)
    path = write_config(tmp_path / "mailer.toml", f"sqlite:///{tmp_path / 'm.db'}", extra=f"[smtp]\n{smtp}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})
    assert raised.value.key == setting
    assert "\n" not in str(raised.value)


def test_good_tls_and_identity_settings_load(tmp_path: Path, pki: Pki) -> None:
    path = write_config(tmp_path / "mailer.toml", f"sqlite:///{tmp_path / 'm.db'}", extra=(
        f'[smtp]\nca_file = "{pki.ca}"\nclient_cert = "{pki.client_cert}"\nclient_key = "{pki.client_key}"\n'
        'helo_name = "mail.harmonymails.com"\n'))
    smtp = load_config(path, environ={}).smtp
    assert (smtp.ca_file, smtp.helo_name) == (str(pki.ca), "mail.harmonymails.com")
