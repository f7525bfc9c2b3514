"""Amazon SNS message signatures (versions 1 and 2) and the signing certificates they name, fetched once."""

from __future__ import annotations

import base64
import binascii
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mailer.web.webhooks.common import WebhookRefused, as_text

# only SNS's own endpoints serve its certificates and subscription links
_SNS_HOST = re.compile(r"sns\.[a-z]{2}(?:-[a-z]+)+-[0-9]\.amazonaws\.com(?:\.cn)?")
# a PEM certificate is a few KB; more is not one
MAX_CERTIFICATE_BYTES = 64 * 1024
# SNS rotates its certificate now and then; a handful per region is all a server ever sees
_MAX_CACHED = 32
_FETCH_TIMEOUT = 10.0
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
# the fields signed, in this order, for each type of message (absent ones are left out)
_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}


def check_sns_url(url: str) -> None:
    """Raises WebhookRefused (403) unless `url` is https on sns.<region>.amazonaws.com, default port."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme != "https" or parts.username is not None or parts.password is not None
            or port not in (None, 443) or not _SNS_HOST.fullmatch(parts.hostname or "")):
        raise WebhookRefused(403, "the URL is not on sns.<region>.amazonaws.com over https")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # a redirect would lead the fetch off the host that was checked
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())


def https_get(url: str) -> bytes:
    """GET over https with the system's CAs, no redirects, bounded in size and time; raises WebhookRefused (502)."""
    try:
        with _OPENER.open(url, timeout=_FETCH_TIMEOUT) as response:
            return bytes(response.read(MAX_CERTIFICATE_BYTES + 1))[: MAX_CERTIFICATE_BYTES + 1]
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the connection of the answer it stands for
        raise WebhookRefused(502, f"cannot reach SNS: HTTPError {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise WebhookRefused(502, f"cannot reach SNS: {type(exc).__name__}") from None


class SnsCertificates:
    """SNS signing certificates by URL, each fetched once; `fetch` does the GET (https_get by default)."""

    def __init__(self, fetch: Callable[[str], bytes] = https_get) -> None:
        self._fetch = fetch
        self._cache: dict[str, rsa.RSAPublicKey] = {}
        self._lock = threading.Lock()

    def public_key(self, url: str) -> rsa.RSAPublicKey:
        """The RSA key of the certificate at `url`; raises WebhookRefused for another host or a bad certificate."""
        check_sns_url(url)
        with self._lock:
            cached = self._cache.get(url)
        if cached is not None:
            return cached
        pem = self._fetch(url)
        if len(pem) > MAX_CERTIFICATE_BYTES:
            raise WebhookRefused(403, "the signing certificate is too large")
        try:
            key = x509.load_pem_x509_certificate(pem).public_key()
        except ValueError:
            raise WebhookRefused(403, "the signing certificate cannot be read") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise WebhookRefused(403, "the signing certificate has no RSA key")
        with self._lock:
            if len(self._cache) >= _MAX_CACHED:
                self._cache.pop(next(iter(self._cache)))
            self._cache[url] = key
        return key

    def confirm_subscription(self, url: str) -> None:
        """GET a SubscriptionConfirmation's SubscribeURL, which must be SNS's own."""
        check_sns_url(url)
        self._fetch(url)


def string_to_sign(message: dict[str, Any]) -> bytes:
    """The text SNS signs: each signed field's name and value on lines of their own."""
    fields = _SIGNED_FIELDS.get(as_text(message.get("Type")), ())
    lines = [f"{name}\n{as_text(message[name], 1 << 20)}\n" for name in fields if name in message]
    return "".join(lines).encode("utf-8")


def verify_message(certificates: SnsCertificates, message: dict[str, Any]) -> None:
    """Raises WebhookRefused (403) unless SNS signed the message with the certificate it names."""
    make_hash = _HASHES.get(as_text(message.get("SignatureVersion")))
    if make_hash is None:
        raise WebhookRefused(403, "unknown SignatureVersion")
    try:
        signature = base64.b64decode(as_text(message.get("Signature"), 4096), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookRefused(403, "bad signature") from None
    key = certificates.public_key(as_text(message.get("SigningCertURL"), 2048))
    try:
        key.verify(signature, string_to_sign(message), padding.PKCS1v15(), make_hash())
    except InvalidSignature:
        raise WebhookRefused(403, "bad signature") from None
