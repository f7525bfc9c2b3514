"""Sending throughput: the full pipeline against raw aiosmtplib, same sink, same connections, one run.

    $ .venv/bin/python benchmarks/send.py               # 20,000 recipients
    $ .venv/bin/python benchmarks/send.py -n 100000     # the memory target
    $ .venv/bin/python benchmarks/send.py --rtt 40 -n 2000   # a relay 40 ms away

The sink is Postfix's `smtp-sink` when it is installed, else the minimal asyncio SMTP sink
below; either runs in a child process so that it does not share this process's CPU (a relay is
another machine in production). The pipeline is this project's whole send: audience snapshot,
claims, suppression checks, rendering, unsubscribe tokens, VERP, SMTP, outcome records, on a
SQLite file. The raw limit sends one prebuilt message of the same size with aiosmtplib over the
same number of connections. Raw runs before and after the pipeline; the ratio uses their mean.

With --rtt MS both talk to the sink through a delay line, another child process: a TCP proxy on
loopback that holds every chunk MS/2 in each direction, order kept (as netem would, without root).
Then the run also prints the one-round-trip limit, connections / RTT: what a sender reaches when
each message costs exactly one round trip per connection (RFC 2920 pipelining), and the ratio to it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

# The render helper is spawned, and a spawned process first imports its parent's main module, as
# "__mp_main__". In production that is the `mailer` script, which imports next to nothing; so that
# the helper starts here as it starts there, this script's own imports are skipped in it.
if __name__ != "__mp_main__":
    import aiosmtplib
    import psutil
    import sqlalchemy as sa

    from mailer.campaigns import create_campaign
    from mailer.config import SmtpConfig, StartTLS, load_config
    from mailer.content.compose import Composer, sample_recipient
    from mailer.db import Database, normalize_email
    from mailer.delivery.pipeline import CampaignSender
    from mailer.delivery.transport import SendStatus, SmtpTransport
    from mailer.lifecycle import begin_send
    from mailer.models import (
        Campaign,
        MailingList,
        Subscriber,
        Subscription,
        SubscriptionStatus,
        utcnow,
    )
    from mailer.recipients.lists import create_list

SECRET = "benchmark-signing-key-0123456789"


# -- the minimal sink --------------------------------------------------------------------------


class SinkProtocol(asyncio.Protocol):
    """Just enough ESMTP to accept mail as fast as the client can send it; keeps nothing."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""
        self.in_data = False
        transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    self.buffer = self.buffer[-4:]  # the end marker may straddle two reads
                    return
                self.buffer = self.buffer[end + 5:]
                self.in_data = False
                self.transport.write(b"250 2.0.0 Ok: queued\r\n")
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            line, self.buffer = self.buffer[:end], self.buffer[end + 2:]
            verb = line[:4].upper()
            if verb == b"EHLO":
                self.transport.write(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n")
            elif verb == b"DATA":
                self.in_data = True
                self.buffer = b"\r\n" + self.buffer  # so a body of only "." still ends the data
                self.transport.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb == b"QUIT":
                self.transport.write(b"221 Bye\r\n")
                self.transport.close()
                return
            else:  # HELO, MAIL, RCPT, RSET, NOOP
                self.transport.write(b"250 Ok\r\n")


# -- the delay line --------------------------------------------------------------------------


async def _delayed_pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, delay: float) -> None:
    """Forward chunks in order, each `delay` seconds after it arrived."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def forward() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            sink.write(data)
        sink.close()

    forwarder = asyncio.create_task(forward())
    try:
        while data := await source.read(65536):
            queue.put_nowait((loop.time() + delay, data))
    except ConnectionError:
        pass
    queue.put_nowait((loop.time() + delay, b""))
    await forwarder


def run_delay_line(port: int, target: int, rtt_ms: float) -> None:
    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target)
        half = rtt_ms / 2000
        await asyncio.gather(_delayed_pipe(reader, upstream_writer, half),
                             _delayed_pipe(upstream_reader, writer, half), return_exceptions=True)

    async def serve() -> None:
        server = await asyncio.start_server(connection, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def start_delay_line(target: int, rtt_ms: float) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--delay-line-only", str(port), str(target), str(rtt_ms)])
    wait_for_port(proc, port)
    return proc, port


def wait_for_port(proc: subprocess.Popen[bytes], port: int) -> None:
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit(f"nothing listens on port {port}")


def run_sink(port: int) -> None:
    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(SinkProtocol, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_sink(kind: str) -> tuple[subprocess.Popen[bytes], int, str]:
    port = free_port()
    postfix = shutil.which("smtp-sink") or next(
        (p for p in ("/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/smtp-sink") if os.path.exists(p)), None)
    if kind in ("auto", "postfix") and postfix:
        # -c counts, 5000 is the listen backlog; it accepts and discards, like a very fast relay
        # as root it must drop privileges to some user
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        proc = subprocess.Popen([postfix, *user, "-c", f"127.0.0.1:{port}", "5000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        name = f"Postfix smtp-sink ({postfix}), child process"
    elif kind == "postfix":
        raise SystemExit("smtp-sink not found: apt-get install postfix, or use --sink asyncio")
    else:
        proc = subprocess.Popen([sys.executable, __file__, "--sink-only", str(port)])
        name = "minimal asyncio sink (benchmarks/send.py), child process"
    wait_for_port(proc, port)
    return proc, port, name


# -- the two contenders ------------------------------------------------------------------------


def setup(directory: Path, port: int, n: int, connections: int, batch_size: int,
          render_processes: int) -> tuple[Database, int, int]:
    config_path = directory / "mailer.toml"
    config_path.write_text(
        f'[database]\nurl = "sqlite:///{directory / "bench.db"}"\n\n'
        f'[unsubscribe]\nsecret_keys = ["{SECRET}"]\n\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nstarttls = "off"\nconnections = {connections}\n\n'
        f"[sending]\nbatch_size = {batch_size}\nrender_processes = {render_processes}\n",
        encoding="utf-8",
    )
    config = load_config(config_path, environ={})
    database = Database(config.database.url)
    database.upgrade()
    now = utcnow()
    with database.session() as session:
        mailing_list = create_list(session, "news", "Harmony News")
        list_id = mailing_list.id
    chunk = 5000  # keep the setup's own memory small, so the peak is the pipeline's
    for start in range(0, n, chunk):
        addresses = [f"reader{i:07d}@example.com" for i in range(start, min(n, start + chunk))]
        with database.session() as session:
            first_id = (session.scalar(sa.select(sa.func.max(Subscriber.id))) or 0) + 1
            session.execute(sa.insert(Subscriber), [
                {"id": first_id + k, "email": a, "email_normalized": normalize_email(a),
                 "name": f"Reader {start + k}", "attributes": {"city": "Lisbon"},
                 "created_at": now, "updated_at": now}
                for k, a in enumerate(addresses)
            ])
            session.execute(sa.insert(Subscription), [
                {"subscriber_id": first_id + k, "list_id": list_id, "status": SubscriptionStatus.ACTIVE,
                 "consent_at": now, "consent_source": "benchmark", "confirmed_at": now, "created_at": now}
                for k in range(len(addresses))
            ])
    with database.session() as session:
        campaign_id = create_campaign(session, config, list_name="news", subject="Welcome to Harmony News",
                                      template="welcome").campaign.id
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None
        sample = Composer(config, campaign, session.get(MailingList, list_id)).render(sample_recipient())
    return database, campaign_id, len(sample.data)


async def raw_send(port: int, connections: int, n: int, message: bytes) -> float:
    """The limit: aiosmtplib alone, one prebuilt message, persistent connections."""
    clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False) for _ in range(connections)]
    await asyncio.gather(*(c.connect() for c in clients))
    share = [n // connections + (1 if i < n % connections else 0) for i in range(connections)]

    async def pump(client: aiosmtplib.SMTP, count: int) -> None:
        for i in range(count):
            await client.sendmail("b-1-abcdefghij@bounces.harmonymails.com", [f"reader{i:07d}@example.com"],
                                  message)

    started = time.perf_counter()
    await asyncio.gather(*(pump(c, k) for c, k in zip(clients, share, strict=True)))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(c.quit() for c in clients))
    return n / elapsed


async def transport_send(port: int, connections: int, n: int, message: bytes) -> float:
    """This project's SMTP transport alone: the same prebuilt message, as many callers as the
    pipeline runs, so the transport's share of the pipeline's figure shows."""
    transport = SmtpTransport(SmtpConfig(host="127.0.0.1", port=port, starttls=StartTLS.OFF,
                                         connections=connections))
    left = iter(range(n))

    async def caller() -> None:
        for i in left:
            result = await transport.send("b-1-abcdefghij@bounces.harmonymails.com",
                                          f"reader{i:07d}@example.com", message)
            if result.status is not SendStatus.SENT:
                raise SystemExit(f"the transport could not send: {result.response}")

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(transport.concurrency)))
    elapsed = time.perf_counter() - started
    await transport.close()
    return n / elapsed


def reset_peak_rss() -> bool:
    """Start this process's peak RSS afresh (Linux 4.0+), so that the send's own peak shows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss() -> int:
    """This process's peak RSS in bytes since start, or since reset_peak_rss()."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class PipelineRun(NamedTuple):
    rate: float
    sent: int
    snapshot_seconds: float  # begin_send: the audience snapshot, inside the rate's time
    sender_cpu: float  # CPU seconds of this process, user and system
    helper_cpu: float  # CPU seconds of the render helpers, which have exited


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def sink_seconds(sink: psutil.Process) -> float:
    """CPU seconds the sink (and a delay line would be another process) has used so far."""
    times = sink.cpu_times()
    return float(times.user + times.system)


def pipeline_send(directory: Path, database: Database, campaign_id: int, n: int) -> PipelineRun:
    config = load_config(directory / "mailer.toml", environ={})
    cpu_self, cpu_children = cpu_seconds(resource.RUSAGE_SELF), cpu_seconds(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    begun = begin_send(config, database, campaign_id)  # as `campaign send` does
    snapshot = time.perf_counter() - started

    async def run() -> int:
        async with CampaignSender(config, database) as sender:
            return (await sender.send(campaign_id, checked=begun.checked)).sent

    sent = asyncio.run(run())
    elapsed = time.perf_counter() - started
    return PipelineRun(n / elapsed, sent, snapshot, cpu_seconds(resource.RUSAGE_SELF) - cpu_self,
                       cpu_seconds(resource.RUSAGE_CHILDREN) - cpu_children)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--recipients", type=int, default=20_000)
    parser.add_argument("-c", "--connections", type=int, default=4)
    parser.add_argument("-b", "--batch-size", type=int, default=100)
    parser.add_argument("-r", "--render-processes", type=int, default=1,
                        help="sending.render_processes (0: render in the sending process)")
    parser.add_argument("--rtt", type=float, default=0.0, metavar="MS",
                        help="round trip in milliseconds added by a delay line between sender and sink")
    parser.add_argument("--sink", choices=["auto", "asyncio", "postfix"], default="auto")
    parser.add_argument("--sink-only", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--delay-line-only", nargs=3, metavar=("PORT", "TARGET", "RTT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink_only:
        run_sink(args.sink_only)
        return
    if args.delay_line_only:
        port, target, rtt = args.delay_line_only
        run_delay_line(int(port), int(target), float(rtt))
        return
    n, connections = args.recipients, args.connections
    children = []
    try:
        proc, port, sink_name = start_sink(args.sink)
        children.append(proc)
        sink = psutil.Process(proc.pid)
        if args.rtt > 0:
            proc, port = start_delay_line(port, args.rtt)
            children.append(proc)
        with tempfile.TemporaryDirectory(prefix="mailer-bench-") as tmp:
            directory = Path(tmp)
            database, campaign_id, size = setup(directory, port, n, connections, args.batch_size,
                                                args.render_processes)
            message = (b"From: news@harmonymails.com\r\nTo: reader@example.com\r\nSubject: x\r\n\r\n"
                       + b"x" * 76 + b"\r\n") * max(1, size // 130)
            rss_before = psutil.Process().memory_info().rss
            sink_cpu = sink_seconds(sink)
            raw_before = asyncio.run(raw_send(port, connections, n, message))
            sink_raw, sink_cpu = sink_seconds(sink) - sink_cpu, sink_seconds(sink)
            transport_rate = asyncio.run(transport_send(port, connections, n, message))
            fresh_peak = reset_peak_rss()
            sink_cpu = sink_seconds(sink)
            run = pipeline_send(directory, database, campaign_id, n)
            sink_pipeline = sink_seconds(sink) - sink_cpu
            pipeline_rate, sent = run.rate, run.sent
            send_peak = peak_rss()
            # the render helpers have exited and been waited for; the sink is still running
            helper_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 if args.render_processes else 0
            raw_after = asyncio.run(raw_send(port, connections, n, message))
            database.dispose()
    finally:
        for proc in reversed(children):
            proc.terminate()
            proc.wait()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the whole run, setup included
    raw = (raw_before + raw_after) / 2
    print(f"sink:        {sink_name}")
    print(f"round trip:  {args.rtt:g} ms" + ("  (delay line: asyncio TCP proxy, child process)" if args.rtt else
                                             "  (loopback, no delay line)"))
    print(f"recipients:  {n:,}   connections: {connections}   batch size: {args.batch_size}   "
          f"render processes: {args.render_processes}   message: {size:,} bytes")
    if args.rtt > 0:
        limit = connections / (args.rtt / 1000)
        print(f"one-round-trip limit: {limit:8.0f} msg/s  (connections / RTT)")
    print(f"raw aiosmtplib:  {raw_before:8.0f} msg/s before, {raw_after:8.0f} msg/s after (mean {raw:.0f})")
    print(f"transport alone: {transport_rate:8.0f} msg/s  (prebuilt message, {3 * connections} callers)  "
          f"x{transport_rate / raw:.2f} raw")
    print(f"full pipeline:   {pipeline_rate:8.0f} msg/s  ({sent:,} sent and recorded)")
    print(f"pipeline / raw:  {pipeline_rate / raw:8.2f}  (target at RTT 0: >= 1.5)")
    print(f"CPU per message: {run.sender_cpu / n * 1e6:8.0f} us sending process, "
          f"{run.helper_cpu / n * 1e6:.0f} us render helpers (start-up and snapshot included, which "
          f"small runs spread thin); audience snapshot {run.snapshot_seconds:.2f} s, in the pipeline's time")
    print(f"sink CPU:        {sink_pipeline / n * 1e6:8.0f} us per message in the pipeline, "
          f"{sink_raw / n * 1e6:.0f} us in the first raw run")
    if args.rtt > 0:
        print(f"pipeline / limit:{pipeline_rate / limit:8.2f}  (target >= 0.8)   "
              f"transport alone / limit: {transport_rate / limit:.2f}")
    print(f"peak RSS:        {send_peak / 2**20:8.1f} MB  sending process, {'during the send' if fresh_peak else 'whole run'}"
          f"{f'; render helper {helper_peak / 2**20:.1f} MB' if helper_peak else ''}  (target < 150 MB each; "
          f"whole run {peak / 2**20:.1f} MB, after setup {rss_before / 2**20:.1f} MB)")
    if sent != n:
        raise SystemExit(f"only {sent} of {n} messages were sent")


if __name__ == "__main__":
    main()
