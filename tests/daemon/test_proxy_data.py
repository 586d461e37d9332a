"""The proxy's SMTP server side: its bulk DATA reader and per-transaction state.

``read_data`` is fed through a real ``asyncio.StreamReader`` split at every
byte boundary, with a small stream limit so the long-line path runs too; the
server behaviour is checked over real sockets against tests/smtpsink.py,
which is the proxy's own ``ProxySMTP``.
"""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Iterator

import pytest
from aiosmtpd.smtp import SMTP
from phishgate.daemon.proxy import ProxySMTP, read_data
from smtpsink import Sink

STREAM_LIMIT = 8
"""A tiny StreamReader limit: most lines take the LimitOverrunError path."""
PIPELINED = b"MAIL FROM:<next@example.org>\r\n"
"""A command the client sent right after the end-of-data line."""

MESSAGES = {
    "empty": b"",
    "one line": b"Subject: x\r\n",
    "dots": b"Subject: x\r\n\r\n.\r\n..\r\n.x\r\nx.\r\nx.\r\n.\r\n",
    "dot first": b".starts with a dot\r\nend.\r\n",
    "long line": b"Subject: x\r\n\r\n" + b"y" * 200 + b".\r\n",
}


def on_the_wire(content: bytes) -> bytes:
    """What a client sends after 354: dot-stuffed content, then ".\\r\\n"."""
    lines = content.split(b"\r\n")[:-1] if content else []
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
    return b"".join(line + b"\r\n" for line in stuffed) + b".\r\n"


async def read_split(
    wire: bytes, split: int, limit: int | None
) -> tuple[bytes | None, bytes]:
    """``read_data`` on ``wire`` arriving in two pieces; (result, what is left)."""
    reader = asyncio.StreamReader(limit=STREAM_LIMIT)
    reading = asyncio.create_task(read_data(reader, limit))
    reader.feed_data(wire[:split])
    await asyncio.sleep(0)  # let the reader take the first piece alone
    reader.feed_data(wire[split:] + PIPELINED)
    reader.feed_eof()
    return await reading, await reader.read()


@pytest.mark.parametrize("name", MESSAGES)
def test_read_data_at_every_split(name: str) -> None:
    """The message comes back un-stuffed, and the pipelined command stays unread."""
    content = MESSAGES[name]
    wire = on_the_wire(content)
    for split in range(len(wire) + 1):
        got, left = asyncio.run(read_split(wire, split, None))
        assert (got, left) == (content, PIPELINED), split


def test_read_data_over_the_limit() -> None:
    """Over the limit (in wire bytes, as aiosmtpd counts): None, read to the end."""
    wire = on_the_wire(MESSAGES["dots"])
    size = len(wire) - len(b".\r\n")
    for split in range(len(wire) + 1):
        got, left = asyncio.run(read_split(wire, split, size - 1))
        assert (got, left) == (None, PIPELINED), split
    exact, _ = asyncio.run(read_split(wire, 0, size))
    assert exact == MESSAGES["dots"]


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A ProxySMTP server that records what it receives."""
    sink = Sink().start()
    yield sink
    sink.stop()


def test_parameters_do_not_leak_between_transactions(sink: Sink) -> None:
    """Each transaction on one connection keeps only its own RCPT parameters."""
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=30) as smtp:
        smtp.ehlo("postfix.example.test")
        smtp.docmd("XFORWARD", "ADDR=192.0.2.7 IDENT=FIRST")
        smtp.sendmail(
            "a@example.org", ["b@example.org"], b"x\r\n", [], ["NOTIFY=NEVER"]
        )
        smtp.sendmail("a@example.org", ["c@example.org"], b"y\r\n")

    first, second = sink.messages
    assert first.rcpt_params == [["NOTIFY=NEVER"]] and first.xforward["ADDR"]
    assert (second.rcpt_params, second.xforward) == ([[]], {})


def test_long_lines_and_dots_over_a_socket(sink: Sink) -> None:
    """A 100 kB line and dot-stuffed lines arrive intact, not answered with 500."""
    content = b"Subject: x\r\n\r\n" + b"z" * 100_000 + b"\r\n.\r\n..\r\nend\r\n"
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=30) as smtp:
        smtp.sendmail("a@example.org", ["b@example.org"], content)

    (got,) = sink.messages
    assert got.data == content


@pytest.mark.parametrize(
    "arg",
    [
        "<a@b.example>",
        "<Ann.Lee+tag@Mail.Example.ORG> SIZE=10 BODY=8BITMIME",
        "<a@b.example>  NOTIFY=NEVER",
        "<>",
        "<a..b@x.example>",
        '<"a b"@x.example> SIZE=1',
        "<björn@example.org> SMTPUTF8",
        "<a@[192.0.2.1]>",
        "a@b.example",
        "<@relay.example:a@b.example>",
    ],
)
def test_fast_address_parse_matches_aiosmtpd(arg: str) -> None:
    """The plain-path shortcut gives what aiosmtpd's own parser gives."""
    server = ProxySMTP(None)
    assert server._getaddr(arg) == SMTP._getaddr(server, arg)
