"""inbound/classify reads a message without the database: it can be imported and run alone."""

from __future__ import annotations

import email
import subprocess
import sys
import textwrap
from pathlib import Path

from mailer.config import load_config
from mailer.inbound.classify import InboundKind, analyse


def test_classify_loads_no_database_code() -> None:
    # a subprocess, since this test run has long imported SQLAlchemy itself
    script = textwrap.dedent("""
        import sys
        from mailer.inbound.classify import InboundKind, analyse
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "sqlalchemy"
                        or m in ("mailer.db", "mailer.models", "mailer.audit"))
        print(",".join(loaded) or "none")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parent.parent)
    assert result.stdout.strip() == "none"


def test_classify_sorts_a_bounce_from_its_bytes_alone(tmp_path: Path) -> None:
    config_path = tmp_path / "mailer.toml"
    config_path.write_text('[unsubscribe]\nsecret_keys = ["' + "k" * 40 + '"]\n', encoding="utf-8")
    raw = (b"From: MAILER-DAEMON@mx.example.org\r\nTo: bounces@example.com\r\nSubject: failure\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
           b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\n"
           b"Final-Recipient: rfc822; gone@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
           b"Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n--b--\r\n")
    analysis = analyse(load_config(config_path, environ={}), email.message_from_bytes(raw), raw)
    assert (analysis.kind, analysis.status, analysis.named_addresses, analysis.permanent) == (
        InboundKind.HARD_BOUNCE, "5.1.1", ["gone@example.org"], True)
