"""The systemd notify protocol: what ``phishgate serve`` tells systemd, and when.

A unix datagram socket bound by the test stands in for systemd's
``NOTIFY_SOCKET``; the real daemon runs as a subprocess.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from phishgate.daemon.systemd import notify, ping_watchdog, watchdog_interval
from postfixlab import free_ports
from serve_process import ServeProcess

DEADLINE = 30.0
"""Seconds to wait for any one notification."""
WATCHDOG_USEC = 1_000_000
"""A short WatchdogSec= for the tests: pings every 0.5 s."""
PINGS = 4
"""WATCHDOG=1 pings to count after READY=1."""
BLOCK_S = 0.5
"""How long the unit test blocks the event loop: 25 of its ping intervals."""


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and its path, as systemd would provide."""
    folder = Path(tempfile.mkdtemp(prefix="pgnotify-", dir="/tmp"))
    path = str(folder / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(DEADLINE)
        yield sock, path
    shutil.rmtree(folder)


def receive(sock: socket.socket) -> dict[str, str]:
    """The next notification as KEY=VALUE pairs (fails at the deadline)."""
    text = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_ready_reloading_stopping(notify_socket: tuple[socket.socket, str]) -> None:
    """READY=1 once listening, RELOADING=1/READY=1 on SIGHUP, STOPPING=1 on SIGTERM."""
    sock, path = notify_socket
    (milter_port,) = free_ports(1)
    with ServeProcess(milter_port, env={"NOTIFY_SOCKET": path}) as daemon:
        assert receive(sock) == {"READY": "1"}
        with socket.create_connection(("127.0.0.1", milter_port), timeout=5):
            pass  # READY=1 came after the milter listens
        before = time.monotonic_ns() // 1000
        daemon.send_signal(signal.SIGHUP)
        reloading = receive(sock)
        assert receive(sock) == {"READY": "1"}
        daemon.send_signal(signal.SIGTERM)
        assert receive(sock) == {"STOPPING": "1"}
        assert daemon.wait_exit() == 0

    assert reloading.pop("RELOADING") == "1"
    assert before <= int(reloading.pop("MONOTONIC_USEC")) <= time.monotonic_ns() // 1000
    assert reloading == {}


def test_watchdog_pings_after_ready(
    notify_socket: tuple[socket.socket, str],
) -> None:
    """With WATCHDOG_USEC the daemon pings WATCHDOG=1 at about half the period."""
    sock, path = notify_socket
    (milter_port,) = free_ports(1)
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    with ServeProcess(milter_port, env=env):
        while receive(sock) != {"READY": "1"}:
            pass  # pings during startup are fine, and expected
        ready = time.monotonic()
        states = [receive(sock) for _ in range(PINGS)]
        elapsed = time.monotonic() - ready

    assert states == [{"WATCHDOG": "1"}] * PINGS
    # Expected about PINGS * 0.5 s; systemd would act only past 1 s per ping.
    assert elapsed < PINGS * WATCHDOG_USEC / 1e6


def test_no_watchdog_for_another_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    """WATCHDOG_PID naming another process, or no WATCHDOG_USEC, means no pings."""
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 15.0
    monkeypatch.delenv("WATCHDOG_PID")
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("", "0", "soon"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert watchdog_interval() is None


def test_blocked_loop_stops_pinging(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stuck event loop sends no WATCHDOG=1; pings resume when it runs again."""
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    sock.setblocking(False)

    async def run() -> tuple[list[bytes], bytes]:
        loop = asyncio.get_running_loop()
        task = loop.create_task(ping_watchdog(0.02))
        await asyncio.sleep(0)  # let the task send its first ping
        time.sleep(BLOCK_S)  # the loop is stuck: what the watchdog is for
        during = _drain(sock)
        after = await asyncio.wait_for(loop.sock_recv(sock, 4096), DEADLINE)
        task.cancel()
        return during, after

    during, after = asyncio.run(run())
    assert during == [b"WATCHDOG=1"]
    assert after == b"WATCHDOG=1"


def _drain(sock: socket.socket) -> list[bytes]:
    """Every datagram already queued on a non-blocking socket."""
    received = []
    while True:
        try:
            received.append(sock.recv(4096))
        except BlockingIOError:
            return received


def test_notify_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """A NOTIFY_SOCKET starting with '@' names the abstract namespace."""
    name = f"phishgate-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(DEADLINE)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("READY=1")
        assert sock.recv(4096) == b"READY=1"


def test_notify_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without NOTIFY_SOCKET every notification is a no-op."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_notify_to_missing_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """A NOTIFY_SOCKET nobody listens on is logged and ignored, never raised."""
    monkeypatch.setenv("NOTIFY_SOCKET", f"/tmp/phishgate-absent-{os.getpid()}")
    assert notify("READY=1") is False
