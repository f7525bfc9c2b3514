"""`mailer doctor` against a DNS server on loopback serving a good zone and each broken variant."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import TEST_SECRET_KEY, Cli, write_config
from dns_helpers import Records, ZoneResolver, dns_server
from serve_helpers import free_port, start_serve, stop_serve
from smtp_faults import FaultyServer

from mailer.audit import list_events
from mailer.config import Config, load_config
from mailer.content.dkim import generate_key
from mailer.db import Database
from mailer.doctor.checkup import run_doctor
from mailer.doctor.config_checks import web_finding
from mailer.doctor.results import Finding, Status

RELAY_IP = "192.0.2.10"


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 2048-bit key and its record, made once: key generation is slow on a shared machine."""
    path = tmp_path_factory.mktemp("dkim") / "hm1.pem"
    record = generate_key(path, "harmonymails.com", "hm1")
    return path, record.value


@pytest.fixture
def zone(dkim_key: tuple[Path, str]) -> Records:
    """Everything a receiver wants of harmonymails.com, sending from 192.0.2.10."""
    return {
        "harmonymails.com": [("TXT", "v=spf1 include:_spf.harmonymails.com -all"), ("A", "192.0.2.80"),
                             ("MX", "mx.harmonymails.com")],
        "_spf.harmonymails.com": [("TXT", "v=spf1 ip4:192.0.2.0/24 ~all")],
        "bounces.harmonymails.com": [("TXT", "v=spf1 a:relay.harmonymails.com -all"),
                                     ("MX", "mx.harmonymails.com")],
        "relay.harmonymails.com": [("A", RELAY_IP)],
        "10.2.0.192.in-addr.arpa": [("PTR", "relay.harmonymails.com")],
        "mx.harmonymails.com": [("A", "192.0.2.25")],
        "hm1._domainkey.harmonymails.com": [("TXT", dkim_key[1])],
        "_dmarc.harmonymails.com": [("TXT", "v=DMARC1; p=quarantine; rua=mailto:dmarc@harmonymails.com")],
    }


@pytest.fixture(scope="module")
def dns() -> Iterator[tuple[str, ZoneResolver]]:
    with dns_server({}) as running:
        yield running


@pytest.fixture
def nameserver(dns: tuple[str, ZoneResolver], zone: Records) -> str:
    """The shared server, answering from this test's own copy of the zone."""
    dns[1].records = zone
    dns[1].failing = False
    return dns[0]


def doctor_config(tmp_path: Path, nameserver: str, smtp: FaultyServer, dkim_path: Path | None,
                  extra: str = "") -> Path:
    dkim = f'[dkim]\ndomain = "harmonymails.com"\nselector = "hm1"\nprivate_key = "{dkim_path}"\n' if dkim_path else ""
    doctor = f'[doctor]\nnameserver = "{nameserver}"\nsending_ips = ["{RELAY_IP}"]\n'
    return write_config(tmp_path / "mailer.toml", f"sqlite:///{tmp_path / 'mailer.db'}", smtp,
                        extra=dkim + doctor + extra)


def findings(config: Config) -> dict[str, Finding]:
    return {finding.check: finding for finding in run_doctor(config)}


@pytest.fixture
def good_config(tmp_path: Path, nameserver: str, smtp_server: FaultyServer,
                dkim_key: tuple[Path, str]) -> Config:
    return load_config(doctor_config(tmp_path, nameserver, smtp_server, dkim_key[0]), environ={})


def test_a_good_zone_passes_every_dns_check(good_config: Config) -> None:
    found = findings(good_config)
    for check in ("spf from", "spf bounces", "dkim", "dmarc", "mx bounces", "unsubscribe", "reverse dns", "relay",
                  "postal", "secrets"):
        assert found[check].status is Status.PASS, found[check]
    assert "passes 192.0.2.10 (1 of 10 look-ups)" in found["spf from"].message
    assert "2048 bits" in found["dkim"].message
    assert "From aligned via DKIM and SPF" in found["dmarc"].message


def _broken(zone: Records, name: str, records: list[tuple[str, str]] | None) -> None:
    if records is None:
        del zone[name]
    else:
        zone[name] = records


@pytest.mark.parametrize(("name", "records", "check", "status", "words"), [
    ("harmonymails.com", [("A", "192.0.2.80")], "spf from", Status.FAIL, "has no SPF record"),
    ("bounces.harmonymails.com", [("TXT", "v=spf1 -all"), ("TXT", "v=spf1 a -all"), ("MX", "mx.harmonymails.com")],
     "spf bounces", Status.FAIL, "has 2 SPF records"),
    ("_spf.harmonymails.com", [("TXT", "v=spf1 ip4:198.51.100.0/24 -all")], "spf from", Status.FAIL,
     "gives fail for the relay's address 192.0.2.10"),
    ("hm1._domainkey.harmonymails.com", None, "dkim", Status.FAIL, "no DKIM key published"),
    ("_dmarc.harmonymails.com", None, "dmarc", Status.FAIL, "no DMARC record at _dmarc.harmonymails.com"),
    ("_dmarc.harmonymails.com", [("TXT", "v=DMARC1; p=none")], "dmarc", Status.WARN, "p=none"),
    ("_dmarc.harmonymails.com", [("TXT", "v=DMARC1; rua=mailto:d@harmonymails.com")], "dmarc", Status.FAIL,
     "no valid p= policy"),
    ("bounces.harmonymails.com", [("TXT", "v=spf1 a:relay.harmonymails.com -all")], "mx bounces", Status.FAIL,
     "no MX record"),
    ("harmonymails.com", [("TXT", "v=spf1 include:_spf.harmonymails.com -all")], "unsubscribe", Status.FAIL,
     "does not resolve"),
    ("_spf.harmonymails.com", [("TXT", "v=spf1 " + " ".join(f"a:h{i}.harmonymails.com" for i in range(11))
                                + " -all")], "spf from", Status.FAIL, "more than 10 DNS look-ups"),
    ("10.2.0.192.in-addr.arpa", None, "reverse dns", Status.FAIL, "192.0.2.10 has no PTR record"),
    ("10.2.0.192.in-addr.arpa", [("PTR", "mx.harmonymails.com")], "reverse dns", Status.FAIL,
     "is named mx.harmonymails.com, which does not resolve back to 192.0.2.10"),
], ids=["no SPF", "two SPF", "SPF misses relay", "no DKIM record", "no DMARC", "DMARC p=none",
        "DMARC without p", "no MX", "unsubscribe host", "over 10 look-ups", "no PTR", "PTR not confirmed"])
def test_each_broken_record_is_named_with_its_fix(
    good_config: Config, zone: Records, name: str, records: list[tuple[str, str]] | None,
    check: str, status: Status, words: str,
) -> None:
    _broken(zone, name, records)
    found = findings(good_config)
    assert found[check].status is status, found[check]
    assert words in found[check].message
    others = [f for f in found.values() if f.check != check and f.status in (Status.FAIL, Status.WARN)]
    assert all(f.check == "extensions" for f in others), others


def test_a_dkim_record_for_another_key_fails_and_would_stop_a_send(
    good_config: Config, zone: Records, tmp_path: Path,
) -> None:
    other = generate_key(tmp_path / "other.pem", "harmonymails.com", "hm1", bits=1024)
    zone["hm1._domainkey.harmonymails.com"] = [("TXT", other.value)]
    found = findings(good_config)["dkim"]
    assert found.status is Status.FAIL and found.hopeless
    assert "is not the public half of dkim.private_key" in found.message


def test_a_1024_bit_key_is_a_warning(tmp_path: Path, nameserver: str, zone: Records,
                                     smtp_server: FaultyServer) -> None:
    small = tmp_path / "small.pem"
    zone["hm1._domainkey.harmonymails.com"] = [("TXT", generate_key(small, "harmonymails.com", "hm1", 1024).value)]
    config = load_config(doctor_config(tmp_path, nameserver, smtp_server, small), environ={})
    found = findings(config)["dkim"]
    assert found.status is Status.WARN and "1024 bits" in found.message


def test_from_aligned_with_neither_dkim_nor_the_return_path_fails(
    tmp_path: Path, nameserver: str, zone: Records, smtp_server: FaultyServer,
) -> None:
    zone["bounces.mailhost.net"] = [("TXT", f"v=spf1 ip4:{RELAY_IP} -all"), ("MX", "mx.mailhost.net")]
    path = doctor_config(tmp_path, nameserver, smtp_server, None,
                         extra='[sender]\nbounce_domain = "bounces.mailhost.net"\n')
    found = findings(load_config(path, environ={}))
    assert found["dmarc"].status is Status.FAIL
    assert "aligned with neither the DKIM domain nor the return path's domain" in found["dmarc"].message
    assert found["spf bounces"].status is Status.PASS


def _co_uk_findings(tmp_path: Path, nameserver: str, zone: Records, smtp_server: FaultyServer,
                    bounce_domain: str) -> Finding:
    # the organizational domain of news.harmonymails.co.uk is harmonymails.co.uk (the Public
    # Suffix List), not its last two labels: co.uk belongs to nobody
    zone["_dmarc.harmonymails.co.uk"] = [("TXT", "v=DMARC1; p=reject")]
    zone[bounce_domain] = [("TXT", f"v=spf1 ip4:{RELAY_IP} -all"), ("MX", "mx.harmonymails.com")]
    path = doctor_config(tmp_path, nameserver, smtp_server, None, extra=(
        f'[sender]\nfrom = "News <news@news.harmonymails.co.uk>"\nbounce_domain = "{bounce_domain}"\n'))
    return findings(load_config(path, environ={}))["dmarc"]


def test_dmarc_of_a_subdomain_is_found_at_its_organizational_domain_under_a_two_label_suffix(
    tmp_path: Path, nameserver: str, zone: Records, smtp_server: FaultyServer,
) -> None:
    found = _co_uk_findings(tmp_path, nameserver, zone, smtp_server, "bounces.harmonymails.co.uk")
    assert found.status is Status.PASS, found
    assert found.message.startswith("_dmarc.harmonymails.co.uk has p=reject; From aligned via SPF")


def test_two_owners_under_one_public_suffix_are_not_aligned(
    tmp_path: Path, nameserver: str, zone: Records, smtp_server: FaultyServer,
) -> None:
    found = _co_uk_findings(tmp_path, nameserver, zone, smtp_server, "bounces.mailhost.co.uk")
    assert found.status is Status.FAIL
    assert "aligned with neither the DKIM domain nor the return path's domain" in found.message


def test_dns_that_does_not_answer_is_unknown_not_a_failure(
    tmp_path: Path, nameserver: str, dns: tuple[str, ZoneResolver], smtp_server: FaultyServer,
) -> None:
    dns[1].failing = True
    config = load_config(doctor_config(tmp_path, nameserver, smtp_server, None), environ={})
    found = findings(config)
    for check in ("spf from", "spf bounces", "dmarc", "mx bounces", "unsubscribe"):
        assert found[check].status is Status.UNKNOWN, found[check]
    assert "cannot tell" in found["dmarc"].message


def test_the_command_prints_one_line_per_check_and_exits_1_on_a_failure(
    tmp_path: Path, nameserver: str, zone: Records, smtp_server: FaultyServer, dkim_key: tuple[Path, str],
) -> None:
    cli = Cli(doctor_config(tmp_path, nameserver, smtp_server, dkim_key[0]))
    good = cli("doctor")
    assert "PASS    dkim         hm1._domainkey.harmonymails.com publishes the public half" in good.output
    del zone["_dmarc.harmonymails.com"]
    bad = cli("doctor", "--json", ok=False)
    assert bad.exit_code == 1
    report = json.loads(bad.output)
    assert not report["ok"]
    assert {"check": "dmarc", "status": "FAIL"}.items() <= next(
        c for c in report["checks"] if c["check"] == "dmarc").items()


def test_a_bad_nameserver_setting_is_one_line(tmp_path: Path) -> None:
    path = write_config(tmp_path / "mailer.toml", f"sqlite:///{tmp_path / 'm.db'}",
                        extra='[doctor]\nnameserver = "dns.example.com"\n')
    result = Cli(path)("doctor", ok=False)
    assert result.exit_code == 1
    assert "doctor.nameserver" in result.stderr and result.stderr.count("\n") == 1


@pytest.fixture
def ready_to_send(tmp_path: Path, nameserver: str, smtp_server: FaultyServer, dkim_key: tuple[Path, str]) -> Cli:
    db = Database(f"sqlite:///{tmp_path / 'mailer.db'}")
    db.upgrade()
    db.dispose()
    cli = Cli(doctor_config(tmp_path, nameserver, smtp_server, dkim_key[0]))
    cli("list", "create", "news", "--title", "Harmony News")
    cli("subscriber", "add", "ana@example.com", "--list", "news", "--name", "Ana Lima")
    cli("campaign", "create", "--list", "news", "--subject", "Welcome to Harmony News", "--template", "welcome")
    return cli


def test_send_refuses_a_dkim_key_that_does_not_match_its_record_unless_forced(
    ready_to_send: Cli, zone: Records, smtp_server: FaultyServer, tmp_path: Path,
) -> None:
    other = generate_key(tmp_path / "other.pem", "harmonymails.com", "hm1", bits=1024)
    zone["hm1._domainkey.harmonymails.com"] = [("TXT", other.value)]
    refused = ready_to_send("campaign", "send", "1", ok=False)
    assert refused.exit_code == 1 and refused.stderr.count("\n") == 1
    assert "campaign 1 not started" in refused.stderr and "dkim: the key published at" in refused.stderr
    assert "--force" in refused.stderr
    assert smtp_server.messages == []
    forced = ready_to_send("campaign", "send", "1", "--force")
    assert "warning: sending despite dkim" in forced.stderr
    assert len(smtp_server.messages) == 1
    db = Database(f"sqlite:///{tmp_path / 'mailer.db'}")
    with db.session() as session:
        events = [e for e in list_events(session) if e.action == "send_forced"]
    db.dispose()
    assert [e.subject for e in events] == ["campaign 1"]
    assert "is not the public half of dkim.private_key" in events[0].reason


def test_send_goes_ahead_when_dns_cannot_answer(
    ready_to_send: Cli, dns: tuple[str, ZoneResolver], smtp_server: FaultyServer,
) -> None:
    dns[1].failing = True
    ready_to_send("campaign", "send", "1")
    assert len(smtp_server.messages) == 1


@pytest.mark.slow
def test_web_fetches_healthz_from_the_running_app_and_names_a_dead_one(
    tmp_path: Path, nameserver: str, smtp_server: FaultyServer,
) -> None:
    port = free_port()
    db = Database(f"sqlite:///{tmp_path / 'mailer.db'}")
    db.upgrade()
    db.dispose()
    path = tmp_path / "web.toml"
    db_file = tmp_path / "mailer.db"
    path.write_text(f'[database]\nurl = "sqlite:///{db_file}"\n'
                    f'[unsubscribe]\nsecret_keys = ["{TEST_SECRET_KEY}"]\nbase_url = "http://127.0.0.1:{port}"\n'
                    f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_server.port}\nstarttls = "off"\n'
                    f'[doctor]\nnameserver = "{nameserver}"\n', encoding="utf-8")
    config = load_config(path, environ={})
    assert web_finding(config, timeout=5).status is Status.FAIL
    server = start_serve(path, port)
    try:
        found = {f.check: f for f in run_doctor(config, web=True)}
    finally:
        stop_serve(server)
    assert found["web"].status is Status.PASS and "/healthz answers 200" in found["web"].message
    assert found["unsubscribe"].status is Status.FAIL and "https" in found["unsubscribe"].message


def test_doctor_settings_are_checked_one_line_each(tmp_path: Path) -> None:
    for bad, key in (('sending_ips = ["relay.example.com"]', "doctor.sending_ips"),
                     ('nameserver = "127.0.0.1:99999"', "doctor.nameserver")):
        path = write_config(tmp_path / "mailer.toml", f"sqlite:///{tmp_path / 'm.db'}", extra=f"[doctor]\n{bad}\n")
        result = Cli(path)("doctor", ok=False)
        assert key in result.stderr and result.stderr.count("\n") == 1


def test_dns_off_makes_every_dns_line_unknown(tmp_path: Path, smtp_server: FaultyServer) -> None:
    config = load_config(doctor_config(tmp_path, "off", smtp_server, None), environ={})
    found = findings(config)
    assert found["dmarc"].status is Status.UNKNOWN and 'nameserver = "off"' in found["dmarc"].message
