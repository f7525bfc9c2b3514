"""Legal notices (breach, change of terms): transactional mail to everyone held, not marketing."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.config import Config
from mailer.content.compliance import check_campaign, check_from
from mailer.content.templating import (
    HTML_SUFFIXES,
    TemplateSource,
    campaign_templates_dir,
    find_named_template,
    read_template_file,
    read_template_source,
    templates_dir,
)
from mailer.db import Database
from mailer.errors import (
    ComplianceError,
    InvalidInputError,
    NotFoundError,
    TemplateError,
)
from mailer.models import Campaign, CampaignKind, CampaignStatus

MAX_REASON = 1000


def notice_templates_dir() -> Path:
    return templates_dir() / "notices"


def shipped_notice_templates() -> list[str]:
    folder = notice_templates_dir()
    return sorted(p.name.removesuffix(".html.j2") for p in folder.glob("*.html.j2")) if folder.is_dir() else []


def _is_campaign_template(path: Path) -> bool:
    return path.resolve().is_relative_to(campaign_templates_dir().resolve())


def load_notice_template(spec: str) -> TemplateSource:
    """A notice template: a path to an .html.j2 file, or a name under templates/notices/.

    A sibling .txt.j2 becomes the text part. Raises TemplateError when it is missing or does
    not parse, and ComplianceError when it is a campaign (marketing) template.
    """
    path = Path(spec).expanduser()
    if not path.is_file():
        found = find_named_template(spec, notice_templates_dir())
        if found is None:
            if (campaign_templates_dir() / f"{spec}.html.j2").is_file():
                raise ComplianceError([f"{spec!r} is a campaign template; a notice needs a notice template"])
            shipped = ", ".join(shipped_notice_templates()) or "none"
            raise TemplateError(
                f"notice template {spec!r} not found: give a path to an .html.j2 file or one of "
                f"the shipped notices ({shipped})"
            )
        path = found
    if not path.name.endswith(HTML_SUFFIXES):
        raise TemplateError(f"{path} is not an HTML template (.html.j2)")
    if _is_campaign_template(path):
        raise ComplianceError([f"{path.name} is a campaign template (templates/campaigns/); "
                               "a notice must not be built from marketing content"])
    in_notices = path.resolve().parent == notice_templates_dir().resolve()
    name = f"notices/{path.name.removesuffix('.html.j2')}" if in_notices else str(path)
    return read_template_source(path, name[:500])


def check_reason(reason: str) -> str:
    """The recorded reason, which also completes the footer's "We send it to you because ..."."""
    clean = reason.strip()
    if not clean:
        raise InvalidInputError(
            "a notice needs --reason, e.g. --reason \"we must tell you about a security incident "
            "that affected your data\""
        )
    if re.search(r"[\x00-\x1f\x7f\u2028\u2029]", clean):
        raise InvalidInputError("--reason must be one line")
    if len(clean) > MAX_REASON:
        raise InvalidInputError(f"--reason must be at most {MAX_REASON} characters")
    return clean


def create_notice(
    session: Session, config: Config, subject: str, template: str, reason: str,
    from_address: str | None = None,
) -> Campaign:
    """Store a draft notice (kind NOTICE, no list) with its template text.

    Raises InvalidInputError for a missing reason or a From that is not one mailbox on the
    sending domain, TemplateError for a bad template and
    ComplianceError for a campaign template.
    """
    clean_reason = check_reason(reason)
    sender = (from_address or config.sender.from_address).strip()
    problems = check_from(config, sender)
    if problems:
        raise InvalidInputError(problems[0])
    source = load_notice_template(template)
    notice = Campaign(
        kind=CampaignKind.NOTICE,
        list_id=None,
        subject=subject,
        from_address=sender,
        template_name=source.name,
        html_template=source.html,
        text_template=source.text,
        notice_reason=clean_reason,
    )
    session.add(notice)
    session.flush()
    return notice


def get_notice(session: Session, notice_id: int) -> Campaign:
    """The notice with this id; raises NotFoundError (a marketing campaign is not a notice)."""
    notice = session.get(Campaign, notice_id)
    if notice is None or notice.kind is not CampaignKind.NOTICE:
        raise NotFoundError(f"no notice with id {notice_id} (see `mailer notice ls`)")
    return notice


def list_notices(session: Session) -> Sequence[Campaign]:
    return session.scalars(
        sa.select(Campaign).where(Campaign.kind == CampaignKind.NOTICE).order_by(Campaign.id)
    ).all()


def check_notice(config: Config, notice: Campaign) -> list[str]:
    """Every reason this notice may not go out: the compliance gate, which for a notice refuses
    an ad label or List-Unsubscribe and adds the notice rules of content/notice_rules.py."""
    if notice.kind is not CampaignKind.NOTICE:
        return ["this is a marketing campaign, not a notice"]
    return check_campaign(config, notice, None)


def ensure_notice_compliant(config: Config, notice: Campaign) -> None:
    """Raises ComplianceError listing every problem."""
    problems = check_notice(config, notice)
    if problems:
        raise ComplianceError(problems)


def start_notice(config: Config, database: Database, notice_id: int) -> int:
    """Pass the notice gate, then start it through the delivery engine with the notice audience
    (every subscriber not erased and not hard-bounced); returns how many deliveries are open.

    The engine records the start in the audit trail, whichever command starts a notice.
    Raises ComplianceError, TemplateError, NotFoundError or DeliveryError.
    """
    from mailer.lifecycle import start_send

    with database.session() as session:
        notice = get_notice(session, notice_id)
        if notice.status in (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED):
            ensure_notice_compliant(config, notice)
    return start_send(config, database, notice_id)


def copy_example_notice(name: str, directory: Path) -> list[Path]:
    """Copy a shipped example notice (HTML and text parts) into `directory` to be filled in.

    Raises NotFoundError for an unknown name and InvalidInputError rather than overwrite a file.
    """
    folder = notice_templates_dir()
    sources = sorted(p for p in folder.glob(f"{name}.*.j2") if "/" not in name) if folder.is_dir() else []
    if not sources:
        shipped = ", ".join(shipped_notice_templates()) or "none"
        raise NotFoundError(f"no example notice named {name!r} (shipped: {shipped})")
    targets = [directory / source.name for source in sources]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise InvalidInputError(f"{', '.join(existing)} already exists; not overwritten")
    directory.mkdir(parents=True, exist_ok=True)
    for source, target in zip(sources, targets, strict=True):
        target.write_text(read_template_file(source), encoding="utf-8")
    return targets
