"""A throwaway Dovecot on loopback (IMAP, IMAPS, POP3, POP3S) serving one Maildir, with a CA made here."""

from __future__ import annotations

import datetime
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DOVECOT = Path("/usr/sbin/dovecot")
USER = "bounces"
PASSWORD = "mailbox-secret-5150"
# Dovecot never lets a mail process run as root: as root, the mail belongs to its own system user
_UNPRIVILEGED = "dovecot"


@dataclass
class Dovecot:
    """Where the server listens, and its one user's Maildir."""

    imap_port: int
    imaps_port: int
    pop3_port: int
    pop3s_port: int
    ca_file: Path
    maildir: Path
    uid: int
    gid: int
    seq: int = 0

    def deliver(self, raw: bytes, folder: str = "") -> str:
        """Put a message in new/ of the inbox (or a folder) as an MTA would; its Maildir name."""
        self.seq += 1
        base = self.maildir / (f".{folder}" if folder else "")
        name = f"{int(time.time())}.M{self.seq:06d}P{os.getpid()}.test"
        for sub in ("tmp", "new", "cur"):
            (base / sub).mkdir(parents=True, exist_ok=True)
            os.chown(base / sub, self.uid, self.gid)
        tmp = base / "tmp" / name
        tmp.write_bytes(raw)
        os.chown(tmp, self.uid, self.gid)
        os.replace(tmp, base / "new" / name)
        return name

    def messages(self, folder: str = "") -> dict[str, str]:
        """Every message in the folder (inbox when empty): its Message-ID -> its Maildir flags."""
        base = self.maildir / (f".{folder}" if folder else "")
        found: dict[str, str] = {}
        for sub in ("new", "cur"):
            if not (base / sub).is_dir():
                continue
            for entry in (base / sub).iterdir():
                head = BytesHeaderParser().parsebytes(entry.read_bytes())
                found[str(head["Message-ID"])] = entry.name.partition(":2,")[2] if sub == "cur" else ""
        return found


def _free_ports(count: int, address: str) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((address, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _write_ca_and_cert(directory: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Mailbox Test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


_CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap pop3
listen = {address}
{tls}
auth_mechanisms = plain
auth_failure_delay = 0
default_login_user = {login_user}
default_internal_user = {internal_user}
default_internal_group = {internal_group}
first_valid_uid = {uid}
first_valid_gid = {gid}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={home}
}}
mail_location = maildir:{home}/Maildir
namespace inbox {{
  inbox = yes
  separator = /
}}
pop3_uidl_format = %08Xu%08Xv
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  chroot =
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = {pop3s}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service imap-urlauth-login {{
  chroot =
}}
"""


def _wait_for_port(address: str, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dovecot exited {process.returncode}: "
                               f"{log.read_text() if log.exists() else ''}")
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"dovecot did not listen on {port}")


_TLS = """\
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes"""
# no TLS at all, so no STARTTLS offered: what a client must refuse to send a password to
_NO_TLS = """\
ssl = no
disable_plaintext_auth = no"""


@contextmanager
def running_dovecot(address: str = "127.0.0.1", tls: bool = True) -> Iterator[Dovecot]:
    """Start Dovecot in the foreground on free ports of `address`; stopped and removed on exit.

    Without tls it offers neither IMAPS/POP3S (their ports are 0) nor STARTTLS."""
    root = Path(tempfile.mkdtemp(prefix="dovecot-test-"))
    os.chmod(root, 0o755)
    if os.getuid() == 0:
        account = pwd.getpwnam(_UNPRIVILEGED)
        uid, gid, login_user = account.pw_uid, account.pw_gid, _UNPRIVILEGED
    else:
        account = pwd.getpwuid(os.getuid())
        uid, gid, login_user = account.pw_uid, account.pw_gid, account.pw_name
    group = _group_name(gid)
    home = root / "home"
    (home / "Maildir").mkdir(parents=True)
    for path in (home, home / "Maildir"):
        os.chown(path, uid, gid)
    ca, cert, key = _write_ca_and_cert(root)
    (root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
    ports = _free_ports(4, address)
    if not tls:
        ports[1] = ports[3] = 0  # Dovecot's way of leaving a listener out
    config = root / "dovecot.conf"
    config.write_text(_CONFIG.format(
        address=address, tls=(_TLS if tls else _NO_TLS).format(cert=cert, key=key),
        root=root, home=home, uid=uid, gid=gid, login_user=login_user,
        internal_user=login_user, internal_group=group,
        imap=ports[0], imaps=ports[1], pop3=ports[2], pop3s=ports[3]))
    process = subprocess.Popen([str(DOVECOT), "-F", "-c", str(config)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for port in ports:
            if port:
                _wait_for_port(address, port, process, root / "dovecot.log")
        yield Dovecot(*ports, ca_file=ca, maildir=home / "Maildir", uid=uid, gid=gid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
        shutil.rmtree(root, ignore_errors=True)


def _group_name(gid: int) -> str:
    import grp

    return grp.getgrgid(gid).gr_name


def non_loopback_address() -> str | None:
    """This machine's address on its network, or None when it has none but loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, a route is chosen
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address
