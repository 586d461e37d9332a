"""Server tests over real sockets with an in-test MTA client."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest
from milter_mta import (
    ADD_AND_HOLD,
    POSTFIX_OFFER,
    MtaClient,
    RecordingHandler,
    connection_commands,
    eventually,
    message_commands,
    run,
    within_deadline,
)
from phishgate.milter import (
    Action,
    Continue,
    Envelope,
    Handler,
    ListenSpec,
    MilterOptions,
    MilterServer,
    Session,
    TempFail,
    parse_listen_spec,
)
from phishgate.milter.codec import EndOfMessage, Mail, OptNegReply, Progress, Quit

LOOPBACK = "inet:127.0.0.1:0"


class SlowHandler(Handler):
    """Blocks in end_of_message until released; notes start and cancellation."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def end_of_message(
        self, session: Session, envelope: Envelope
    ) -> Sequence[Action]:
        """Wait for release; record a cancellation."""
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return [Continue()]


async def _open_message(client: MtaClient) -> None:
    """Negotiate and send one message up to (not including) end of message."""
    await client.send(*connection_commands())
    assert isinstance(await client.reply(), OptNegReply)
    await client.send(*message_commands()[:-2])


def test_add_header_quarantine_continue() -> None:
    """Two messages on one connection each get header, hold, continue; QUIT closes."""
    handler = RecordingHandler(ADD_AND_HOLD)

    async def scenario() -> None:
        async with MilterServer(LOOPBACK, handler) as server:
            client = await MtaClient.connect(server.port)
            await client.send(*connection_commands())
            assert isinstance(await client.reply(), OptNegReply)
            for _ in range(2):
                await client.send(*message_commands())
                assert await client.replies_until_final() == ADD_AND_HOLD
            await client.send(Quit())
            assert await within_deadline(client.wait_closed_by_peer()) == b""
            await client.close()

    run(scenario)
    assert [e.queue_id for e in handler.envelopes] == ["4Z1abc2DEF"] * 2


def test_garbage_connection_does_not_disturb_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Garbage closes only its own connection; a concurrent session completes."""
    handler = RecordingHandler(ADD_AND_HOLD)

    async def scenario() -> None:
        async with MilterServer(LOOPBACK, handler) as server:
            good = await MtaClient.connect(server.port)
            await _open_message(good)
            bad = await MtaClient.connect(server.port)
            await bad.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await within_deadline(bad.wait_closed_by_peer()) == b""

            await good.send(EndOfMessage())
            assert await good.replies_until_final() == ADD_AND_HOLD
            later = await MtaClient.connect(server.port)
            await later.send(POSTFIX_OFFER)
            assert isinstance(await later.reply(), OptNegReply)
            for client in (good, bad, later):
                await client.close()

    with caplog.at_level(logging.WARNING, "phishgate.milter.server"):
        run(scenario)
    assert "protocol error" in caplog.text


def test_progress_sent_while_handler_is_slow() -> None:
    """A slow end_of_message handler makes the server send SMFIR_PROGRESS."""
    handler = SlowHandler()
    options = MilterOptions(progress_interval=0.02)

    async def scenario() -> None:
        async with MilterServer(LOOPBACK, handler, options) as server:
            client = await MtaClient.connect(server.port)
            await _open_message(client)
            await client.send(EndOfMessage())
            assert await client.reply() == Progress()
            assert await client.reply() == Progress()
            assert server.in_flight_messages == 1
            handler.release.set()
            assert await client.replies_until_final() == [Continue()]
            assert server.in_flight_messages == 0
            await client.close()

    run(scenario)


def test_peer_close_cancels_handler(caplog: pytest.LogCaptureFixture) -> None:
    """If the MTA hangs up during end of message, the handler is cancelled."""
    handler = SlowHandler()

    async def scenario() -> None:
        async with MilterServer(LOOPBACK, handler) as server:
            client = await MtaClient.connect(server.port)
            await _open_message(client)
            await client.send(EndOfMessage())
            await within_deadline(handler.started.wait())
            await client.close()
            await within_deadline(handler.cancelled.wait())
            await eventually(lambda: server.connections == 0)

    with caplog.at_level(logging.WARNING, "phishgate.milter.server"):
        run(scenario)
    assert "queue id 4Z1abc2DEF; handler cancelled" in caplog.text


def test_handler_error_gets_fallback_over_the_wire() -> None:
    """A raising handler yields the configured fallback; the connection lives on."""
    handler = RecordingHandler()
    handler.error = RuntimeError("model exploded")

    async def scenario() -> None:
        async with MilterServer(LOOPBACK, handler) as server:
            client = await MtaClient.connect(server.port)
            await _open_message(client)
            await client.send(EndOfMessage())
            assert await client.replies_until_final() == [TempFail()]
            handler.error = None
            await client.send(Mail(("<a@b>",)), EndOfMessage())
            assert await client.replies_until_final() == [Continue()]
            await client.close()

    run(scenario)


def test_shutdown_lets_the_current_message_finish() -> None:
    """close() waits for an in-flight message, then closes that connection."""
    handler = SlowHandler()

    async def scenario() -> None:
        server = MilterServer(LOOPBACK, handler)
        await server.start()
        idle = await MtaClient.connect(server.port)
        await idle.send(POSTFIX_OFFER)
        await idle.reply()
        busy = await MtaClient.connect(server.port)
        await _open_message(busy)
        await busy.send(EndOfMessage())
        await within_deadline(handler.started.wait())

        server.close()
        assert await within_deadline(idle.wait_closed_by_peer()) == b""
        handler.release.set()
        assert await busy.replies_until_final() == [Continue()]
        assert await server.wait_closed(timeout=5) == 0
        assert server.connections == 0
        for client in (idle, busy):
            await client.close()

    run(scenario)


def test_shutdown_deadline_cancels_stuck_connections() -> None:
    """wait_closed(timeout) cancels what is still running and says how many."""
    handler = SlowHandler()

    async def scenario() -> None:
        server = MilterServer(LOOPBACK, handler)
        await server.start()
        client = await MtaClient.connect(server.port)
        await _open_message(client)
        await client.send(EndOfMessage())
        await within_deadline(handler.started.wait())
        assert await server.wait_closed(timeout=0.05) == 1
        assert handler.cancelled.is_set()
        await client.close()

    run(scenario)


def test_unix_socket_with_mode(tmp_path: Path) -> None:
    """A unix socket listener gets the configured mode and serves a dialogue."""
    path = tmp_path / "milter.sock"
    handler = RecordingHandler(ADD_AND_HOLD)

    async def scenario() -> None:
        server = MilterServer(f"unix:{path}", handler, socket_mode=0o600)
        async with server:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            client = await MtaClient.connect_unix(str(path))
            await client.send(*connection_commands(), *message_commands())
            assert isinstance(await client.reply(), OptNegReply)
            assert await client.replies_until_final() == ADD_AND_HOLD
            await client.close()
        assert not path.exists()

    run(scenario)


def test_address_reports_the_bound_port() -> None:
    """Port 0 binds a free port, reported in Postfix notation."""

    async def scenario() -> str:
        async with MilterServer(LOOPBACK, RecordingHandler()) as server:
            assert server.port > 0
            return server.address

    assert run(scenario).startswith("inet:127.0.0.1:")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("inet:127.0.0.1:8895", ListenSpec("inet", "127.0.0.1", 8895)),
        ("inet:8895@127.0.0.1", ListenSpec("inet", "127.0.0.1", 8895)),
        ("inet6:[::1]:8895", ListenSpec("inet6", "::1", 8895)),
        ("inet6:::1:8895", ListenSpec("inet6", "::1", 8895)),
        (
            "unix:/run/phishgate/milter.sock",
            ListenSpec("unix", path="/run/phishgate/milter.sock"),
        ),
        ("local:/tmp/m", ListenSpec("unix", path="/tmp/m")),
    ],
)
def test_parse_listen_spec(spec: str, expected: ListenSpec) -> None:
    """Postfix and sendmail address forms parse to the same spec."""
    assert parse_listen_spec(spec) == expected


@pytest.mark.parametrize(
    "spec", ["8895", "tcp:1.2.3.4:25", "inet:127.0.0.1", "inet:h:99999", "unix:"]
)
def test_parse_listen_spec_errors(spec: str) -> None:
    """Malformed addresses raise ValueError that quotes them."""
    with pytest.raises(ValueError, match="milter address"):
        parse_listen_spec(spec)
