"""Adding one person to a list by hand, with the confirmation a double opt-in list asks for."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mailer.config import Config
from mailer.db import Database
from mailer.errors import SuppressedError
from mailer.recipients.confirm import ConfirmationRequest, pending_confirmation
from mailer.recipients.subscribers import AddOutcome, Consent, add_subscriber


@dataclass(frozen=True)
class Added:
    address: str
    outcome: AddOutcome
    # a new subscriber of a double opt-in list gets nothing but this link until they follow it
    confirmation: ConfirmationRequest | None


def add_by_hand(
    config: Config,
    database: Database,
    email: str,
    list_name: str,
    *,
    name: str | None = None,
    attributes: Mapping[str, str] | None = None,
    source: str = "cli",
) -> Added:
    """Subscribe EMAIL to a list (or update the person) and say which confirmation to send.

    Raises InvalidInputError for a bad address, name or attribute, NotFoundError for an unknown
    list, and SuppressedError for an address that opted out, or unsubscribed from this list (a
    change to their name or attributes is still kept).
    """
    with database.session() as session:
        subscriber, outcome = add_subscriber(
            session, email, list_name, Consent(source=source), name=name, attributes=attributes
        )
        address = subscriber.email if subscriber else email
        confirmation = (pending_confirmation(session, config, address, list_name)
                        if outcome is AddOutcome.ADDED else None)
    if outcome is AddOutcome.UNSUBSCRIBED:
        raise SuppressedError(f"{address} unsubscribed from {list_name} and is not re-subscribed")
    return Added(address, outcome, confirmation)
