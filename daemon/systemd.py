"""The systemd notify protocol (sd_notify(3)), without libsystemd.

A datagram of ``KEY=VALUE`` lines to the unix socket named by
``NOTIFY_SOCKET``; a leading ``@`` means the abstract namespace. Without
the variable (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["notify"]

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
