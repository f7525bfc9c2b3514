"""The sending pipeline: claim a batch, render each message, hand it to the relay, record the outcome."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mailer.campaigns import get_campaign
from mailer.config import Config
from mailer.content.compliance import ensure_compliant
from mailer.content.compose import Composer, Outgoing, Recipient, RenderedMessage
from mailer.db import Database
from mailer.delivery.claims import Batch, Outcome, SqlDeliveryStore, mark_abandoned_claims
from mailer.delivery.deliveries import count_deliveries
from mailer.delivery.outage import DatabaseCalls
from mailer.delivery.render_ahead import MIN_MESSAGES_FOR_HELPER, HelperGone, RenderAhead
from mailer.delivery.transport import SendResult, SendStatus, SmtpTransport
from mailer.errors import DatabaseUnavailable, DeliveryError, MailerError
from mailer.lifecycle import finish_if_done
from mailer.models import CampaignStatus, DeliveryState, utcnow
from mailer.policy_blocks import PolicyPauseRule

# growing delays between attempts of a deferred message: 1 min, 2, 4, ... then every 4 hours
FIRST_RETRY_DELAY = 60.0
MAX_RETRY_DELAY = 4 * 3600.0
# recipients per job handed to a render helper: small enough that the first is back at once
RENDER_CHUNK = 25
# outcomes wait at most this long in memory before they are written (sooner when claims run low)
FLUSH_SECONDS = 0.03
# claimed and not yet recorded, at most this many seconds of sending (see Pace): after kill -9,
# what is in doubt is the messages on the wire, queued just ahead, or answered in that time
CLAIMED_SECONDS = 0.06
# the achieved rate is measured over about this long, once at least MIN_RATE_SECONDS have passed
RATE_SECONDS = 1.0
MIN_RATE_SECONDS = 0.05


class DeliveryStore(Protocol):
    """Where deliveries are claimed and their outcomes recorded (mailer.delivery.claims.SqlDeliveryStore)."""

    def claim_batch(self, campaign_id: int, limit: int, now: dt.datetime,
                    finished: Sequence[Outcome] = ()) -> Batch: ...

    def record_outcomes(self, campaign_id: int, outcomes: Sequence[Outcome], now: dt.datetime) -> str: ...

    def refresh_claims(self, now: dt.datetime) -> None: ...

    def heartbeat(self, now: dt.datetime, claim_timeout: float) -> int: ...

    def release_lost_claims(self, campaign_id: int, keep: set[int], now: dt.datetime) -> int: ...

    def pause_campaign(self, campaign_id: int, reason: str) -> None: ...


class Transport(Protocol):
    """Hands messages to a relay (mailer.delivery.transport.SmtpTransport)."""

    @property
    def concurrency(self) -> int: ...

    async def send_wire(self, envelope_from: str, recipient: str, wire: bytes) -> SendResult: ...

    async def close(self) -> None: ...


class Renderer(Protocol):
    """Builds one recipient's message (mailer.content.compose.Composer)."""

    def render(self, recipient: Recipient) -> RenderedMessage: ...


@dataclass
class SendReport:
    """What one run of the pipeline did; the CLI prints it, --json as is."""

    campaign_id: int
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    suppressed: int = 0  # opted out after the audience snapshot, found at claim time
    hard_bounces: int = 0  # failed with 5.1.x and added to the suppression list
    policy_blocks: int = 0  # failed with 5.7.x (blocklist, DMARC...): counted, nobody suppressed
    released: int = 0  # claimed but never handed over (stop signal, relay down): pending again
    paused_reason: str = ""  # set when the relay kept failing or refusing by policy and the campaign paused itself
    interrupted: bool = False  # a signal or --max-seconds stopped the run; the rest stays queued
    campaign_stopped: bool = False  # the campaign was paused or cancelled by someone else
    abandoned: int = 0  # claims of dead senders (any campaign) set aside as in doubt while this one sent

    @property
    def handed_over(self) -> int:
        return self.sent + self.deferred + self.failed


def retry_delay(attempt: int) -> float:
    """Seconds to wait after the `attempt`-th transient failure."""
    return float(min(FIRST_RETRY_DELAY * 2.0 ** (attempt - 1), MAX_RETRY_DELAY))


def next_attempt_at(attempts_before: int, now: dt.datetime, retry_for: float) -> dt.datetime | None:
    """When to try a deferred message again, or None once the waits would pass `retry_for`."""
    attempt = attempts_before + 1
    waited = sum(retry_delay(n) for n in range(1, attempt))
    delay = retry_delay(attempt)
    if waited + delay > retry_for:
        return None
    return now + dt.timedelta(seconds=delay)


@dataclass(frozen=True)
class PipelineSettings:
    """The named limits of one run, from [sending] and [smtp]."""

    batch_size: int = 100
    retry_for: float = 24 * 3600.0
    max_consecutive_errors: int = 10
    claim_timeout: float = 300.0
    reconnect_for: float = 60.0


class Pace:
    """How many deliveries may be claimed and not yet recorded: after kill -9 every one of them is
    in doubt, so no more than CLAIMED_SECONDS of sending at the rate achieved lately, and no
    fewer than keep the connections busy while the next claim is under way: two per connection,
    and, with a database slower than CLAIMED_SECONDS / 3 per transaction, three times its time."""

    def __init__(self, concurrency: int, batch_size: int) -> None:
        self.concurrency = max(1, concurrency)
        self.batch_size = batch_size
        self.db_seconds = 0.0
        self._done: collections.deque[tuple[float, int]] = collections.deque()  # (when, outcomes so far)
        self._count = 0

    def wrote(self, seconds: float, outcomes: int, now: float) -> None:
        # slow to move: one transaction held up (an SQLite checkpoint) must not widen the window
        self.db_seconds += 0.05 * (seconds - self.db_seconds)
        self._count += outcomes
        self._done.append((now, self._count))
        while len(self._done) > 2 and now - self._done[1][0] >= RATE_SECONDS:
            self._done.popleft()

    @property
    def rate(self) -> float:
        """Messages per second recorded over about the last RATE_SECONDS; 0 until measured."""
        if len(self._done) < 2:
            return 0.0
        (first, before), (last, after) = self._done[0], self._done[-1]
        return (after - before) / (last - first) if last - first >= MIN_RATE_SECONDS else 0.0

    @property
    def low_water(self) -> int:
        """Claim again once no more than this many are queued or on the wire; always below the
        budget, so that a claim it calls for has room for at least one."""
        budget = self.budget
        return min(budget - 1, self.concurrency + (budget - self.concurrency) // 2)

    @property
    def budget(self) -> int:
        """Deliveries that may be claimed and not yet recorded."""
        rate = self.rate
        # a slow database (far away, or busy) needs more claimed ahead, or sending would wait for it
        ahead = math.ceil(rate * max(CLAIMED_SECONDS, 3 * self.db_seconds))
        return max(1, min(self.batch_size, max(2 * self.concurrency, ahead)))


class Pipeline:
    """Sends one campaign's due deliveries until none are left, a stop is asked for, or the relay fails."""

    def __init__(
        self,
        store: DeliveryStore,
        transport: Transport,
        renderer: Renderer,
        campaign_id: int,
        settings: PipelineSettings,
        clock: Callable[[], dt.datetime] = utcnow,
        on_batch: Callable[[SendReport], None] | None = None,
        calls: DatabaseCalls | None = None,
    ) -> None:
        self.store = store
        self.transport = transport
        self.renderer = renderer
        self.settings = settings
        self.clock = clock
        self.on_batch = on_batch
        self.report = SendReport(campaign_id)
        self.stop_requested = asyncio.Event()
        self._calls = calls
        self._wake = asyncio.Event()  # a message finished, outcomes are due, or a stop was asked for
        # delivery id -> (the helper's job rendering it, its place in that job)
        self._ahead: dict[int, tuple[asyncio.Future[list[Outgoing | str]], int]] = {}
        self._consecutive_errors = 0
        self._last_error = ""
        # the window: recipients queued for the connections, their attempts so far, the outcomes
        # not yet recorded (and since when), how many are claimed and not yet finished (queued or
        # on the wire), and every delivery claimed whose outcome is not yet in the database
        self._work: asyncio.Queue[Recipient | None] = asyncio.Queue()
        self._attempts: dict[int, int] = {}
        self._finished: list[Outcome] = []
        self._finished_since: float | None = None
        self._outstanding = 0
        self._claimed: set[int] = set()
        self._nothing_to_claim = False
        self._pace = Pace(transport.concurrency, settings.batch_size)
        self._low_water = self._pace.low_water  # the pace's, as of its last measure (each write)

    def stop(self) -> None:
        """Finish the messages in flight, record them, send no more (SIGTERM, Ctrl-C, deadline)."""
        self.stop_requested.set()
        self._wake.set()

    @property
    def _relay_down(self) -> bool:
        return self._consecutive_errors >= self.settings.max_consecutive_errors

    async def run(self, deadline: float | None = None) -> SendReport:
        """Run until done; `deadline` is a time.monotonic() after which no new batch is claimed.

        Raises DatabaseUnavailable, with the counts, when the database stays out of reach."""
        own_calls = self._calls is None
        calls = self._calls = self._calls or DatabaseCalls(self.settings.reconnect_for)
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            await self._run(deadline)
        except DatabaseUnavailable as exc:
            raise DatabaseUnavailable(self._gave_up(str(exc))) from None
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            if own_calls:
                calls.close()
        return self.report

    @property
    def calls(self) -> DatabaseCalls:
        assert self._calls is not None  # set by run()
        return self._calls

    def _gave_up(self, reason: str) -> str:
        r = self.report
        line = f"campaign {r.campaign_id}: {r.sent} sent, {r.deferred} deferred, {r.failed} failed; stopped: {reason}"
        if self._claimed:
            line += (f"; {len(self._claimed)} deliveries claimed but not recorded will be in doubt "
                     f"(`mailer campaign retry {r.campaign_id} --in-doubt` sends them again)")
        return line

    async def _run(self, deadline: float | None) -> None:
        # A sliding window of claimed deliveries, as small as keeps the connections busy
        # (Pace): outcomes are written within FLUSH_SECONDS of the relay's answer, in the same
        # transaction that tops the window up again, in the database thread; the connections
        # never wait for the database, and a crash leaves in doubt only the messages on the
        # wire, queued just ahead of them, or answered in the last moment.
        workers = [asyncio.create_task(self._send_queued()) for _ in range(max(1, self.transport.concurrency))]
        try:
            if await self._keep_window_full(deadline):
                return  # nothing left to claim and nothing in flight: done
        finally:
            await self._drain(workers)
        self._note_why_it_stopped()
        if self._relay_down:
            await self.calls.call(self.store.pause_campaign, self.report.campaign_id, self.report.paused_reason)

    async def _send_queued(self) -> None:
        # one connection's share: queued recipients until a None says the run is over
        while (recipient := await self._work.get()) is not None:
            if self.stop_requested.is_set() or self._relay_down or self.calls.gave_up:
                outcome = self._release(recipient)  # never left this process
            else:
                outcome = await self._deliver(recipient, self._attempts.pop(recipient.delivery_id, 0))
            self._finish(outcome)

    def _finish(self, outcome: Outcome) -> None:
        if not self._finished:
            self._finished_since = time.monotonic()
            asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._wake.set)
        self._finished.append(outcome)
        self._outstanding -= 1
        # the window's loop is woken when there is work for it, not once a message
        if (not self._nothing_to_claim and self._outstanding <= self._low_water) or self._relay_down:
            self._wake.set()

    def _write_due(self) -> bool:
        """Time to write outcomes and claim: half the messages claimed ahead of the connections are
        gone, or an outcome waited FLUSH_SECONDS."""
        if not self._nothing_to_claim and self._outstanding <= self._low_water:
            return True
        since = self._finished_since
        return since is not None and time.monotonic() - since >= FLUSH_SECONDS

    async def _keep_window_full(self, deadline: float | None) -> bool:
        """Record what finished and claim as much again; True once nothing is left to send, False
        when a stop, the deadline, the relay or the campaign's own state ended the run."""
        while True:
            if self.stop_requested.is_set() or self._relay_down:
                return False
            if deadline is not None and time.monotonic() >= deadline:
                self.report.interrupted = True
                return False
            if not self._write_due():
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = await self._write_and_claim()
            if batch.stopped:
                if batch.paused_reason:
                    self.report.paused_reason = batch.paused_reason
                else:
                    self.report.campaign_stopped = True
                return False
            if self._nothing_to_claim and self._outstanding == 0:
                return True
            # what is in flight may come back to the queue (relay down): the next write claims again

    async def _write_and_claim(self) -> Batch:
        """One transaction in the database thread: the outcomes so far, and a top-up of the window."""
        done, self._finished, self._finished_since = self._finished, [], None
        want = max(0, self._pace.budget - self._outstanding)
        failures, started = self.calls.failures, time.monotonic()
        try:
            batch = await self.calls.call(self.store.claim_batch, self.report.campaign_id, want, self.clock(), done)
        except DatabaseUnavailable:
            self._finished[:0] = done
            raise
        finished = time.monotonic()
        self._pace.wrote(finished - started, len(done), finished)
        self._low_water = self._pace.low_water
        self._claimed.difference_update(o.delivery_id for o in done)
        if self.calls.failures != failures:
            # the connection dropped during a claim that may have committed all the same
            await self.calls.call(self.store.release_lost_claims, self.report.campaign_id,
                                  set(self._claimed) | {r.delivery_id for r in batch.recipients}, self.clock())
        self.report.suppressed += batch.suppressed
        if done and self.on_batch is not None:
            self.on_batch(self.report)
        if not batch.stopped:
            self._queue(batch)
            self._nothing_to_claim = want > 0 and not (batch.recipients or batch.suppressed)
        return batch

    def _queue(self, batch: Batch) -> None:
        self._attempts.update(batch.attempts)
        self._render_ahead(batch.recipients)
        for recipient in batch.recipients:
            self._work.put_nowait(recipient)
            self._claimed.add(recipient.delivery_id)
        self._outstanding += len(batch.recipients)

    async def _drain(self, workers: list[asyncio.Task[None]]) -> None:
        """Release what never left the queue, let the messages in flight finish, record every outcome."""
        while not self._work.empty():
            queued = self._work.get_nowait()
            if queued is not None:
                self._finish(self._release(queued))
        for _ in workers:
            self._work.put_nowait(None)
        await asyncio.gather(*workers)
        self._ahead.clear()
        if self.calls.gave_up:
            return  # nothing more can be written; run() reports what is left in doubt
        done, self._finished = self._finished, []
        paused = await self.calls.call(self.store.record_outcomes, self.report.campaign_id, done, self.clock())
        self._claimed.difference_update(o.delivery_id for o in done)
        self.report.paused_reason = self.report.paused_reason or paused
        if self.on_batch is not None:
            self.on_batch(self.report)

    def _note_why_it_stopped(self) -> None:
        if self._relay_down:
            self.report.paused_reason = (
                f"paused after {self.settings.max_consecutive_errors} connection failures in a "
                f"row (smtp.max_consecutive_errors); last: {self._last_error}")
        elif self.stop_requested.is_set():
            self.report.interrupted = True

    def _release(self, recipient: Recipient) -> Outcome:
        self.report.released += 1
        return Outcome(recipient.delivery_id, DeliveryState.PENDING)

    def _render_ahead(self, recipients: Sequence[Recipient]) -> None:
        if not isinstance(self.renderer, RenderAhead):
            return
        for start in range(0, len(recipients), RENDER_CHUNK):
            chunk = recipients[start:start + RENDER_CHUNK]
            job = self.renderer.submit(chunk)
            for index, recipient in enumerate(chunk):
                self._ahead[recipient.delivery_id] = (job, index)

    async def _render(self, recipient: Recipient) -> Outgoing | str:
        """The message, or why it cannot be rendered."""
        slot = self._ahead.pop(recipient.delivery_id, None)
        if slot is not None and isinstance(self.renderer, RenderAhead):
            job, index = slot
            if job.done() or self.renderer.warm:
                try:
                    return (await job)[index]
                except HelperGone:
                    pass  # the helper died (killed by hand?): render here from now on
            else:
                # while the helper is still starting, rendering here beats waiting for it
                self.renderer.taken(job)
        try:
            return self.renderer.render(recipient).outgoing
        except MailerError as exc:
            return str(exc) or type(exc).__name__

    async def _deliver(self, recipient: Recipient, attempts_before: int) -> Outcome:
        message = await self._render(recipient)
        if isinstance(message, str):
            # a template that fails for one subscriber's data fails that message, not the campaign
            self.report.failed += 1
            return Outcome(recipient.delivery_id, DeliveryState.FAILED,
                           response=f"could not render the message: {message}")
        result = await self.transport.send_wire(message.envelope_from, message.recipient, message.wire)
        if result.connection_failed:
            self._consecutive_errors += 1
            self._last_error = result.response
        else:
            self._consecutive_errors = 0
        return self._outcome(recipient, attempts_before, result)

    def _outcome(self, recipient: Recipient, attempts_before: int, result: SendResult) -> Outcome:
        delivery_id = recipient.delivery_id
        if result.status is SendStatus.SENT:
            self.report.sent += 1
            return Outcome(delivery_id, DeliveryState.SENT, result.code, result.response)
        if result.status is SendStatus.NOT_SENT:
            self.report.released += 1
            return Outcome(delivery_id, DeliveryState.PENDING, result.code, result.response)
        if result.status is SendStatus.TRANSIENT:
            retry_at = next_attempt_at(attempts_before, self.clock(), self.settings.retry_for)
            if retry_at is not None:
                self.report.deferred += 1
                return Outcome(delivery_id, DeliveryState.DEFERRED, result.code, result.response, retry_at)
            self.report.failed += 1
            return Outcome(delivery_id, DeliveryState.FAILED, result.code,
                           f"gave up after {attempts_before + 1} attempts: {result.response}")
        self.report.failed += 1
        if result.hard_bounce:
            self.report.hard_bounces += 1
        if result.policy_block:
            self.report.policy_blocks += 1
        return Outcome(delivery_id, DeliveryState.FAILED, result.code, result.response,
                       hard_bounce=recipient.email if result.hard_bounce else None,
                       policy_block=recipient.email if result.policy_block else None)

    async def _heartbeat(self) -> None:
        # a send may take long under a low rate cap: refreshing our claims tells other hosts we
        # live, and setting aside a dead sender's claims here means they wait for no new cycle
        interval = max(1.0, self.settings.claim_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            found = await self.calls.try_once(self.store.heartbeat, self.clock(), self.settings.claim_timeout)
            self.report.abandoned += found or 0


class CampaignSender:
    """One sending run against the configured database and relay: shared connections, one stop switch.

    Use as `async with CampaignSender(config, database) as sender: await sender.send(campaign_id)`.
    With `handle_signals`, SIGTERM and SIGINT drain the messages in flight and stop the run.
    """

    def __init__(
        self,
        config: Config,
        database: Database,
        *,
        deadline: float | None = None,
        handle_signals: bool = False,
        clock: Callable[[], dt.datetime] = utcnow,
        on_batch: Callable[[SendReport], None] | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.config = config
        self.database = database
        self.deadline = deadline
        self.handle_signals = handle_signals
        self.clock = clock
        self.on_batch = on_batch
        self.store = SqlDeliveryStore(database, policy_pause=PolicyPauseRule.from_config(config.sending))
        self.transport: Transport = transport or SmtpTransport(config.smtp)
        self.calls = DatabaseCalls(config.database.reconnect_for)
        self.stopped = False
        self._pipeline: Pipeline | None = None
        self._signals: list[signal.Signals] = []

    async def __aenter__(self) -> CampaignSender:
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
                self._signals.append(sig)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.remove_signal_handler(sig)
        self._signals.clear()
        await self.transport.close()
        self.calls.close()

    def stop(self) -> None:
        """Drain: messages in flight finish and are recorded; nothing new is sent."""
        self.stopped = True
        if self._pipeline is not None:
            self._pipeline.stop()
        # a second Ctrl-C or SIGTERM gets the default behaviour: the impatient can still kill it
        # (what was in flight is then in doubt, as after kill -9)
        if self._signals:
            loop = asyncio.get_running_loop()
            for sig in self._signals:
                loop.remove_signal_handler(sig)
            self._signals.clear()

    @property
    def settings(self) -> PipelineSettings:
        return PipelineSettings(
            batch_size=self.config.sending.batch_size,
            retry_for=self.config.smtp.retry_for,
            max_consecutive_errors=self.config.smtp.max_consecutive_errors,
            claim_timeout=self.config.sending.claim_timeout,
            reconnect_for=self.config.database.reconnect_for,
        )

    def prepare(self, campaign_id: int, checked: Composer | None = None) -> Renderer:
        """Check the campaign is sending and compliant, and compile its templates once; `checked` is
        the composer of the gate this process ran when it started the send (lifecycle.begin_send).

        Raises DeliveryError, ComplianceError or TemplateError."""
        with self.database.session() as session:
            mark_abandoned_claims(session, self.clock(), self.config.sending.claim_timeout)
            campaign = get_campaign(session, campaign_id)
            if campaign.status is not CampaignStatus.SENDING:
                raise DeliveryError(f"campaign {campaign_id} is {campaign.status.value}, not sending")
            composer = checked
            if composer is None:
                mailing_list = campaign.mailing_list
                ensure_compliant(self.config, campaign, mailing_list)
                composer = Composer(self.config, campaign, mailing_list)
            counts = count_deliveries(session, campaign_id)
        due = counts[DeliveryState.PENDING] + counts[DeliveryState.DEFERRED]
        processes = self.config.sending.render_processes
        if processes and due >= MIN_MESSAGES_FOR_HELPER:
            return RenderAhead(composer, self.config, processes)
        return composer

    async def send(self, campaign_id: int, renderer: Renderer | None = None, *,
                   checked: Composer | None = None) -> SendReport:
        """Send the campaign's due deliveries; marks it sent when nothing is left to send.

        `checked`: see prepare()."""
        if renderer is None:
            renderer = await self.calls.inline(self.prepare, campaign_id, checked)
        pipeline = Pipeline(self.store, self.transport, renderer, campaign_id, self.settings,
                            clock=self.clock, on_batch=self.on_batch, calls=self.calls)
        self._pipeline = pipeline
        if self.stopped:
            pipeline.stop()
        try:
            report = await pipeline.run(self.deadline)
        finally:
            self._pipeline = None
            if isinstance(renderer, RenderAhead):
                renderer.close()
        await self.calls.call(self._finish_if_done, campaign_id)
        return report

    def _finish_if_done(self, campaign_id: int) -> None:
        with self.database.session() as session:
            finish_if_done(session, campaign_id, self.clock())


def send_campaign_now(
    config: Config,
    database: Database,
    campaign_id: int,
    *,
    handle_signals: bool = False,
    on_batch: Callable[[SendReport], None] | None = None,
    checked: Composer | None = None,
) -> SendReport:
    """Send a sending campaign's due deliveries in this process, until done or stopped (`checked`:
    see CampaignSender.prepare)."""

    async def run() -> SendReport:
        async with CampaignSender(config, database, handle_signals=handle_signals, on_batch=on_batch) as sender:
            return await sender.send(campaign_id, checked=checked)

    return asyncio.run(run())
