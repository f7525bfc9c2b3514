"""SpamAssassin's verdict on a rendered message, run locally (no network tests), with the fixes."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mailer.errors import MailerError

INSTALL_HINT = ("SpamAssassin is not installed, so no spam score: install it (Debian/Ubuntu: "
                "apt-get install spamassassin spamc; macOS: brew install spamassassin) and run again")
# a cold SpamAssassin loads its rules in seconds; a hung one must not hold the check forever
TIMEOUT = 120.0

# rules the template can avoid, by name or name prefix, and the change that avoids them
TEMPLATE_FIXES = {
    "MIME_HTML_ONLY": "give the template a text version: receivers distrust HTML-only mail",
    "MIME_HTML_MOSTLY": "give the template a fuller text version",
    "MPART_ALT_DIFF": "the text part says something else than the HTML part: write both from the same content",
    "HTML_IMAGE_RATIO_": "add words or drop images: too little text for the images",
    "HTML_IMAGE_ONLY_": "add text around the images: a message that is mostly images looks like spam",
    "HTML_SHORT_LINK_IMG_": "do not make a lone image the link; add a text link beside it",
    "SUBJ_ALL_CAPS": "write the subject in sentence case, not in capitals",
    "SUBJ_BUY": "do not start the subject with \"Buy\"",
    "BODY_SINGLE_URI": "add text: a message that is just one link looks like spam",
    "HTML_FONT_LOW_CONTRAST": "use text colours that stand out from the background; hidden text looks like spam",
    "HTML_FONT_SIZE_TINY": "do not use tiny fonts; hidden text looks like spam",
    "HTML_FONT_SIZE_HUGE": "use smaller headings",
    "HTML_MIME_NO_HTML_TAG": "wrap the HTML template in <html>...</html>",
    "HTML_TAG_BALANCE_": "close every HTML tag the template opens",
    "EMPTY_MESSAGE": "the message has no content: check the template",
    "MISSING_SUBJECT": "give the campaign a subject",
}

_DETAILS = re.compile(r"Content analysis details:\s+\((-?[\d.]+) points?, (-?[\d.]+) required\)")
_RULE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s+([A-Z0-9_]+)\s+(.*)$")


class SpamCheckError(MailerError):
    """SpamAssassin is installed but gave no verdict."""


@dataclass(frozen=True)
class Rule:
    name: str
    points: float
    description: str
    fix: str = ""  # the template change that avoids it; empty when the template cannot


@dataclass(frozen=True)
class SpamVerdict:
    score: float
    required: float
    rules: list[Rule] = field(default_factory=list)

    @property
    def is_spam(self) -> bool:
        return self.score >= self.required


def fix_for(rule: str) -> str:
    for name, fix in TEMPLATE_FIXES.items():
        if rule == name or (name.endswith("_") and rule.startswith(name)) or rule.startswith(name + "_"):
            return fix
    return ""


def spamassassin_path() -> str | None:
    """The program that scores a message here: spamassassin itself, else spamc (which needs spamd)."""
    return shutil.which("spamassassin") or shutil.which("spamc")


def spam_verdict(message: bytes) -> SpamVerdict | None:
    """SpamAssassin's score for `message`; None when it is not installed. Raises SpamCheckError."""
    program = spamassassin_path()
    if program is None:
        return None
    with tempfile.TemporaryDirectory() as home:
        if Path(program).name == "spamc":
            # spamd decides its own tests; -x makes an unreachable spamd an error, not a pass
            command = [program, "-R", "-x"]
        else:
            # local tests only, and a preferences file of its own: nothing written to the user's home
            command = [program, "-t", "-L", f"--prefspath={Path(home) / 'user_prefs'}"]
        try:
            done = subprocess.run(command, input=message, capture_output=True, timeout=TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise SpamCheckError(f"SpamAssassin gave no verdict within {TIMEOUT:.0f} seconds") from None
    if Path(program).name == "spamc" and done.returncode != 0:
        raise SpamCheckError("spamc could not reach spamd: start spamd, or install spamassassin to score locally")
    return parse_report(done.stdout.decode("utf-8", "replace"))


def parse_report(report: str) -> SpamVerdict:
    """The score and the rules from the "Content analysis details" that `spamassassin -t` appends."""
    details = _DETAILS.search(report)
    if details is None:
        raise SpamCheckError("SpamAssassin's output has no analysis; run `spamassassin -t -L < message` to see why")
    rules: list[Rule] = []
    table = report[details.end():].split("\n")
    for line in table:
        match = _RULE.match(line)
        if match:
            name = match.group(2)
            rules.append(Rule(name, float(match.group(1)), match.group(3).strip(), fix_for(name)))
        elif rules and line.startswith(" " * 10) and line.strip():
            # a long description continues on the next line
            last = rules[-1]
            rules[-1] = Rule(last.name, last.points, f"{last.description} {line.strip()}", last.fix)
        elif rules and not line.strip():
            break
    return SpamVerdict(float(details.group(1)), float(details.group(2)), rules)
