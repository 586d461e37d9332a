"""The systemd notify protocol (sd_notify(3)), without libsystemd.

A datagram of ``KEY=VALUE`` lines to the unix socket named by
``NOTIFY_SOCKET``; a leading ``@`` means the abstract namespace. Without
the variable (not under systemd) every call is a no-op.

With ``WatchdogSec=`` systemd also sets ``WATCHDOG_USEC`` (and
``WATCHDOG_PID``) and kills the service when ``WATCHDOG=1`` stops arriving
for that long. The pings come from a task on the event loop, not from a
thread, so a loop that is stuck stops pinging and gets restarted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

__all__ = ["notify", "ping_watchdog", "watchdog_interval"]

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send *state* (e.g. ``READY=1``); True if it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
        ) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("systemd notify %s failed: %s", state, exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings, or None if systemd wants none.

    Half of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3) advises, so one
    late ping is not yet fatal. ``WATCHDOG_PID`` naming another process
    (a child that inherited the environment) means this one must not ping.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    if value <= 0:
        return None
    return value / 1_000_000 / 2


async def ping_watchdog(interval: float) -> None:
    """Send ``WATCHDOG=1`` every *interval* seconds until cancelled."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)  # the ping schedule itself
