"""DKIM: rsa-sha256 relaxed/relaxed signatures with OpenSSL (cryptography), keys and their DNS record."""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mailer.config import Config
from mailer.errors import ConfigError, InvalidInputError

# what the signature covers; a forwarder that changes any of these breaks it, as it should
SIGNED_HEADERS = (
    "from", "to", "subject", "date", "message-id", "mime-version", "content-type",
    "reply-to", "list-id", "list-unsubscribe", "list-unsubscribe-post",
)
# listed once more than they occur, so nobody can add a second one later without breaking it
OVERSIGNED_HEADERS = frozenset({"from", "to", "subject", "list-unsubscribe", "list-unsubscribe-post"})
MIN_KEY_BITS = 1024
KEY_BITS = 2048

_WSP_RUN = re.compile(rb"[ \t]+")
# only what relaxed canonicalization changes: a tab, or a blank followed by another blank
_WSP_TO_SQUEEZE = re.compile(rb"(?:\t| [ \t])[ \t]*")
_TRAILING_WSP = re.compile(rb"[ \t]+\r\n")


def canonical_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4 relaxed body: no trailing blanks, blank runs as one space, one final CRLF."""
    # the searches skip the regex passes on what is already canonical, as quoted-printable mostly is
    if b" \r\n" in body or b"\t\r\n" in body:
        body = _TRAILING_WSP.sub(b"\r\n", body)
    if b"  " in body or b"\t" in body:
        body = _WSP_TO_SQUEEZE.sub(b" ", body)
    body = body.rstrip(b"\r\n")
    return body + b"\r\n" if body else b""


def canonical_header(field: bytes) -> bytes:
    """RFC 6376 3.4.2 relaxed header: lower-case name, unfolded value, blank runs as one space."""
    name, _, value = field.partition(b":")
    value = _WSP_RUN.sub(b" ", value.replace(b"\r\n", b"")).strip(b" \t")
    return name.strip().lower() + b":" + value + b"\r\n"


def split_header_fields(head: bytes) -> list[tuple[str, bytes]]:
    """(lower-case name, whole field with folds) for each field of a CRLF header block."""
    fields: list[tuple[str, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, raw = fields[-1]
            fields[-1] = (name, raw + b"\r\n" + line)
        elif line:
            fields.append((line.partition(b":")[0].strip().lower().decode("ascii", "replace"), line))
    return fields


class DkimSigner:
    """Signs finished messages for one domain and selector."""

    def __init__(self, domain: str, selector: str, key: rsa.RSAPrivateKey) -> None:
        if key.key_size < MIN_KEY_BITS:
            raise InvalidInputError(f"a DKIM key needs at least {MIN_KEY_BITS} bits; this one has {key.key_size}")
        self.domain = domain.lower()
        self.selector = selector
        self._key = key
        self._padding = padding.PKCS1v15()
        self._hash = hashes.SHA256()

    def sign(self, message: bytes, timestamp: int | None = None) -> bytes:
        """The `DKIM-Signature:` header line (with CRLF) to put first in the message."""
        head, _, body = message.partition(b"\r\n\r\n")
        body_hash = base64.b64encode(hashlib.sha256(canonical_body(body)).digest()).decode("ascii")
        present: dict[str, list[bytes]] = {}
        for name, raw in split_header_fields(head + b"\r\n"):
            present.setdefault(name, []).append(raw)
        names: list[str] = []
        signed = []
        for name in SIGNED_HEADERS:
            occurrences = present.get(name, [])
            for raw in reversed(occurrences):  # RFC 6376 5.4.2: bottom-up
                names.append(name)
                signed.append(canonical_header(raw))
            if occurrences and name in OVERSIGNED_HEADERS:
                names.append(name)
        stamp = int(time.time()) if timestamp is None else timestamp
        value = (
            f" v=1; a=rsa-sha256; c=relaxed/relaxed; d={self.domain}; s={self.selector};\r\n"
            f"\tt={stamp}; h={_fold_list(names)};\r\n"
            f"\tbh={body_hash};\r\n\tb="
        ).encode("ascii")
        signed.append(canonical_header(b"DKIM-Signature:" + value)[:-2])  # hashed without its CRLF
        signature = self._key.sign(b"".join(signed), self._padding, self._hash)
        b64 = base64.b64encode(signature)
        folded = b"\r\n\t".join(b64[i:i + 72] for i in range(0, len(b64), 72))
        return b"DKIM-Signature:" + value + folded + b"\r\n"


def _fold_list(names: list[str]) -> str:
    lines: list[str] = []
    line = ""
    for name in names:
        piece = name if not line else ":" + name
        if len(line) + len(piece) > 60:
            lines.append(line + ":")
            line = name
        else:
            line += piece
    lines.append(line)
    return "\r\n\t".join(lines)


def load_private_key(path: str, source: str = "<config>") -> rsa.RSAPrivateKey:
    """An RSA private key from a PEM file; raises ConfigError naming the file and the reason."""
    if "-----BEGIN" in path or "\n" in path:
        # the key itself where its path belongs: an error must not print it
        raise ConfigError(source, "dkim.private_key", "must be the path to a PEM file, not the key itself")
    try:
        stat = os.stat(path)
        return _load_cached(path, stat.st_mtime_ns, stat.st_size)
    except OSError as exc:
        raise ConfigError(source, "dkim.private_key", f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(source, "dkim.private_key", f"{path} is not a usable RSA private key: {exc}") from None


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, _mtime_ns: int, _size: int) -> rsa.RSAPrivateKey:
    # keyed by mtime and size too, so a replaced key file is read again
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError("only RSA keys are supported")
    if key.key_size < MIN_KEY_BITS:
        raise ValueError(f"the key has {key.key_size} bits; DKIM needs at least {MIN_KEY_BITS}")
    return key


def signer_from_config(config: Config) -> DkimSigner | None:
    """The signer for `[dkim]`, or None when DKIM is not configured; raises ConfigError."""
    if not config.dkim.enabled:
        return None
    key = load_private_key(config.dkim.private_key, config.source)
    return DkimSigner(config.dkim.domain, config.dkim.selector, key)


@dataclass(frozen=True)
class DnsRecord:
    """The TXT record that publishes a DKIM public key."""

    name: str  # selector._domainkey.domain
    value: str  # v=DKIM1; k=rsa; p=...

    def zone_line(self) -> str:
        """The record as a BIND zone line, the value split into strings of at most 255 characters."""
        parts = " ".join(f'"{self.value[i:i + 255]}"' for i in range(0, len(self.value), 255))
        return f"{self.name}. IN TXT ( {parts} )"


def public_key_record(key: rsa.RSAPrivateKey, domain: str, selector: str) -> DnsRecord:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return DnsRecord(
        name=f"{selector}._domainkey.{domain.lower()}",
        value=f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}",
    )


_SELECTOR = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def generate_key(path: Path, domain: str, selector: str, bits: int = KEY_BITS) -> DnsRecord:
    """Write a new RSA key to `path` (mode 0600, never over an existing file); return its DNS record.

    Raises InvalidInputError for a bad selector or an existing file.
    """
    if not _SELECTOR.match(selector):
        raise InvalidInputError(f"invalid selector {selector!r}: use letters, digits, '-' and '.'")
    if not _SELECTOR.match(domain):
        raise InvalidInputError(f"invalid domain {domain!r}")
    if bits < MIN_KEY_BITS:
        raise InvalidInputError(f"a DKIM key needs at least {MIN_KEY_BITS} bits")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InvalidInputError(f"{path} already exists; choose another --out or remove it") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot write {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return public_key_record(key, domain, selector)
