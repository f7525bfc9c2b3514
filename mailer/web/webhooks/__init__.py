"""Provider webhooks under /webhooks: SES (through SNS), SendGrid, Postmark and Mailgun, each off until configured."""

from __future__ import annotations

from flask import Blueprint, request

from mailer.web.webhooks.common import WEBHOOK_MAX_BYTES
from mailer.web.webhooks.mailgun import mailgun_pages
from mailer.web.webhooks.postmark import postmark_pages
from mailer.web.webhooks.sendgrid import sendgrid_pages
from mailer.web.webhooks.ses import ses_pages

webhook_pages = Blueprint("webhooks", __name__, url_prefix="/webhooks")
for _provider in (ses_pages, sendgrid_pages, postmark_pages, mailgun_pages):
    webhook_pages.register_blueprint(_provider)


@webhook_pages.before_request
def allow_provider_batches() -> None:
    # the app's limit fits a one-click POST; a provider's batch of events is bigger
    request.max_content_length = WEBHOOK_MAX_BYTES
