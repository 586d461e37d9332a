"""The re-injection client: its pure helpers, then sessions against a real sink.

tests/smtpsink.py plays Postfix's re-injection smtpd over real sockets; it
offers PIPELINING, DSN and XFORWARD as Postfix does, or, with its EHLO hook
taken away, none of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from phishgate.daemon.proxy import read_data
from phishgate.daemon.reinject import (
    ReinjectError,
    ReinjectSessions,
    Transaction,
    dot_stuff,
    parse_ehlo,
)
from smtpsink import Sink

MESSAGE = b"Subject: x\r\n\r\n.starts\r\nmid\r\n.\r\n..two\r\nend."


@pytest.fixture
def sink() -> Iterator[Sink]:
    sink = Sink().start()
    yield sink
    sink.stop()


async def unstuff(wire: bytes) -> bytes | None:
    reader = asyncio.StreamReader()
    reader.feed_data(wire)
    reader.feed_eof()
    return await read_data(reader, None)


@pytest.mark.parametrize(
    ("message", "content"),
    [
        (MESSAGE, MESSAGE + b"\r\n"),
        (b"", b""),
        (b"a\nb\r\n", b"a\r\nb\r\n"),
        (b"a\n.\nb", b"a\r\n.\r\nb\r\n"),
        (b"a\rb\r\n", b"a\r\nb\r\n"),
    ],
)
def test_dot_stuff_round_trips_through_the_servers_reader(
    message: bytes, content: bytes
) -> None:
    """What dot_stuff sends, the proxy's own DATA reader reads back (CRLF lines)."""
    wire = dot_stuff(message)
    assert wire.endswith(b".\r\n") and wire.count(b"\r\n.\r\n") <= 1
    assert asyncio.run(unstuff(wire)) == content


def test_parse_ehlo_keywords_upper_case() -> None:
    """EHLO lines after the greeting line become {KEYWORD: parameters}."""
    lines = ["mx.test", "SIZE 10240000", "pipelining", "DSN"]
    assert parse_ehlo(lines) == {"SIZE": "10240000", "PIPELINING": "", "DSN": ""}


def _tx(*rcpts: str, params: tuple[str, ...] = ()) -> Transaction:
    return Transaction(
        "bob@example.org",
        [(r, ["NOTIFY=NEVER"]) for r in rcpts],
        MESSAGE,
        ["SIZE=1", "RET=HDRS", *params],
        {"ADDR": "192.0.2.1", "IDENT": "Q1"},
    )


async def _send_twice(port: int, between: object = None) -> list[dict[int, str]]:
    sessions = ReinjectSessions(("127.0.0.1", port), 5.0)
    try:
        first = await sessions.send(_tx("al@example.org"), partial=False)
        if callable(between):
            await asyncio.to_thread(between)
        second = await sessions.send(_tx("cy@example.org"), partial=True)
        return [first, second]
    finally:
        sessions.close()


def test_pipelined_transactions_on_one_session(sink: Sink) -> None:
    """Two messages: the envelope, parameters and XFORWARD arrive; one session."""
    assert asyncio.run(_send_twice(sink.port)) == [{}, {}]

    first, second = sink.messages
    assert (first.mail_from, first.rcpt_tos) == ("bob@example.org", ["al@example.org"])
    assert first.mail_params == [f"SIZE={len(MESSAGE)}", "RET=HDRS"]
    assert first.rcpt_params == [["NOTIFY=NEVER"]] and first.xforward["IDENT"] == "Q1"
    assert first.data == MESSAGE + b"\r\n" and second.rcpt_tos == ["cy@example.org"]
    assert len(sink._sessions) == 1


def test_session_closed_by_server_is_replaced(sink: Sink) -> None:
    """The server closes the cached session (a Postfix restart): no error, a new one."""

    assert asyncio.run(_send_twice(sink.port, sink.drop_sessions)) == [{}, {}]
    assert [m.rcpt_tos for m in sink.messages] == [
        ["al@example.org"],
        ["cy@example.org"],
    ]
    assert len(sink._sessions) == 2


def test_server_without_pipelining_gets_one_command_at_a_time(sink: Sink) -> None:
    """No PIPELINING (nor DSN, XFORWARD) offered: commands wait for replies."""
    sink.handler.offer_extensions = False
    assert asyncio.run(_send_twice(sink.port)) == [{}, {}]
    (first, _) = sink.messages
    assert first.rcpt_params == [[]] and first.xforward == {}


def test_refused_recipient_partial_and_not(sink: Sink) -> None:
    """partial: the refused one is returned, the rest delivered; else nothing sent."""
    sink.handler.rcpt_replies["no@example.org"] = "450 4.2.0 busy"

    async def run() -> dict[int, str]:
        sessions = ReinjectSessions(("127.0.0.1", sink.port), 5.0)
        try:
            with pytest.raises(ReinjectError, match=r"450 4\.2\.0 busy"):
                await sessions.send(_tx("al@example.org", "no@example.org"), False)
            return await sessions.send(_tx("no@example.org", "al@example.org"), True)
        finally:
            sessions.close()

    assert asyncio.run(run()) == {0: "450 4.2.0 busy"}
    (got,) = sink.messages
    assert got.rcpt_tos == ["al@example.org"]


def test_unreachable_server() -> None:
    """Nobody listening: ReinjectError marked unreachable."""
    sink = Sink().start()
    port = sink.port
    sink.stop()

    async def run() -> None:
        await ReinjectSessions(("127.0.0.1", port), 5.0).send(_tx("a@b.test"), False)

    with pytest.raises(ReinjectError) as caught:
        asyncio.run(run())
    assert caught.value.unreachable


class ScriptedServer:
    """A bare SMTP server offering PIPELINING.

    On its first connection it answers the second transaction's first
    command with 421 and hangs up, as a server shutting down does.
    """

    def __init__(self) -> None:
        self.connections = 0
        self.delivered: list[bytes] = []

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        first_connection = self.connections == 1
        writer.write(b"220 scripted\r\n")
        await reader.readline()  # EHLO
        writer.write(b"250-scripted\r\n250 PIPELINING\r\n")
        transactions = 0
        while line := await reader.readline():
            if line.startswith(b"MAIL") and first_connection and transactions == 1:
                writer.write(b"421 4.3.2 shutting down\r\n")
                break
            if line.startswith(b"DATA"):
                writer.write(b"354 go on\r\n")
                self.delivered.append(await reader.readuntil(b"\r\n.\r\n"))
                transactions += 1
            writer.write(b"250 ok\r\n")
        writer.close()


def test_421_before_anything_counts_as_a_closed_session() -> None:
    """A 421 to a cached session's first command: a new session takes the message."""
    script = ScriptedServer()

    async def run() -> list[dict[int, str]]:
        server = await asyncio.start_server(script.serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            sessions = ReinjectSessions(("127.0.0.1", port), 5.0)
            try:
                return [
                    await sessions.send(_tx("al@example.org"), False),
                    await sessions.send(_tx("cy@example.org"), False),
                ]
            finally:
                sessions.close()

    assert asyncio.run(run()) == [{}, {}]
    assert script.connections == 2 and len(script.delivered) == 2
