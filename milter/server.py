"""The milter listener: one asyncio task per MTA connection.

Lifecycle: :meth:`MilterServer.start` binds and listens; :meth:`~MilterServer.close`
stops accepting and lets each connection finish the message it is in;
:meth:`~MilterServer.wait_closed` waits for that with a deadline and cancels
what is left. A broken or hostile connection is logged and closed on its own;
the listener and the other connections carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import stat
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from .codec import Command, Decoder, EndOfMessage, ProtocolError, encode_progress
from .handler import Handler
from .options import MilterOptions
from .session import Session

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
DEFAULT_SOCKET_MODE = 0o660
_CLOSE_TIMEOUT = 5.0
"""Seconds to wait for a socket to close after the connection is done."""


# -- Listen address -----------------------------------------------------------


@dataclass(frozen=True)
class ListenSpec:
    """Where to listen, parsed from a Postfix-style milter address."""

    kind: Literal["inet", "inet6", "unix"]
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "inet6":
            return f"inet6:[{self.host}]:{self.port}"
        return f"inet:{self.host}:{self.port}"


def parse_listen_spec(spec: str) -> ListenSpec:
    """Parse ``inet:HOST:PORT``, ``inet6:[HOST]:PORT``, ``unix:/path``.

    Sendmail's ``inet:PORT@HOST`` form and ``local:/path`` are accepted too.
    Port 0 picks a free port. Raises ValueError naming the problem.
    """
    kind, colon, rest = spec.partition(":")
    kind = kind.lower()
    if not colon or not rest:
        raise ValueError(f"milter address {spec!r}: expected KIND:ADDRESS")
    if kind in ("unix", "local"):
        return ListenSpec("unix", path=rest)
    if kind in ("inet", "inet6"):
        host, port = _host_and_port(spec, rest)
        return ListenSpec("inet6" if kind == "inet6" else "inet", host, port)
    raise ValueError(f"milter address {spec!r}: kind must be inet, inet6 or unix")


def _host_and_port(spec: str, rest: str) -> tuple[str, int]:
    if "@" in rest:
        port_text, _, host = rest.partition("@")
    elif rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port_text = tail.removeprefix(":")
    else:
        host, _, port_text = rest.rpartition(":")
    if not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"milter address {spec!r}: expected HOST:PORT")
    return host, int(port_text)


# -- One connection -----------------------------------------------------------


class _Marker(enum.Enum):
    END = "end"
    """The reader is done: the MTA closed the socket or sent garbage."""
    STOP = "stop"
    """The server is shutting down."""


class _PeerGone(Exception):
    """The MTA closed the connection while a handler was running."""

    def __init__(self, queue_id: str | None) -> None:
        super().__init__(queue_id)
        self.queue_id = queue_id


class _Connection:
    """Reads commands, feeds the session, writes its replies."""

    def __init__(
        self,
        session: Session,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.session = session
        self._reader = reader
        self._writer = writer
        self._decoder = Decoder(session.options.max_packet_bytes)
        # One item per read: the commands it completed (a message's steps
        # usually arrive together), or a marker.
        self._commands: asyncio.Queue[list[Command] | _Marker] = asyncio.Queue()
        self._read_error: Exception | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._stopping = False

    def stop(self) -> None:
        """Close after the current message, or now if between messages."""
        self._stopping = True
        self._commands.put_nowait(_Marker.STOP)

    async def run(self) -> None:
        """Serve until QUIT, EOF, a protocol error or shutdown; never raises."""
        peer = self.session.peer
        log.debug("milter connection %s from %s", self.session.id, peer)
        self._reader_task = asyncio.create_task(self._read())
        try:
            await self._serve()
        except ProtocolError as exc:
            log.warning("milter connection from %s: protocol error: %s", peer, exc)
        except _PeerGone as gone:
            log.warning(
                "milter connection from %s closed by the MTA during end of message,"
                " queue id %s; handler cancelled",
                peer,
                gone.queue_id,
            )
        except ConnectionError as exc:
            log.warning("milter connection from %s failed: %s", peer, exc)
        except Exception:
            log.exception("milter connection from %s: internal error", peer)
        finally:
            await self._finish()

    def _queue_id(self) -> str | None:
        envelope = self.session.envelope
        return envelope.queue_id if envelope else None

    async def _read(self) -> None:
        try:
            while data := await self._reader.read(READ_SIZE):
                if commands := self._decoder.feed(data):
                    self._commands.put_nowait(commands)
        except Exception as exc:  # re-raised by _serve() after queued commands
            self._read_error = exc
        finally:
            self._commands.put_nowait(_Marker.END)

    async def _serve(self) -> None:
        while True:
            item = await self._commands.get()
            if item is _Marker.END:
                break
            if item is _Marker.STOP:
                if self.session.in_message:
                    continue
                return
            if await self._apply(item):
                return
        if self._read_error is not None:
            raise self._read_error

    async def _apply(self, commands: list[Command]) -> bool:
        """Apply commands in order, replies in order; True if the connection ends.

        Steps that call no handler hook are applied without a pause, and
        their replies (usually none) go out together.
        """
        replies = b""
        for command in commands:
            reply = self.session.handle_now(command)
            if reply is None:
                await self._send(replies)
                replies = await self._dispatch(command)
            else:
                replies += reply
            if self.session.closed or (self._stopping and not self.session.in_message):
                await self._send(replies)
                return True
        await self._send(replies)
        return False

    async def _send(self, packets: bytes) -> None:
        if packets:
            self._writer.write(packets)
            await self._writer.drain()

    async def _dispatch(self, command: Command) -> bytes:
        if not isinstance(command, EndOfMessage):
            return await self.session.handle(command)
        task = asyncio.create_task(self.session.handle(command))
        try:
            return await self._watch(task)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})

    async def _watch(self, task: asyncio.Task[bytes]) -> bytes:
        """Wait for the end-of-message task, sending progress, minding the peer."""
        assert self._reader_task is not None  # set in run()
        watched = {task, self._reader_task}
        interval = self.session.options.progress_interval
        while True:
            done, _ = await asyncio.wait(
                watched, timeout=interval, return_when=asyncio.FIRST_COMPLETED
            )
            if task in done:
                return task.result()
            if done:
                raise _PeerGone(self._queue_id())
            await self._send(encode_progress())

    async def _finish(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.wait({self._reader_task})
        await self.session.close()
        self._writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), _CLOSE_TIMEOUT)
        log.debug("milter connection %s closed", self.session.id)


# -- The server ---------------------------------------------------------------


class MilterServer:
    """Listens on one address and runs a :class:`Session` per MTA connection."""

    def __init__(
        self,
        spec: str | ListenSpec,
        handler: Handler,
        options: MilterOptions | None = None,
        *,
        socket_mode: int = DEFAULT_SOCKET_MODE,
    ) -> None:
        self.spec = parse_listen_spec(spec) if isinstance(spec, str) else spec
        self.options = options or MilterOptions()
        self._handler = handler
        self._socket_mode = socket_mode
        self._server: asyncio.Server | None = None
        self._connections: dict[_Connection, asyncio.Task[None]] = {}
        self._closing = False

    async def start(self) -> None:
        """Bind and start accepting; returns once listening."""
        if self._server is not None:
            raise RuntimeError("milter server already started")
        if self.spec.kind == "unix":
            self._server = await self._start_unix()
        else:
            self._server = await asyncio.start_server(
                self._accept, self.spec.host, self.spec.port
            )
        log.info("milter listening on %s", self.address)

    async def _start_unix(self) -> asyncio.Server:
        path = self.spec.path
        _remove_stale_socket(path)
        server = await asyncio.start_unix_server(self._accept, path)
        os.chmod(path, self._socket_mode)
        return server

    @property
    def address(self) -> str:
        """The bound address in Postfix notation (with the real port)."""
        if self._server is None or self.spec.kind == "unix":
            return str(self.spec)
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(ListenSpec(self.spec.kind, host, port))

    @property
    def port(self) -> int:
        """The bound TCP port (0 for a unix socket or before start)."""
        if self._server is None or self.spec.kind == "unix":
            return 0
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def connections(self) -> int:
        """MTA connections open now."""
        return len(self._connections)

    @property
    def in_flight_messages(self) -> int:
        """Messages begun (MAIL FROM seen) but not yet ended or aborted."""
        return sum(1 for conn in self._connections if conn.session.in_message)

    def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._closing:
            writer.close()
            return
        session = Session(self._handler, self.options, peer=_peer_name(writer))
        connection = _Connection(session, reader, writer)
        task = asyncio.create_task(connection.run())
        self._connections[connection] = task
        task.add_done_callback(lambda _: self._connections.pop(connection, None))

    def close(self) -> None:
        """Stop accepting; idle connections close now, busy ones after their message."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for connection in self._connections:
            connection.stop()

    async def wait_closed(self, timeout: float | None = None) -> int:
        """Wait for connections to finish; after ``timeout`` s cancel the rest.

        Returns how many connections had to be cancelled.
        """
        self.close()
        tasks = set(self._connections.values())
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("milter shutdown: cancelled %s connections", len(pending))
            await asyncio.wait(pending)
        await self._close_listener()
        return len(pending)

    async def _close_listener(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()
        if self.spec.kind == "unix":
            _remove_stale_socket(self.spec.path)

    async def __aenter__(self) -> MilterServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.wait_closed(_CLOSE_TIMEOUT)


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "unix"


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by an earlier run; refuse to remove other files."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    os.unlink(path)
