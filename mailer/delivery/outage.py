"""The sender's database work: one thread off the event loop, and patience when the database goes away."""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import sqlalchemy as sa

from mailer.errors import DatabaseUnavailable

T = TypeVar("T")

# waits between attempts to reach a database that went away: 0.25 s, 0.5, 1, 2, then every 4 s
FIRST_WAIT = 0.25
MAX_WAIT = 4.0
SWITCH_INTERVAL = 0.0005
# PostgreSQL codes of a server that is shutting down, restarting or refusing connections for now
_UNAVAILABLE_STATES = ("57P01", "57P02", "57P03")
# SQLite: another writer holds the file for longer than the busy timeout
_SQLITE_BUSY = ("SQLITE_BUSY", "SQLITE_LOCKED")


def is_connection_error(exc: BaseException) -> bool:
    """True when `exc` says the database could not be reached or dropped us, not that a query is wrong."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        return False
    sqlite_name = getattr(exc.orig, "sqlite_errorname", None)
    if sqlite_name is not None:
        return sqlite_name in _SQLITE_BUSY
    # a server that answered has a SQLSTATE; a refused or broken connection has none
    state = getattr(exc.orig, "sqlstate", None)
    return state is None or str(state).startswith("08") or state in _UNAVAILABLE_STATES


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _QuietDisconnects(logging.Filter):
    """psycopg warns, on stderr, of each pipeline it could not close on a connection already
    lost: the outage is said once, in our own line, so those lines are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("error ignored terminating")


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class DatabaseCalls:
    """Runs a sender's database work in one thread of its own, one transaction at a time, so the
    SMTP connections never wait for it; while the database is out of reach, retries with growing
    waits for up to `reconnect_for` seconds, saying so once when it goes and once when it is back.

    Past that limit every call raises DatabaseUnavailable at once."""

    def __init__(self, reconnect_for: float, log: Callable[[str], None] = _to_stderr) -> None:
        self.reconnect_for = reconnect_for
        self.log = log
        self.failures = 0  # connection errors seen so far: a write may have committed unseen
        self.gave_up = ""  # why the database was given up on, once it was
        self._down_since: float | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailer-db")
        # the event loop is busy while it sends, so the database thread gets the interpreter back
        # only when the loop's slice runs out: after each statement, 5 ms by default. A shorter
        # slice keeps a claim transaction in milliseconds, and what a crash leaves in doubt small.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        psycopg_log = logging.getLogger("psycopg")
        if not any(isinstance(f, _QuietDisconnects) for f in psycopg_log.filters):
            psycopg_log.addFilter(_QuietDisconnects())

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """fn(*args) in the database thread, retried while the database is out of reach."""
        loop = asyncio.get_running_loop()
        return await self._retrying(lambda: loop.run_in_executor(self._executor, functools.partial(fn, *args)))

    async def inline(self, fn: Callable[..., T], *args: object) -> T:
        """fn(*args) here, in the event loop (it starts processes or touches loop state), retried likewise."""

        async def here() -> T:
            return fn(*args)

        return await self._retrying(here)

    async def try_once(self, fn: Callable[..., T], *args: object) -> T | None:
        """fn(*args) in the database thread; None when the database is out of reach (noted, not retried)."""
        if self.gave_up:
            return None
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except sa.exc.DBAPIError as exc:
            if not is_connection_error(exc):
                raise
            self._went_down(exc)
            return None
        self._came_back()
        return result

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        wait = FIRST_WAIT
        while True:
            if self.gave_up:
                raise DatabaseUnavailable(self.gave_up)
            try:
                result = await attempt()
            except sa.exc.DBAPIError as exc:
                if not is_connection_error(exc):
                    raise
                left = self._went_down(exc)
                if left <= 0:
                    raise DatabaseUnavailable(self.gave_up) from None
                await asyncio.sleep(min(wait, left))
                wait = min(wait * 2, MAX_WAIT)
                continue
            self._came_back()
            return result

    def _went_down(self, exc: BaseException) -> float:
        """Note a failed attempt; returns how many seconds are left to wait for the database."""
        self.failures += 1
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            self.log(f"database unavailable: {_first_line(exc)}; sending paused, reconnecting for up to "
                     f"{self.reconnect_for:g} s (database.reconnect_for)")
        left = self._down_since + self.reconnect_for - now
        if left <= 0 and not self.gave_up:
            self.gave_up = (f"the database stayed unavailable for {now - self._down_since:.0f} s "
                            f"(database.reconnect_for): {_first_line(exc)}")
        return left

    def _came_back(self) -> None:
        if self._down_since is not None:
            self.log(f"database reachable again after {time.monotonic() - self._down_since:.1f} s; sending goes on")
            self._down_since = None

    def close(self) -> None:
        """Wait for the transaction under way, then end the thread."""
        self._executor.shutdown(wait=True)
