"""Contract test against Debian's miltertest (libmilter's MTA side, Lua-scripted)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
from milter_mta import run, within_deadline
from phishgate.milter import (
    Action,
    AddHeader,
    Continue,
    Envelope,
    Handler,
    MilterServer,
    Quarantine,
    ReplyCode,
    Session,
)

SCRIPT = """\
conn = mt.connect("inet:{port}@127.0.0.1", 20, 0.05)
if conn == nil then error("cannot connect") end
mt.set_timeout(5)
assert(mt.conninfo(conn, "client.test", "192.0.2.1") == nil)
assert(mt.helo(conn, "client.test") == nil)
mt.macro(conn, SMFIC_MAIL, "i", "QID1", "{{auth_authen}}", "alice")
assert(mt.mailfrom(conn, "a@b.test") == nil)
assert(mt.rcptto(conn, "c@d.test") == nil)
assert(mt.header(conn, "Subject", "QUARANTINE-ME") == nil)
assert(mt.bodystring(conn, "hello\\r\\n") == nil)
assert(mt.eom(conn) == nil)
assert(mt.getreply(conn) == SMFIR_CONTINUE, "no CONTINUE after quarantine")
assert(mt.eom_check(conn, MT_HDRADD, "X-Queue-Id", "QID1"), "no queue id header")
assert(mt.eom_check(conn, MT_HDRADD, "X-Auth", "alice"), "no auth header")
assert(mt.eom_check(conn, MT_QUARANTINE, "marker"), "not quarantined")
assert(mt.mailfrom(conn, "x@y.test") == nil)
assert(mt.header(conn, "Subject", "REJECT-ME") == nil)
assert(mt.eom(conn) == nil)
assert(mt.getreply(conn) == SMFIR_REPLYCODE, "no REPLYCODE")
assert(mt.eom_check(conn, MT_SMTPREPLY, "550", "5.7.1", "phishing"), "wrong reply")
assert(not mt.eom_check(conn, MT_QUARANTINE), "second message quarantined")
mt.disconnect(conn)
mt.echo("miltertest script passed")
"""


class MarkerHandler(Handler):
    """Tags every message; holds or rejects on a Subject marker."""

    async def end_of_message(
        self, session: Session, envelope: Envelope
    ) -> Sequence[Action]:
        """Header with queue id and login; act on the Subject marker."""
        actions: list[Action] = [
            AddHeader("X-Queue-Id", envelope.queue_id or "none"),
            AddHeader("X-Auth", envelope.auth_authen or "none"),
        ]
        subject = envelope.header_values("Subject")
        if "REJECT-ME" in subject:
            return [ReplyCode(550, "5.7.1", "phishing")]
        if "QUARANTINE-ME" in subject:
            actions.append(Quarantine("marker"))
        return [*actions, Continue()]


def _miltertest_binary() -> str:
    binary = shutil.which("miltertest")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                "miltertest is required when CI=true (apt-get install miltertest)"
            )
        pytest.skip("miltertest not installed")
    return binary


def test_miltertest_contract(tmp_path: Path) -> None:
    """libmilter's MTA side sees header adds, quarantine + continue, and 550 5.7.1."""
    binary = _miltertest_binary()
    script = tmp_path / "contract.lua"

    async def scenario() -> tuple[int | None, bytes, bytes]:
        async with MilterServer("inet:127.0.0.1:0", MarkerHandler()) as server:
            script.write_text(SCRIPT.format(port=server.port))
            process = await asyncio.create_subprocess_exec(
                binary,
                "-v",
                "-s",
                str(script),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await within_deadline(process.communicate())
            return process.returncode, out, err

    returncode, out, err = run(scenario)
    assert returncode == 0, (out + err).decode(errors="replace")
    assert b"miltertest script passed" in out
