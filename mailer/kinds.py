"""What a message is, in law: a word the schema stores and the composer reads without the database."""

from __future__ import annotations

import enum


class CampaignKind(enum.StrEnum):
    """What a message is, in law."""

    CAMPAIGN = "campaign"  # commercial: ad label, unsubscribe, suppression applies
    NOTICE = "notice"  # transactional legal notice (breach, terms): reaches opted-out people too
