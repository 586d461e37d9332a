"""Test helpers: a realistic Postfix command stream, an MTA-side client, a handler."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from phishgate.milter import protocol as p
from phishgate.milter.actions import (
    MODIFICATIONS,
    Action,
    AddHeader,
    Continue,
    Quarantine,
)
from phishgate.milter.codec import (
    Abort,
    Body,
    Command,
    Connect,
    Data,
    EndOfHeaders,
    EndOfMessage,
    Header,
    Helo,
    Macro,
    Mail,
    OptNeg,
    Progress,
    Quit,
    Rcpt,
    Reply,
    ReplyDecoder,
    encode_command,
)
from phishgate.milter.envelope import Envelope
from phishgate.milter.handler import Handler
from phishgate.milter.session import Session

T = TypeVar("T")

DEADLINE = 10.0
"""Seconds any single test scenario may take before it fails."""

POSTFIX_OFFER = OptNeg(6, 0x1FF, 0x1FFFFF)
"""What Postfix 3.7 offers in SMFIC_OPTNEG (measured, postfix-lab README)."""

QUEUE_ID = "4Z1abc2DEF"

ADD_AND_HOLD: list[Action] = [
    AddHeader("X-Phishgate", "phish"),
    Quarantine("phish"),
    Continue(),
]
"""The reply phishgate sends for a phish: tag, hold, then the final CONTINUE."""


def connection_commands() -> list[Command]:
    """The start of a Postfix milter connection, up to HELO."""
    return [
        POSTFIX_OFFER,
        Macro(p.SMFIC_CONNECT, {"j": "mx.example.test", "{daemon_name}": "smtpd"}),
        Connect("client.example.test", p.SMFIA_INET, 41234, "192.0.2.1"),
        Macro(p.SMFIC_HELO, {"{tls_version}": "TLSv1.3"}),
        Helo("client.example.test"),
    ]


def message_commands(
    subject: str = "Hello", body: bytes = b"hello\r\n"
) -> list[Command]:
    """One message the way Postfix sends it, ending with its trailing ABORT."""
    return [
        Macro(p.SMFIC_MAIL, {"{auth_authen}": "alice", "{auth_type}": "PLAIN"}),
        Mail(("<alice@example.test>", "SIZE=1234", "BODY=8BITMIME")),
        Macro(p.SMFIC_RCPT, {"{rcpt_addr}": "bob@example.test"}),
        Rcpt(("<bob@example.test>",)),
        Macro(p.SMFIC_RCPT, {"i": QUEUE_ID, "{rcpt_addr}": "carol@example.test"}),
        Rcpt(("<carol@example.test>", "NOTIFY=NEVER")),
        Macro(p.SMFIC_DATA, {"i": QUEUE_ID}),
        Data(),
        Header("From", "Alice <alice@example.test>"),
        Header("Subject", subject),
        Header("Message-ID", "<m1@example.test>"),
        EndOfHeaders(),
        Body(body),
        Body(b"second chunk\r\n"),
        Macro(p.SMFIC_BODYEOB, {"i": QUEUE_ID}),
        EndOfMessage(),
        Abort(),
    ]


def postfix_session() -> list[Command]:
    """A whole connection: two messages, then QUIT."""
    second = message_commands("Second", b"more\r\n")
    return connection_commands() + message_commands() + second + [Quit()]


async def within_deadline(coro: Awaitable[T], seconds: float = DEADLINE) -> T:
    """Await ``coro`` or fail the test when the deadline passes."""
    return await asyncio.wait_for(coro, seconds)


async def eventually(condition: Callable[[], bool], seconds: float = DEADLINE) -> None:
    """Poll ``condition`` on the event loop until it holds; fail at the deadline."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await within_deadline(poll(), seconds)


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    """Run an async test scenario under the global deadline."""

    async def bounded() -> T:
        return await within_deadline(scenario())

    return asyncio.run(bounded())


class RecordingHandler(Handler):
    """Returns fixed actions and records what the session reported."""

    def __init__(self, actions: Sequence[Action] = (Continue(),)) -> None:
        self.actions = list(actions)
        self.envelopes: list[Envelope] = []
        self.aborted: list[Envelope] = []
        self.closed: list[Session] = []
        self.error: Exception | None = None

    async def end_of_message(
        self, session: Session, envelope: Envelope
    ) -> Sequence[Action]:
        """Record the envelope; raise ``error`` if one is set."""
        self.envelopes.append(envelope)
        if self.error is not None:
            raise self.error
        return self.actions

    async def abort(self, session: Session, envelope: Envelope) -> None:
        """Record the aborted envelope."""
        self.aborted.append(envelope)

    async def close(self, session: Session) -> None:
        """Record the closed session."""
        self.closed.append(session)


class MtaClient:
    """The MTA side of a milter connection, over a real socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self._decoder = ReplyDecoder()
        self._replies: list[Reply] = []

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> MtaClient:
        """Open a TCP connection to a milter."""
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    @classmethod
    async def connect_unix(cls, path: str) -> MtaClient:
        """Open a unix-socket connection to a milter."""
        reader, writer = await asyncio.open_unix_connection(path)
        return cls(reader, writer)

    async def send(self, *commands: Command) -> None:
        """Write commands without waiting for replies."""
        self.writer.write(b"".join(encode_command(c) for c in commands))
        await self.writer.drain()

    async def send_raw(self, data: bytes) -> None:
        """Write arbitrary bytes."""
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self) -> Reply:
        """The next reply; fails on EOF."""
        while not self._replies:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("milter closed the connection")
            self._replies.extend(self._decoder.feed(data))
        return self._replies.pop(0)

    async def replies_until_final(self, *, skip_progress: bool = True) -> list[Reply]:
        """Replies up to and including the next final one (or OPTNEG reply)."""
        replies: list[Reply] = []
        while True:
            reply = await self.reply()
            if isinstance(reply, Progress) and skip_progress:
                continue
            replies.append(reply)
            if not _is_modification(reply):
                return replies

    async def wait_closed_by_peer(self) -> bytes:
        """Read until EOF; return whatever came before it."""
        return await self.reader.read()

    async def close(self) -> None:
        """Close our side."""
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def _is_modification(reply: Reply) -> bool:
    return isinstance(reply, MODIFICATIONS)
