"""What every provider's webhook shares: bounded JSON, refusals, and acting on events one at a time."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa
from flask import Response, abort, jsonify, request
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailer.errors import MailerError
from mailer.inbound.classify import InboundKind
from mailer.inbound.events import EventOutcome, ProviderEvent, act_on_event
from mailer.web.context import web_context

# SendGrid batches events up to about 1 MB and an SES notification with the original headers
# is tens of KB: nothing legitimate comes near this
WEBHOOK_MAX_BYTES = 4 * 1024 * 1024
# events in one post; more is no provider's batch
MAX_EVENTS = 10_000


class WebhookRefused(MailerError):
    """A webhook request that is not the provider's: unauthenticated (401) or badly signed (403)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def refusal(error: WebhookRefused) -> tuple[Response, int]:
    """The answer to a refused request: its status and one line of why, nothing about our data."""
    return jsonify(error=error.reason), error.status


def read_json(raw: bytes) -> Any:
    """The request body as JSON, or 400: a provider always posts JSON."""
    try:
        return json.loads(raw)
    # RecursionError: a body nested deeper than the parser's stack, which no provider sends
    except (ValueError, RecursionError):
        abort(400, "the body is not JSON")


def read_json_object(raw: bytes, refused: str) -> dict[str, Any]:
    """The request body as a JSON object, or 400 with `refused` when it is JSON of another shape."""
    found = read_json(raw)
    if not isinstance(found, dict):
        abort(400, refused)
    return found


def raw_body() -> bytes:
    """The body exactly as it was signed (read once, before any form parsing)."""
    return request.get_data(cache=True, as_text=False, parse_form_data=False)


def act_on_events(events: Iterable[ProviderEvent],
                  guard: Callable[[Session], None] | None = None) -> tuple[Response, int]:
    """Act on each event in its own transaction, so one bad event never stops the rest; 200 and counts.

    `guard` runs first in each event's transaction (a replay check that must commit with the
    action, or not at all) and may raise WebhookRefused. A database that is unavailable answers
    503, so the provider posts again; the events acted on before it change nothing twice."""
    counts: Counter[str] = Counter()
    context = web_context()
    for event in events:
        try:
            with context.write_session() as session:
                if guard is not None:
                    guard(session)
                outcome = act_on_event(session, context.config, event)
        except IntegrityError:
            # the same event, acted on by a concurrent request between our check and our insert
            outcome = EventOutcome(InboundKind.ALREADY_PROCESSED, "acted on concurrently")
        except sa.exc.OperationalError:
            abort(503, "the database is unavailable; post again later")
        except WebhookRefused:
            raise  # the guard's: the whole request is refused
        except MailerError as exc:
            # a value the store refuses: this event is left, the rest of the batch goes on
            outcome = EventOutcome(InboundKind.FAILED, str(exc))
        counts[outcome.kind.value] += 1
    return jsonify(events=sum(counts.values()), outcomes=dict(counts)), 200


def as_text(value: Any, limit: int = 1000) -> str:
    """A string field of a payload, whatever the payload put there."""
    if isinstance(value, str):
        # JSON may escape lone surrogates ("\udc80"), which no database column takes
        return value[:limit].encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return ""


def as_object(value: Any) -> dict[str, Any]:
    """A JSON object field of a payload, or an empty one."""
    return value if isinstance(value, dict) else {}
