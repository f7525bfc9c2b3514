"""The SNS certificate fetch over real https on loopback: a trusted server only, no redirects, bounded."""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailer.web.webhooks.common import WebhookRefused
from mailer.web.webhooks.sns import MAX_CERTIFICATE_BYTES, https_get

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None = None,
                 signer: ec.EllipticCurvePrivateKey | None = None, ca: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(signer or key, hashes.SHA256())


class _Pages(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/cert.pem")
            self.end_headers()
            return
        body = PEM if self.path == "/cert.pem" else b"x" * (MAX_CERTIFICATE_BYTES * 2)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An https server on loopback with a certificate from a CA made here; its base URL and the CA file."""
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test CA", ca_key, ca=True)
    server_cert = _certificate("localhost", server_key, issuer=ca.subject, signer=ca_key)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "server.pem").write_bytes(server_cert.public_bytes(serialization.Encoding.PEM) + server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.pem")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://localhost:{server.server_address[1]}", tmp_path / "ca.pem"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_certificate_is_fetched_from_a_server_the_system_trusts(
        https_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    base, ca_file = https_server
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    assert https_get(f"{base}/cert.pem") == PEM


def test_a_server_nobody_vouches_for_is_refused(https_server: tuple[str, Path],
                                                 monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    base, _ca_file = https_server
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-ca.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    with pytest.raises(WebhookRefused) as refused:
        https_get(f"{base}/cert.pem")
    assert (refused.value.status, refused.value.reason) == (502, "cannot reach SNS: URLError")


def test_a_redirect_is_not_followed(https_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    base, ca_file = https_server
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    with pytest.raises(WebhookRefused) as refused:
        https_get(f"{base}/redirect")
    assert refused.value.reason == "cannot reach SNS: HTTPError 302"  # the 302 itself, not the page it names


def test_an_endless_answer_is_cut_short(https_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    base, ca_file = https_server
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    assert len(https_get(f"{base}/big")) == MAX_CERTIFICATE_BYTES + 1
