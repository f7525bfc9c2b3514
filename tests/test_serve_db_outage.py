"""`mailer serve` while PostgreSQL goes away: 503 with Retry-After, no traceback, 200 once it is back."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cli_helpers import write_config
from recipient_helpers import add_person, make_lists
from serve_helpers import free_port, start_serve, stop_serve

from mailer.config import load_config
from mailer.db import Database

POSTGRES = ("127.0.0.1", 5432)


class Cable:
    """A TCP relay between `mailer serve` and PostgreSQL that the test can unplug: while cut,
    connections in use are dropped and new ones refused, as during a restart or a failover."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.plug()

    def plug(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        if self._listener is None:
            return
        # a bare close() leaves a blocked accept() accepting: shutdown wakes it and stops the port
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._listener = None
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            server = socket.create_connection(self.target)
            with self._lock:
                self._sockets |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def get(url: str, data: bytes | None = None) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def wait_for(url: str, status: int, seconds: float = 20) -> None:
    end = time.monotonic() + seconds
    while get(url)[0] != status:
        assert time.monotonic() < end, f"{url} never answered {status}"
        time.sleep(0.2)


@pytest.fixture
def served_through_cable(tmp_path: Path, postgres_url: str) -> Iterator[tuple[Cable, Path, str]]:
    database = Database(postgres_url)
    database.upgrade()
    database.dispose()
    cable = Cable(POSTGRES)
    url = sa.engine.make_url(postgres_url)
    app_name = f"outage_{uuid.uuid4().hex[:8]}"
    through = url.set(host="127.0.0.1", port=cable.port, query={**url.query, "application_name": app_name})
    config_path = write_config(tmp_path / "mailer.toml", through.render_as_string(hide_password=False))
    yield cable, config_path, app_name
    cable.cut()


def test_serve_answers_503_while_the_database_is_down_and_200_once_it_is_back(
    served_through_cable: tuple[Cable, Path, str], postgres_url: str
) -> None:
    cable, config_path, _ = served_through_cable
    database = Database(postgres_url)
    make_lists(database, "news")
    ana = add_person(database, "ana@example.com", "news")
    page = f"/u/{ana.token(load_config(config_path, environ={}))}"
    port = free_port()
    server = start_serve(config_path, port)
    base = f"http://127.0.0.1:{port}"
    try:
        assert get(base + page)[0] == 200
        cable.cut()

        health = get(f"{base}/healthz")
        shown = get(base + page)
        one_click = get(base + page, data=b"List-Unsubscribe=One-Click")
        assert get(f"{base}/healthz")[0] == 503  # still down: one log line for the whole outage

        cable.plug()
        wait_for(f"{base}/healthz", 200)
        back = get(base + page)
        clicked = get(base + page, data=b"List-Unsubscribe=One-Click")
    finally:
        output = stop_serve(server)
        database.dispose()

    assert health[0] == 503 and health[1]["Retry-After"] == "10"
    assert shown[0] == 503 and shown[1]["Retry-After"] == "10" and "try again" in shown[2]
    assert one_click[0] == 503 and one_click[1]["Retry-After"] == "10"
    assert back[0] == 200 and clicked[0] == 200
    assert "Traceback" not in output
    warnings = [line for line in output.splitlines() if "database" in line]
    assert len(warnings) == 2, output
    assert "database unavailable" in warnings[0] and "database answers again" in warnings[1]


def test_serve_reconnects_when_its_connections_are_terminated(
    served_through_cable: tuple[Cable, Path, str], postgres_url: str
) -> None:
    _, config_path, app_name = served_through_cable
    port = free_port()
    server = start_serve(config_path, port)
    admin = sa.create_engine(postgres_url)
    try:
        with admin.begin() as conn:
            killed = conn.execute(sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                          "WHERE application_name = :name"), {"name": app_name}).scalar()
        assert killed  # the pooled connection of the first /healthz

        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        output = stop_serve(server)
        admin.dispose()
    assert "Traceback" not in output and "database unavailable" not in output
