"""An SMTP sink for tests: records every transaction, DSN parameters included.

Built on the proxy's own aiosmtpd subclass, so it offers DSN and XFORWARD
and keeps MAIL/RCPT parameters in their original case.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from phishgate.daemon.proxy import ProxyHandler, ProxySMTP


@dataclass
class Received:
    """One transaction as the sink saw it."""

    mail_from: str
    rcpt_tos: list[str]
    mail_params: list[str]
    rcpt_params: list[list[str]]
    xforward: dict[str, str]
    data: bytes


@dataclass
class SinkHandler:
    messages: list[Received] = field(default_factory=list)
    reply: str = "250 2.0.0 Ok: queued"
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    """Recipient -> the refusal its RCPT gets (others get 250)."""
    data_replies: dict[str, str] = field(default_factory=dict)
    """Recipient -> the reply to DATA of any transaction that names it."""

    offer_extensions: bool = True
    """DSN, XFORWARD and PIPELINING in the EHLO reply, as the proxy offers them."""

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        if self.offer_extensions:
            return await ProxyHandler.handle_EHLO(
                self,  # type: ignore[arg-type]  # it uses nothing of its handler
                server,
                session,
                envelope,
                hostname,
                responses,
            )
        session.host_name = hostname
        return responses

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        refusal = [
            self.data_replies[r] for r in envelope.rcpt_tos if r in self.data_replies
        ]
        if refusal:
            return refusal[0]
        extras: Any = getattr(server, "extras")  # noqa: B009  # set by ProxySMTP
        self.messages.append(
            Received(
                envelope.mail_from or "",
                list(envelope.rcpt_tos),
                list(extras.mail_params),
                [list(p) for p in extras.rcpt_params],
                dict(extras.xforward),
                envelope.original_content or b"",
            )
        )
        return self.reply


class Sink:
    """A sink on 127.0.0.1 running in its own thread and event loop."""

    def __init__(self, port: int = 0) -> None:
        self.handler = SinkHandler()
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._sessions: list[ProxySMTP] = []

    def start(self) -> Sink:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(10)
        return self

    async def _start(self) -> None:
        def factory() -> ProxySMTP:
            session = ProxySMTP(self.handler, enable_SMTPUTF8=True, decode_data=False)
            self._sessions.append(session)
            return session

        self._server = await self._loop.create_server(factory, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def drop_sessions(self) -> None:
        """Close every open session from the server side (as a restart does)."""

        async def drop() -> None:
            for session in self._sessions:
                if session.transport is not None:
                    session.transport.close()

        asyncio.run_coroutine_threadsafe(drop(), self._loop).result(10)

    def stop(self) -> None:
        """Stop serving; a second call does nothing."""
        if not self._thread.is_alive():
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
            # Clients may keep sessions open (the proxy reuses them): end those
            # too, so no session task is left pending when the loop stops.
            for session in self._sessions:
                if session.transport is not None:
                    session.transport.close()
            others = asyncio.all_tasks() - {asyncio.current_task()}
            if others:
                await asyncio.wait(others, timeout=10)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages
