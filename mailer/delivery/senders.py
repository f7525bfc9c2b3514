"""Sender processes: the worker id each claim carries, and whether the sender behind a claim still lives."""

from __future__ import annotations

import os
import socket


def make_worker_id() -> str:
    """`host:pid:instance`: lets a sender on the same host tell a dead claimer from a live one.

    The instance (boot, pid namespace, process start time) tells the claimer from a process that
    got its pid later, after a crash or a reboot, and from a container of the same host name."""
    return f"{socket.gethostname()}:{os.getpid()}:{_process_instance(os.getpid())}"


def _process_instance(pid: int) -> str:
    # Linux only; elsewhere the pid alone decides, as it did before instances were recorded
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            boot = fh.read().strip()[:8]
        namespace = "".join(ch for ch in os.readlink("/proc/self/ns/pid") if ch.isdigit())
        return f"{boot}-{namespace}-{_start_ticks(pid)}"
    except (OSError, IndexError):
        return ""


def _start_ticks(pid: int) -> str:
    # field 22 of /proc/PID/stat: when the process started, in clock ticks since boot
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
        return fh.read().rpartition(")")[2].split()[19]


def claimer_is_dead(claimer: str, host: str) -> bool:
    claim_host, _, rest = claimer.partition(":")
    pid_text, _, instance = rest.partition(":")
    if claim_host != host or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    ours = _process_instance(os.getpid())
    if instance and ours:
        boot_and_namespace = instance.rpartition("-")[0]
        if boot_and_namespace != ours.rpartition("-")[0]:
            # another boot, or another container of this name: its pids are not ours to
            # look up, so only a claim gone stale (claim_timeout) counts as abandoned
            return False
    if pid == os.getpid():
        return bool(instance) and bool(ours) and instance != ours
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by another user
    if instance and ours:
        try:
            if instance.rpartition("-")[2] != _start_ticks(pid):
                return True  # the claimer died and its pid went to a newer process
        except (OSError, IndexError):
            return True  # gone since kill(0)
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    # a killed child its parent has not reaped yet still answers kill(0); /proc knows better
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False
