"""`mailer inbound fetch`: bounce mailboxes read from a real Dovecot over IMAP(S) and POP3(S)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cli_helpers import Cli, write_config
from dovecot_helpers import DOVECOT, PASSWORD, USER, Dovecot, non_loopback_address, running_dovecot
from hypothesis import given
from hypothesis import strategies as st
from inbound_helpers import World, delivery_row
from recipient_helpers import audit_events, statuses, suppressions

from mailer.config import load_config, parse_mailbox_url
from mailer.db import address_hash
from mailer.errors import ConfigError
from mailer.inbound.process import InboundKind
from mailer.models import BounceEvent, DeliveryState, SubscriptionStatus, SuppressionReason

BOUNCE_ID = "<20261125094007.4Zk5Rr0Q2Fz9vXb@mail.harmonymails.com>"
UNSUBSCRIBE_ID = "<mailto-unsub-0001@mail.example.com>"
COMPLAINT_ID = "<1764068404.9f8e7d6c.cfl@arf.mail.yahoo.com>"
QUESTION_ID = "<question-0001@example.com>"


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    if not DOVECOT.exists():
        pytest.skip("needs Debian's dovecot-imapd and dovecot-pop3d (apt-get install dovecot-imapd "
                    "dovecot-pop3d; .ci/run does)")
    with running_dovecot() as server:
        yield server


@pytest.mark.parametrize(("table", "key", "reason"), [
    ({"url": "https://bounces@imap.example.net/INBOX"}, "url", "must start with imaps://, imap://"),
    ({"url": "imaps://bounces:secret@imap.example.net/INBOX"}, "url", "must not hold the password"),
    ({"url": "imaps://imap.example.net/INBOX"}, "url", "must name the user and the host"),
    ({"url": "pop3s://bounces@pop.example.net/INBOX", "done": "delete"}, "url", "a POP3 mailbox has no folders"),
    ({"url": "pop3s://bounces@pop.example.net"}, "done", 'a POP3 server can only delete: set done = "delete"'),
    ({"done": "archive"}, "done", 'must be "seen", "delete" or "move:FOLDER"'),
    ({"name": "bounces box"}, "name", "must be letters, digits, - and _"),
    ({"password": 1234}, "password", "must be a string; got a number"),
])
def test_a_bad_mailbox_table_is_one_line_naming_the_key(tmp_path: Path, table: dict[str, object], key: str,
                                                          reason: str) -> None:
    entry = {"name": "bounces", "url": "imaps://bounces@imap.example.net/INBOX", **table}
    lines = "".join(f"{name} = {json.dumps(value)}\n" for name, value in entry.items())
    path = tmp_path / "mailer.toml"
    path.write_text(f"[[inbound.mailboxes]]\n{lines}")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value).startswith(f"{path}: inbound.mailboxes[0].{key}: {reason}")
    assert "secret" not in str(caught.value) and "1234" not in str(caught.value)


@given(st.sampled_from(["imaps://", "imap://", "pop3s://", "pop3://", "http://", ""]),
       st.text(alphabet=st.sampled_from("ab@:%/[]?#1.0 \n\x00é"), max_size=40))
def test_any_url_is_a_mailbox_or_a_value_error(scheme: str, rest: str) -> None:
    url = scheme + rest
    try:
        where = parse_mailbox_url(url)
    except ValueError as exc:
        assert "\n" not in str(exc)
        return
    assert where.scheme in ("imaps", "imap", "pop3s", "pop3") and where.user and where.host
    assert 1 <= where.port <= 65535


def test_the_environment_password_wins_and_is_never_shown(tmp_path: Path) -> None:
    path = tmp_path / "mailer.toml"
    path.write_text('[[inbound.mailboxes]]\nname = "isp-bounces"\nurl = "pop3s://b%40x.org@pop.x.org:1995"\n'
                    'done = "delete"\npassword = "from-file"\n')
    [box] = load_config(path, environ={"MAILER_INBOUND_ISP_BOUNCES_PASSWORD": "from-env"}).inbound.mailboxes
    assert box.password == "from-env"
    assert (box.location.user, box.location.host, box.location.port) == ("b@x.org", "pop.x.org", 1995)
    assert "from-env" not in repr(box)


def mailbox_config(dovecot: Dovecot, scheme: str = "imaps", done: str = "seen", password: str = PASSWORD,
                   ca_file: bool = True, name: str = "bounces") -> str:
    port = {"imaps": dovecot.imaps_port, "imap": dovecot.imap_port, "pop3s": dovecot.pop3s_port,
            "pop3": dovecot.pop3_port}[scheme]
    folder = "/INBOX" if scheme.startswith("imap") else ""
    lines = [
        "[[inbound.mailboxes]]",
        f'name = "{name}"',
        f'url = "{scheme}://{USER}@127.0.0.1:{port}{folder}"',
        f'done = "{done}"',
    ]
    if password:
        lines.append(f'password = "{password}"')
    if ca_file:
        lines.append(f'ca_file = "{dovecot.ca_file}"')
    return "\n".join(lines) + "\n"


def fetch_cli(tmp_path: Path, world: World, extra: str) -> Cli:
    return Cli(write_config(tmp_path / "fetch.toml", world.database.url, extra=extra))


def seed(dovecot: Dovecot, world: World) -> None:
    """A hard bounce for Ana, Bob's mailto unsubscribe and a person's question, in that order."""
    dovecot.deliver(world.fixture("postfix_hard_bounce"))
    dovecot.deliver(world.fixture("mailto_subject_token", person=world.bob))
    dovecot.deliver(world.fixture("question"))


def assert_acted_on(world: World) -> None:
    assert delivery_row(world.database, world.delivery_id).state is DeliveryState.FAILED
    reasons = {entry.address_hash: entry.reason for entry in suppressions(world.database)}
    assert reasons[address_hash("ana@example.net")] is SuppressionReason.HARD_BOUNCE
    assert set(statuses(world.database, world.bob).values()) == {SubscriptionStatus.UNSUBSCRIBED}


def test_imaps_acts_on_each_message_and_marks_it_seen(tmp_path: Path, dovecot: Dovecot, world: World) -> None:
    seed(dovecot, world)
    cli = fetch_cli(tmp_path, world, mailbox_config(dovecot))
    result = cli("inbound", "fetch")
    assert "bounces: 3 messages" in result.output
    assert "hard bounces: 1" in result.output and "unsubscribes: 1" in result.output
    assert f"{QUESTION_ID} from carla@example.com" in result.output  # left alone, for a person
    assert_acted_on(world)
    assert dovecot.messages() == {BOUNCE_ID: "S", UNSUBSCRIBE_ID: "S", QUESTION_ID: "S"}
    # a second run finds nothing new
    assert cli("inbound", "fetch").output.splitlines() == ["bounces: 0 messages"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_move_puts_handled_mail_in_the_folder_and_leaves_a_persons_mail(
    tmp_path: Path, dovecot: Dovecot, world: World
) -> None:
    seed(dovecot, world)
    fetch_cli(tmp_path, world, mailbox_config(dovecot, done="move:Handled"))("inbound", "fetch")
    assert_acted_on(world)
    assert dovecot.messages("Handled") == {BOUNCE_ID: "S", UNSUBSCRIBE_ID: "S"}
    assert dovecot.messages() == {QUESTION_ID: "S"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_delete_removes_handled_mail_only(tmp_path: Path, dovecot: Dovecot, world: World) -> None:
    seed(dovecot, world)
    fetch_cli(tmp_path, world, mailbox_config(dovecot, scheme="imap", done="delete"))("inbound", "fetch")
    assert_acted_on(world)
    assert dovecot.messages() == {QUESTION_ID: "S"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("scheme", ["pop3s", "pop3"])
def test_pop3_deletes_handled_mail_and_keeps_a_persons(
    tmp_path: Path, dovecot: Dovecot, world: World, scheme: str
) -> None:
    seed(dovecot, world)
    cli = fetch_cli(tmp_path, world, mailbox_config(dovecot, scheme=scheme, done="delete"))
    assert "bounces: 3 messages" in cli("inbound", "fetch").output
    assert_acted_on(world)
    assert set(dovecot.messages()) == {QUESTION_ID}
    # POP3 has no seen flag: the question is read again, and still changes nothing
    again = cli("inbound", "fetch", "--json")
    [run] = json.loads(again.output)["mailboxes"]
    assert [(m["message_id"], m["kind"]) for m in run["messages"]] == [(QUESTION_ID, "other")]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_mail_that_cannot_be_read_is_listed_kept_and_the_rest_handled(
    tmp_path: Path, dovecot: Dovecot, world: World
) -> None:
    huge = b"Message-ID: <huge@example.net>\r\nFrom: x@example.net\r\n\r\n" + b"x" * (76 * 140_000)
    endless_head = b"Message-ID: <deep@example.net>\r\n" + b"".join(
        b"X-Padding-%d: %s\r\n" % (n, b"y" * 900) for n in range(400)) + b"\r\nbody\r\n"
    dovecot.deliver(huge)
    dovecot.deliver(endless_head)
    dovecot.deliver(world.fixture("postfix_hard_bounce"))
    cli = fetch_cli(tmp_path, world, mailbox_config(dovecot, done="move:Handled"))
    result = cli("inbound", "fetch", ok=False)
    assert result.exit_code == 65
    assert "<huge@example.net> from x@example.net: too large: over 10 MiB; nothing done" in result.output
    assert "<deep@example.net> from (no From): headers longer than 256 KiB; nothing done" in result.output
    assert result.stderr.splitlines() == ["Error: 2 of 3 messages could not be processed; the others were"]
    assert delivery_row(world.database, world.delivery_id).state is DeliveryState.FAILED
    # kept for a person, marked seen so the next run does not read them again
    assert dovecot.messages() == {"<huge@example.net>": "S", "<deep@example.net>": "S"}
    assert dovecot.messages("Handled") == {BOUNCE_ID: "S"}
    assert cli("inbound", "fetch").output.splitlines() == ["bounces: 0 messages"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_password_can_come_from_the_environment(
    tmp_path: Path, dovecot: Dovecot, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(dovecot, world)
    cli = fetch_cli(tmp_path, world, mailbox_config(dovecot, scheme="pop3s", done="delete", password="",
                                                    name="isp-bounces"))
    monkeypatch.setenv("MAILER_INBOUND_ISP_BOUNCES_PASSWORD", PASSWORD)
    assert "isp-bounces: 3 messages" in cli("inbound", "fetch", "--mailbox", "ISP-bounces").output
    assert_acted_on(world)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("scheme", "done"), [("imaps", "seen"), ("pop3s", "delete")])
def test_a_wrong_password_is_one_line_and_changes_nothing(
    tmp_path: Path, dovecot: Dovecot, world: World, scheme: str, done: str
) -> None:
    seed(dovecot, world)
    cli = fetch_cli(tmp_path, world, mailbox_config(dovecot, scheme=scheme, done=done, password="wrong"))
    result = cli("inbound", "fetch", ok=False)
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"Error: mailbox bounces: login refused for {USER}: ")
    assert "wrong" not in line
    assert suppressions(world.database) == []
    assert dovecot.messages() == {BOUNCE_ID: "", UNSUBSCRIBE_ID: "", QUESTION_ID: ""}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_server_certificate_from_an_unknown_ca_is_refused(tmp_path: Path, dovecot: Dovecot, world: World) -> None:
    seed(dovecot, world)
    result = fetch_cli(tmp_path, world, mailbox_config(dovecot, ca_file=False))("inbound", "fetch", ok=False)
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: mailbox bounces: TLS certificate refused: ")
    assert "ca_file" in line
    assert dovecot.messages()[BOUNCE_ID] == ""


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("scheme", "refusal"), [("imap", "does not offer STARTTLS; use imaps:// instead"),
                                                 ("pop3", "does not offer STLS; use pop3s:// instead")])
def test_no_password_crosses_the_network_in_the_clear(tmp_path: Path, world: World, scheme: str,
                                                      refusal: str) -> None:
    address = non_loopback_address()
    if not DOVECOT.exists() or address is None:
        pytest.skip("needs Dovecot and a network address other than loopback")
    with running_dovecot(address, tls=False) as plain:
        plain.deliver(world.fixture("postfix_hard_bounce"))
        port = plain.imap_port if scheme == "imap" else plain.pop3_port
        folder = "/INBOX" if scheme == "imap" else ""
        extra = (f'[[inbound.mailboxes]]\nname = "bounces"\nurl = "{scheme}://{USER}@{address}:{port}{folder}"\n'
                 f'password = "{PASSWORD}"\ndone = "delete"\n')
        result = fetch_cli(tmp_path, world, extra)("inbound", "fetch", ok=False)
        assert result.exit_code == 1
        assert result.stderr.splitlines() == [f"Error: mailbox bounces: {address} {refusal}"]
        assert plain.messages() == {BOUNCE_ID: ""}
    assert suppressions(world.database) == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_unknown_mailbox_name_is_one_line(tmp_path: Path, dovecot: Dovecot, world: World) -> None:
    result = fetch_cli(tmp_path, world, mailbox_config(dovecot))("inbound", "fetch", "--mailbox", "nope", ok=False)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == ["Error: no mailbox named 'nope' in [[inbound.mailboxes]] (bounces)"]
    none = fetch_cli(tmp_path, world, "")("inbound", "fetch", ok=False)
    assert none.stderr.splitlines() == ["Error: no mailbox to fetch: add an [[inbound.mailboxes]] table to the config"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_unavailable_database_leaves_the_mail_unread(tmp_path: Path, dovecot: Dovecot, world: World) -> None:
    seed(dovecot, world)
    missing = f"sqlite:///{tmp_path / 'no-such-directory' / 'mailer.db'}"
    cli = Cli(write_config(tmp_path / "down.toml", missing, extra=mailbox_config(dovecot)))
    result = cli("inbound", "fetch", ok=False)
    assert result.exit_code == 75
    assert result.stderr.startswith("Error: the database is unavailable, try again later: ")
    assert dovecot.messages() == {BOUNCE_ID: "", UNSUBSCRIBE_ID: "", QUESTION_ID: ""}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_bounce_read_from_a_maildir_and_then_fetched_acts_once(
    tmp_path: Path, dovecot: Dovecot, world: World
) -> None:
    raw = world.fixture("postfix_hard_bounce")
    local = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (local / sub).mkdir(parents=True)
    (local / "new" / "1.bounce").write_bytes(raw)
    cli = fetch_cli(tmp_path, world, mailbox_config(dovecot))
    cli("inbound", "process", str(local))
    dovecot.deliver(raw)
    [run] = json.loads(cli("inbound", "fetch", "--json").output)["mailboxes"]
    assert [m["kind"] for m in run["messages"]] == [InboundKind.ALREADY_PROCESSED.value]
    with world.database.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(BounceEvent)) == 1
    assert dovecot.messages() == {BOUNCE_ID: "S"}


# runs `mailer` and dies like a killed process right after the Nth message's actions are committed,
# before the mailbox hears it was handled: the one moment a crash could make a rerun act twice
_DIE_AFTER_COMMIT = """
import os, signal, sys
import mailer.inbound.mailboxes as mailboxes
from mailer.cli import main
handle, handled = mailboxes.process_raw_message, []
def handle_then_die(*args, **kwargs):
    item = handle(*args, **kwargs)
    handled.append(item)
    if len(handled) == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    return item
mailboxes.process_raw_message = handle_then_die
main(sys.argv[2:])
"""


@pytest.mark.slow
@pytest.mark.parametrize(("db_url", "done"), [("sqlite", "seen"), ("postgres", "seen"), ("sqlite", "move:Handled"),
                                              ("sqlite", "delete")], indirect=["db_url"])
def test_a_run_killed_mid_mailbox_is_finished_by_the_next_acting_once(
    tmp_path: Path, dovecot: Dovecot, world: World, done: str
) -> None:
    seed(dovecot, world)
    dovecot.deliver(world.fixture("yahoo_complaint"))
    config = write_config(tmp_path / "fetch.toml", world.database.url, extra=mailbox_config(dovecot, done=done))
    killed = subprocess.run([sys.executable, "-c", _DIE_AFTER_COMMIT, "2", "--config", str(config),
                             "inbound", "fetch"], capture_output=True, timeout=120, env=os.environ)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # Bob's unsubscribe is committed, but the mailbox still holds it unread
    assert set(statuses(world.database, world.bob).values()) == {SubscriptionStatus.UNSUBSCRIBED}
    assert dovecot.messages()[UNSUBSCRIBE_ID] == ""

    rerun = Cli(config)("inbound", "fetch", "--json")
    [run] = json.loads(rerun.output)["mailboxes"]
    assert [(m["message_id"], m["kind"]) for m in run["messages"]] == [
        (UNSUBSCRIBE_ID, "already_processed"), (QUESTION_ID, "other"), (COMPLAINT_ID, "complaint")]
    assert_acted_on(world)
    # one opt-out each in the audit trail: Bob's by mail, Ana's by her complaint; one suppression
    assert sorted(e.subject for e in audit_events(world.database)) == ["ana@example.net", "bob@example.org"]
    assert [e.subject for e in audit_events(world.database, "suppress")] == ["ana@example.net"]
    with world.database.session() as session:
        kinds = session.scalars(sa.select(BounceEvent.kind)).all()
    assert sorted(kind.value for kind in kinds) == ["complaint", "hard"]
    handled = {"seen": {BOUNCE_ID, UNSUBSCRIBE_ID, COMPLAINT_ID}, "move:Handled": set(), "delete": set()}[done]
    assert set(dovecot.messages()) == handled | {QUESTION_ID}
    if done.startswith("move:"):
        assert set(dovecot.messages("Handled")) == {BOUNCE_ID, UNSUBSCRIBE_ID, COMPLAINT_ID}
