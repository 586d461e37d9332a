"""The systemd notify protocol: what ``phishgate serve`` tells systemd, and when.

A unix datagram socket bound by the test stands in for systemd's
``NOTIFY_SOCKET``; the real daemon runs as a subprocess.
"""

from __future__ import annotations

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
from phishgate.daemon.systemd import notify
from postfixlab import free_ports
from serve_process import ServeProcess

DEADLINE = 30.0
"""Seconds to wait for any one notification."""


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
