"""DKIM: our OpenSSL signatures verify with dkimpy against the record `mailer dkim keygen` prints."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import dkim
import pytest
from cli_helpers import Cli
from compose_helpers import (
    dkim_key,
    dns_for,
    make_campaign,
    make_config,
    make_list,
    make_recipient,
    parse,
    render,
)

from mailer.config import load_config
from mailer.content.compliance import check_message
from mailer.content.compose import Composer
from mailer.content.dkim import canonical_body, load_private_key
from mailer.errors import ConfigError

REQUIRED = {"from", "to", "subject", "date", "message-id", "mime-version", "content-type",
            "list-unsubscribe", "list-unsubscribe-post"}


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dkim")


def signed_message(key_dir: Path, **kwargs: object) -> bytes:
    dkim_key(str(key_dir))
    return render(make_config(dkim_key=key_dir / "hm1.pem"), **kwargs).data  # type: ignore[arg-type]


def tags(data: bytes) -> dict[str, str]:
    message = parse(data)
    value = " ".join(str(message["DKIM-Signature"]).split())
    return {k.strip(): v.strip() for k, _, v in (t.partition("=") for t in value.split(";"))}


def test_signature_verifies_against_the_published_record(key_dir: Path) -> None:
    data = signed_message(key_dir)
    record = dkim_key(str(key_dir))
    assert data.startswith(b"DKIM-Signature: ")
    assert dkim.verify(data, dnsfunc=dns_for(record))
    parsed = parse(data)
    assert parsed.defects == []
    assert len(parsed.get_all("DKIM-Signature", [])) == 1
    assert check_message(make_config(dkim_key=key_dir / "hm1.pem"), render(
        make_config(dkim_key=key_dir / "hm1.pem"))) == []


def test_signature_covers_the_list_headers_and_aligns_with_from(key_dir: Path) -> None:
    found = tags(signed_message(key_dir))
    signed = {h.strip().lower() for h in found["h"].replace(" ", "").split(":")}
    assert signed >= REQUIRED
    assert found["a"] == "rsa-sha256" and found["c"] == "relaxed/relaxed"
    assert found["d"] == "harmonymails.com" and found["s"] == "hm1"
    from_domain = parse(signed_message(key_dir))["From"].addresses[0].domain
    assert from_domain == found["d"]


def test_key_is_2048_bits(key_dir: Path) -> None:
    dkim_key(str(key_dir))
    assert load_private_key(str(key_dir / "hm1.pem")).key_size == 2048


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
                            b"List-Unsubscribe-Post: List-Unsubscribe=Two-Clicks"),
        lambda d: re.sub(rb"List-Unsubscribe: <https://harmonymails.com/u/", b"List-Unsubscribe: <https://evil.test/u/", d),
        lambda d: d.replace(b"Content-Type: multipart/alternative;",
                            b"List-Unsubscribe: <https://evil.test/u/x>\r\nContent-Type: multipart/alternative;"),
        lambda d: d.replace(b"Subject: Spring", b"Subject: Autumn"),
        lambda d: d.replace(b"Visit the shop", b"Visit the scam"),
    ],
    ids=["list-unsubscribe-post", "list-unsubscribe", "added-list-unsubscribe", "subject", "body"],
)
def test_any_change_to_a_signed_part_breaks_the_signature(key_dir: Path, tamper: object) -> None:
    data = signed_message(key_dir)
    record = dkim_key(str(key_dir))
    changed = tamper(data)  # type: ignore[operator]
    assert changed != data
    assert not dkim.verify(changed, dnsfunc=dns_for(record))


def test_relaxed_canonicalization_survives_refolding(key_dir: Path) -> None:
    data = signed_message(key_dir)
    record = dkim_key(str(key_dir))
    # a relay that unfolds a header and adds trailing blanks to body lines changes nothing relaxed sees
    refolded = data.replace(b",\r\n <mailto:", b", <mailto:").replace(b"Hello Ana Lima\r\n", b"Hello Ana Lima   \r\n")
    assert refolded != data
    assert dkim.verify(refolded, dnsfunc=dns_for(record))


def test_relaxed_body_canonical_form() -> None:
    assert canonical_body(b"a  b \t\r\nc\r\n\r\n\r\n") == b"a b\r\nc\r\n"
    assert canonical_body(b"\r\n\r\n") == b""


def test_unreadable_or_wrong_key_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_private_key(str(tmp_path / "missing.pem"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(ConfigError, match="not a usable RSA private key"):
        load_private_key(str(garbage))
    config = make_config(dkim_key=tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match=r"dkim\.private_key"):
        Composer(config, make_campaign(), make_list())


def test_keygen_command_writes_a_private_key_and_prints_the_record(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "hm2026.pem"
    result = cli("dkim", "keygen", "--selector", "hm2026", "--out", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = load_private_key(str(out))
    assert key.key_size == 2048
    match = re.search(r'^hm2026\._domainkey\.harmonymails\.com\. IN TXT \( (.+) \)$', result.output, re.M)
    assert match is not None, result.output
    strings = re.findall(r'"([^"]*)"', match[1])
    assert all(len(s) <= 255 for s in strings)
    record = "".join(strings)
    assert record.startswith("v=DKIM1; k=rsa; p=")
    # the printed record is the one that verifies messages signed with the key
    config_path = tmp_path / "signed.toml"
    config_path.write_text(cli.config_path.read_text() + f'\n[dkim]\ndomain = "harmonymails.com"\n'
                           f'selector = "hm2026"\nprivate_key = "{out}"\n')
    data = render(load_config(config_path, environ={})).data
    lookup = {b"hm2026._domainkey.harmonymails.com.": record.encode()}
    assert dkim.verify(data, dnsfunc=lambda name, timeout=5: lookup.get(name, b""))
    assert 'private_key = "' in result.output
    # an existing key is never overwritten
    again = cli("dkim", "keygen", "--selector", "hm2026", "--out", str(out), ok=False)
    assert again.exit_code == 1
    assert "already exists" in again.stderr and again.stderr.count("\n") == 1
    assert load_private_key(str(out)).private_numbers() == key.private_numbers()


def test_folded_and_encoded_headers_verify(key_dir: Path) -> None:
    campaign = make_campaign(
        subject="夏のコンサート、今週末まで Harmony Mails からのお知らせ and a long English tail " * 2,
        from_address="Événements Harmony <events@harmonymails.com>",
    )
    config = make_config(dkim_key=key_dir / "hm1.pem", sender={"reply_to": "Aide <help@harmonymails.com>"})
    dkim_key(str(key_dir))
    data = render(config, campaign, make_recipient(name="Zoë Ångström-Núñez de la Montaña y Castañeda")).data
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert dkim.verify(data, dnsfunc=dns_for(dkim_key(str(key_dir))))
    signed = {h.strip() for h in tags(data)["h"].replace(" ", "").split(":")}
    assert {"reply-to", "list-id"} <= signed


# a throwaway 768-bit key (cryptography will not even generate one this small)
SHORT_KEY_PEM = """-----BEGIN PRIVATE KEY-----
MIIB5AIBADANBgkqhkiG9w0BAQEFAASCAc4wggHKAgEAAmEAvkiZq4bSWBSE10hq
vi148xRDTTjjygfk28eeueE+HqsT115XPju9vIR3nS9nRhf3Bi4cMT5dkkHYm4v4
6wBJlNIVoCQMXdUiGH2oFEUYJa6YIwpyR/2Qd7ECC89Iy+cfAgMBAAECYGhlhInq
6jSQ7WD/xjCY2ibjExmnALKzKgi6uIba4S4KRlR+2fa26B4pv0Zp34tBUb3n3YC3
lY18jHCJpB+xYMDN5e22P6G6nXY8exjZsB+kReR8D/rypeHFSx3W5c4xQQIxAPov
o1I2J2N368465dqBPTVu/W4utPjXakUrwcyofjBDOtoQX0IOTnw8cKzEdiBTWQIx
AMK0mecrXgvNISOfW/Y6S9ZawlU+Lobk1T0Mr3nmhs+nMDm5/iBfhF1JlhrgiKUX
NwIwExNwy4Lvi+kH5Mie4AM8rIdS8YTELbkXFEEa3MT4IivuH9RhvwKiP1zIZpPw
QdS5AjBMxxDFUpmUR8Bgnq+Rye0rysBFAu8v7D6WA1GS3S+d5Mykhs5KD8BPVPwm
/xGDIEMCMQDg/lzVZGB8M+N7/i746FCiZ0pDr+lmVUCjx0BooZCFIlszJPLyBxy+
J0phVnRwoSM=
-----END PRIVATE KEY-----
"""


def test_keys_under_1024_bits_are_refused(tmp_path: Path) -> None:
    short = tmp_path / "short.pem"
    short.write_text(SHORT_KEY_PEM)
    with pytest.raises(ConfigError, match="768 bits; DKIM needs at least 1024"):
        load_private_key(str(short))
