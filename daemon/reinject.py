"""The proxy's way back into Postfix: a small pipelining SMTP client.

Every message the proxy passes on is one transaction on a session to the
re-injection smtpd (``[proxy] reinject``). The client is written for that
one job, which is on every message's path:

* RFC 2920 PIPELINING: XFORWARD, MAIL, every RCPT and DATA go out in one
  write, the message in a second: two round trips per message, where one
  reply per command took six (with the RSET that probed a reused session).
* The message is dot-stuffed with two ``bytes.replace`` calls; line ends are
  normalised only when the message has a bare CR or LF (a bare LF before a
  "." could end the data early at a lenient server).
* Sessions are reused between messages as smtp(8) caches them, and a
  session the server closed while idle is replaced before anything is sent.

Parsers here do no I/O (:func:`parse_ehlo`, :func:`dot_stuff`); the session
reads and writes an asyncio stream.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "ReinjectError",
    "ReinjectSession",
    "ReinjectSessions",
    "Transaction",
    "dot_stuff",
    "parse_ehlo",
]

REINJECT_MAX_IDLE = 16
"""Idle re-injection sessions kept (Postfix's scan transport opens up to 10)."""
REINJECT_IDLE_S = 2.0
"""Idle sessions are closed after this, as smtp_connection_cache_time_limit."""
REINJECT_REUSE_S = 10.0
"""Sessions are not reused past this age (smtp_connection_reuse_time_limit)."""
READY_220 = 220  # RFC 5321 4.2.3: service ready
CLOSING_421 = 421  # RFC 5321 3.8: the server is closing the session
START_MAIL_354 = 354  # RFC 5321 4.2.3: start mail input
CLIENT_NAME = "phishgate.localhost"
"""Our EHLO name towards the re-injection smtpd."""
MAX_REPLY_LINES = 100
"""More lines than any real reply has; a server sending more is broken."""
_END_OF_DATA = b".\r\n"
_BARE_LINE_END = re.compile(rb"\r\n|\r|\n")
_NEEDS = {
    "SIZE": "SIZE",
    "BODY": "8BITMIME",
    "SMTPUTF8": "SMTPUTF8",
    "RET": "DSN",
    "ENVID": "DSN",
}
"""MAIL FROM parameter -> the EHLO keyword the server must offer for it."""


class ReinjectError(Exception):
    """Postfix's re-injection smtpd refused the message or could not be reached."""

    def __init__(self, why: str, *, unreachable: bool = False) -> None:
        super().__init__(why)
        self.unreachable = unreachable
        """No session could be opened: later groups need not try."""


class _Gone(ReinjectError):
    """The server closed the session before it answered anything."""


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: its code and its text lines joined by spaces."""

    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


@dataclass(frozen=True)
class Transaction:
    """What one re-injection sends: the envelope and the message."""

    mail_from: str
    rcpts: Sequence[tuple[str, Sequence[str]]]
    """(address, RCPT parameters) in RCPT order."""
    message: bytes
    mail_params: Sequence[str] = ()
    xforward: dict[str, str] = field(default_factory=dict)


def parse_ehlo(lines: Sequence[str]) -> dict[str, str]:
    """EHLO reply lines (after the code) -> {KEYWORD: parameters}."""
    extensions = {}
    for line in lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        extensions[keyword.upper()] = params
    return extensions


def dot_stuff(message: bytes) -> bytes:
    """The DATA bytes for ``message``: CRLF lines, dot-stuffed, ".\\r\\n" last.

    RFC 5321 4.5.2. Bare CR and LF become CRLF (checked by counting first,
    so a message that is already clean is not rewritten line by line).
    """
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = _BARE_LINE_END.sub(b"\r\n", message)
    if message.startswith(b"."):
        message = b"." + message
    message = message.replace(b"\r\n.", b"\r\n..")
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message + _END_OF_DATA


class ReinjectSession:
    """One SMTP session to the re-injection smtpd, after EHLO."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        extensions: dict[str, str],
        timeout_s: float,
    ) -> None:
        self.reader, self.writer = reader, writer
        self.extensions = extensions
        self.timeout_s = timeout_s
        self.opened = time.monotonic()

    @classmethod
    async def open(cls, host: str, port: int, timeout_s: float) -> ReinjectSession:
        """Connect, read the greeting and EHLO; ReinjectError(unreachable) if not."""
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(host, port)
                session = cls(reader, writer, {}, timeout_s)
                try:
                    await session._handshake()
                except BaseException:
                    session.close()
                    raise
        except (OSError, TimeoutError, ReinjectError) as exc:
            raise ReinjectError(str(exc) or repr(exc), unreachable=True) from exc
        return session

    async def _handshake(self) -> None:
        greeting = await self._reply()
        if greeting.code != READY_220:
            raise ReinjectError(f"greeting {greeting}")
        self.writer.write(f"EHLO {CLIENT_NAME}\r\n".encode())
        lines = await self._reply_lines()
        if lines[0][:3] != "250":
            raise ReinjectError(f"EHLO: {' '.join(lines)}")
        self.extensions = parse_ehlo([line[4:] for line in lines])

    @property
    def usable(self) -> bool:
        """Still connected as far as we know without asking the server."""
        return not self.writer.is_closing() and not self.reader.at_eof()

    def supports(self, keyword: str) -> bool:
        return keyword.upper() in self.extensions

    async def send(self, tx: Transaction, partial: bool) -> dict[int, str]:
        """One transaction; the recipients refused (RCPT index -> reply).

        Refused recipients are returned only with ``partial`` and when some
        recipient was taken; otherwise a refusal raises ReinjectError and no
        message is sent. After any exception the session must be closed.
        """
        pipelining = self.supports("PIPELINING")
        commands = self._commands(tx)
        async with asyncio.timeout(self.timeout_s):
            if pipelining:
                self.writer.write(b"".join(commands) + b"DATA\r\n")
                replies = [await self._first_reply()]
                replies += [await self._reply() for _ in commands[1:]]
            else:
                replies = await self._one_by_one(commands)
            refused = _check(replies, tx, partial)
            start = await self._reply() if pipelining else await self._command(b"DATA")
            if start.code != START_MAIL_354:
                raise ReinjectError(f"DATA: {start}")
        async with asyncio.timeout(self.timeout_s):
            self.writer.write(dot_stuff(tx.message))
            await self.writer.drain()
            done = await self._reply()
        if done.code // 100 != 2:
            raise ReinjectError(f"end of data: {done}")
        return refused

    def _commands(self, tx: Transaction) -> list[bytes]:
        params = [p for p in tx.mail_params if self._offers(p)]
        params = [f"SIZE={len(tx.message)}" if _key(p) == "SIZE" else p for p in params]
        # RFC 6531: a UTF-8 envelope goes on the wire as UTF-8 under SMTPUTF8.
        utf8 = any(_key(p) == "SMTPUTF8" for p in params)
        commands = []
        if tx.xforward and self.supports("XFORWARD"):
            attrs = " ".join(f"{k}={v}" for k, v in tx.xforward.items())
            commands.append(f"XFORWARD {attrs}")
        commands.append(" ".join([f"MAIL FROM:<{tx.mail_from}>", *params]))
        dsn = self.supports("DSN")
        for address, rcpt_params in tx.rcpts:
            commands.append(
                " ".join([f"RCPT TO:<{address}>", *(rcpt_params if dsn else [])])
            )
        try:
            return [(c + "\r\n").encode("utf-8" if utf8 else "ascii") for c in commands]
        except UnicodeEncodeError as exc:
            raise ReinjectError(f"non-ASCII envelope without SMTPUTF8: {exc}") from exc

    def _offers(self, param: str) -> bool:
        key = _key(param)
        return self.supports(_NEEDS.get(key, key))

    async def _one_by_one(self, commands: list[bytes]) -> list[Reply]:
        replies = [await self._command(commands[0], first=True)]
        return replies + [await self._command(c) for c in commands[1:]]

    async def _command(self, command: bytes, first: bool = False) -> Reply:
        self.writer.write(command if command.endswith(b"\n") else command + b"\r\n")
        return await (self._first_reply() if first else self._reply())

    async def _first_reply(self) -> Reply:
        """The first reply of a transaction: _Gone if the server hung up idle."""
        try:
            reply = await self._reply()
        except (ReinjectError, ConnectionError) as exc:
            raise _Gone(str(exc) or repr(exc)) from exc
        if reply.code == CLOSING_421:  # it said so before it hung up
            raise _Gone(str(reply))
        return reply

    async def _reply(self) -> Reply:
        lines = await self._reply_lines()
        return Reply(int(lines[0][:3]), " ".join(line[4:] for line in lines))

    async def _reply_lines(self) -> list[str]:
        lines: list[str] = []
        while len(lines) < MAX_REPLY_LINES:
            raw = await self.reader.readline()
            if not raw.endswith(b"\n"):
                raise ReinjectError("connection closed by the server")
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            if len(line) < 3 or not line[:3].isdigit():
                raise ReinjectError(f"not an SMTP reply: {line[:80]!r}")
            lines.append(line)
            if line[3:4] != "-":
                return lines
        raise ReinjectError("reply too long")

    async def quit(self) -> None:
        """QUIT and close, without caring how the server answers."""
        try:
            async with asyncio.timeout(self.timeout_s):
                self.writer.write(b"QUIT\r\n")
                await self._reply()
        except (ReinjectError, OSError, TimeoutError):
            pass
        self.close()

    def close(self) -> None:
        self.writer.close()


def _key(param: str) -> str:
    return param.partition("=")[0].upper()


def _check(replies: list[Reply], tx: Transaction, partial: bool) -> dict[int, str]:
    """Refused recipients, or ReinjectError when the transaction cannot go on."""
    *head, mail = replies[: len(replies) - len(tx.rcpts)]
    for reply in (*head, mail):
        if reply.code // 100 != 2:
            raise ReinjectError(f"{reply}")
    rcpt_replies = replies[len(replies) - len(tx.rcpts) :]
    refused = {i: str(r) for i, r in enumerate(rcpt_replies) if r.code // 100 != 2}
    if refused and (not partial or len(refused) == len(tx.rcpts)):
        raise ReinjectError(f"recipients refused: {'; '.join(refused.values())}")
    return refused


class ReinjectSessions:
    """Sessions to the re-injection smtpd, reused between messages.

    A new connection costs the greeting and EHLO round trips on every
    message; Postfix's own smtp(8) caches sessions for the same reason, and
    with the same limits: a session goes back only after a complete
    transaction, it is closed when idle for ``idle_s`` or older than
    ``reuse_s``. A session the server closed is replaced before the message
    is sent (it is seen closed, or it fails before its first reply). Each
    open session holds one of the re-injection smtpd's processes
    (``maxproc``); the age limit lets anybody else waiting for one
    (``phishgate quarantine release``) in.
    """

    def __init__(
        self,
        address: tuple[str, int],
        timeout_s: float,
        max_idle: int = REINJECT_MAX_IDLE,
        idle_s: float = REINJECT_IDLE_S,
        reuse_s: float = REINJECT_REUSE_S,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.max_idle = max_idle
        self.idle_s = idle_s
        self.reuse_s = reuse_s
        self._idle: list[tuple[ReinjectSession, float]] = []
        self._expiry: asyncio.TimerHandle | None = None
        self._quitting: set[asyncio.Task[None]] = set()

    async def send(self, tx: Transaction, partial: bool) -> dict[int, str]:
        """Send ``tx`` on a cached or new session; see ReinjectSession.send."""
        while True:
            session, reused = await self._take()
            try:
                refused = await session.send(tx, partial)
            except _Gone:
                session.close()
                if reused:
                    continue  # nothing reached the server: a new session may
                raise
            except ReinjectError:
                session.close()
                raise
            except TimeoutError as exc:
                session.close()
                raise ReinjectError(f"no reply within {self.timeout_s:g} s") from exc
            except OSError as exc:
                session.close()
                raise ReinjectError(str(exc) or repr(exc)) from exc
            except BaseException:
                session.close()
                raise
            self._give_back(session)
            return refused

    async def _take(self) -> tuple[ReinjectSession, bool]:
        while self._idle:
            session, _ = self._idle.pop()
            if session.usable:
                return session, True
            session.close()
        host, port = self.address
        return await ReinjectSession.open(host, port, self.timeout_s), False

    def _give_back(self, session: ReinjectSession) -> None:
        """Keep a session after a complete transaction, within the limits."""
        now = time.monotonic()
        young = now - session.opened < self.reuse_s
        if young and len(self._idle) < self.max_idle and session.usable:
            self._idle.append((session, now))
            self._schedule_expiry()
        else:
            self._quit(session)

    def close(self) -> None:
        """Close every idle session (at shutdown)."""
        if self._expiry is not None:
            self._expiry.cancel()
        while self._idle:
            self._idle.pop()[0].close()

    def _schedule_expiry(self) -> None:
        if self._expiry is None:
            loop = asyncio.get_running_loop()
            self._expiry = loop.call_later(self.idle_s, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        now = time.monotonic()
        stale = [s for s, since in self._idle if now - since >= self.idle_s]
        self._idle = [(s, t) for s, t in self._idle if now - t < self.idle_s]
        for session in stale:
            self._quit(session)
        if self._idle:
            self._schedule_expiry()

    def _quit(self, session: ReinjectSession) -> None:
        """QUIT in the background (no reply is waited for on the mail path)."""
        task = asyncio.get_running_loop().create_task(session.quit())
        self._quitting.add(task)
        task.add_done_callback(self._quitting.discard)
