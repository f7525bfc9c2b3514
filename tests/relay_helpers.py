"""Relays as the transport meets them: aiosmtpd that offers PIPELINING (or not), misbehaves per
recipient, speaks STARTTLS with a certificate from a CA made here; and a recording TCP proxy."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from serve_helpers import free_port
from smtp_faults import FaultyController, FaultyHandler, FaultyServer


@dataclass
class RelayLog:
    """What the relay saw besides the messages themselves."""

    helo_names: list[str] = field(default_factory=list)
    tls_messages: int = 0  # messages that arrived over TLS
    client_certs: list[str] = field(default_factory=list)  # subject CN of the client's certificate, per message


class RelayHandler(FaultyHandler):
    """FaultyHandler with PIPELINING on request and faults after the message, per recipient."""

    def __init__(self, pipelining: bool) -> None:
        super().__init__()
        self.pipelining = pipelining
        self.log = RelayLog()
        self.data_replies: dict[str, str] = {}  # recipient -> reply to the end of its message
        self.drop_after_dot: set[str] = set()  # recipients whose message is read, then the line hangs up
        self.stall_after_dot: dict[str, float] = {}  # recipient -> seconds before answering its message

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        self.log.helo_names.append(hostname)
        if self.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        recipient = envelope.rcpt_tos[0].lower() if envelope.rcpt_tos else ""
        if recipient in self.stall_after_dot:
            await asyncio.sleep(self.stall_after_dot[recipient])
            return "451 4.4.2 too slow"
        if recipient in self.drop_after_dot:
            server.transport.close()
            return "250 2.0.0 never heard"
        if recipient in self.data_replies:
            return self.data_replies[recipient]
        if server.transport.get_extra_info("ssl_object") is not None:
            self.log.tls_messages += 1
            peer = server.transport.get_extra_info("peercert")
            if peer:
                self.log.client_certs.append(dict(x[0] for x in peer["subject"])["commonName"])
        return str(await super().handle_DATA(server, session, envelope))


@dataclass
class Relay(FaultyServer):
    handler: RelayHandler

    @property
    def log(self) -> RelayLog:
        return self.handler.log


@contextmanager
def relay(pipelining: bool = True, tls: ssl.SSLContext | None = None) -> Iterator[Relay]:
    """aiosmtpd on a free loopback port; offers STARTTLS when given a server TLS context."""
    handler = RelayHandler(pipelining)
    port = free_port()
    kwargs: dict[str, Any] = {"tls_context": tls} if tls is not None else {}
    controller = FaultyController(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    handler.connections = 0
    handler.log.helo_names.clear()  # start()'s own check is not a client
    try:
        yield Relay("127.0.0.1", port, handler)
    finally:
        controller.stop()


class RecordingProxy:
    """A TCP proxy on loopback that keeps every chunk the client sent, as the kernel handed it over."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.chunks: list[bytes] = []

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, record: bool) -> None:
        while data := await source.read(65536):
            if record:
                self.chunks.append(data)
            sink.write(data)
        sink.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(reader, upstream_writer, True),
                             self._pipe(upstream_reader, writer, False), return_exceptions=True)


@asynccontextmanager
async def recording_proxy(target_port: int) -> AsyncIterator[RecordingProxy]:
    proxy = RecordingProxy(target_port)
    server = await asyncio.start_server(proxy._connection, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    async with server:
        yield proxy


# -- certificates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A CA made for one test, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self, ask_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        if ask_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=self.ca)
        return context


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _issue(name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey,
           *, ca: bool = False, san: x509.SubjectAlternativeName | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
        ), critical=True).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Relay CA")])
    ca_cert = _issue("Test Relay CA", ca_key, ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    server_cert = _issue("localhost", server_key, ca_name, ca_key, san=san)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _issue("mailer.harmonymails.com", client_key, ca_name, ca_key)
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (directory / "server.pem").write_bytes(server_cert.public_bytes(pem))
    (directory / "client.pem").write_bytes(client_cert.public_bytes(pem))
    return Pki(directory / "ca.pem", directory / "server.pem", _write_key(directory / "server.key", server_key),
               directory / "client.pem", _write_key(directory / "client.key", client_key))
