"""The SMTP proxy front door: Postfix's after-queue content filter.

Postfix hands every message over SMTP (``content_filter = scan:[127.0.0.1]:10025``);
the proxy scans it through the same pipeline as the milter and re-injects it
into Postfix's second smtpd (``127.0.0.1:10026``). Rules that keep mail safe:

* ``250`` only after the message was re-injected or durably quarantined;
  ``451`` on any failure (re-injection refused or timed out, internal
  error), so Postfix keeps the message queued and retries.
* Never ``5xx`` after the queue: a bounce would go to a possibly forged
  sender. ``reject`` becomes quarantine here.
* The envelope passes through unchanged: MAIL FROM parameters (SIZE, BODY,
  SMTPUTF8, RET, ENVID) and each RCPT's NOTIFY/ORCPT, in their original
  case. ``XFORWARD`` is offered so Postfix passes the original client, and
  passed on to the re-injection smtpd.
* Recipients whose domains get different actions are split: each group is
  delivered (or held) in its own transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

from .headers import rewrite_headers
from .pipeline import HEADER_PREFIX, Decision, MessageEnvelope, Pipeline
from .policy import SEVERITY
from .quarantine import QuarantineStore, store_decision

__all__ = ["ProxySMTP", "ProxyServer"]

log = logging.getLogger(__name__)

# RFC 5321 4.2.2 / RFC 3463 status codes used here.
OK_250 = "250 2.0.0 Ok: {what}"
TEMPFAIL_451 = "451 4.3.0 Error: {why}, try again later"
XFORWARD_ATTRS = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
_MAIL_PASS_THROUGH = ("RET=", "ENVID=")


@dataclass
class _Extras:
    """What aiosmtpd does not keep: XFORWARD and raw ESMTP parameters."""

    xforward: dict[str, str] = field(default_factory=dict)
    mail_params: list[str] = field(default_factory=list)
    rcpt_params: list[list[str]] = field(default_factory=list)


def _split_params(arg: str) -> tuple[str, list[str]]:
    """Split ``FROM:<a@b> SIZE=1 RET=HDRS`` into the address part and parameters."""
    end = arg.find(">")
    if end < 0:
        head, _, rest = arg.partition(" ")
        return head, rest.split()
    return arg[: end + 1], arg[end + 1 :].split()


class ProxySMTP(SMTP):
    """aiosmtpd's server, plus XFORWARD and pass-through DSN parameters."""

    extras: _Extras

    def _set_rset_state(self) -> None:
        super()._set_rset_state()  # type: ignore[no-untyped-call]  # aiosmtpd is untyped here
        xforward = getattr(self, "extras", _Extras()).xforward
        self.extras = _Extras(xforward=xforward)

    async def smtp_XFORWARD(self, arg: str) -> None:
        for item in arg.split():
            key, _, value = item.partition("=")
            if key.upper() in XFORWARD_ATTRS:
                self.extras.xforward[key.upper()] = value
        await self.push("250 2.0.0 Ok")

    async def smtp_MAIL(self, arg: str) -> None:
        head, params = _split_params(arg or "")
        keep = [p for p in params if not p.upper().startswith(_MAIL_PASS_THROUGH)]
        before = self.envelope.mail_from if self.envelope else None
        await super().smtp_MAIL(" ".join([head, *keep]))
        if (
            self.envelope is not None
            and self.envelope.mail_from is not None
            and before is None
        ):
            self.extras.mail_params = params

    async def smtp_RCPT(self, arg: str) -> None:
        head, params = _split_params(arg or "")
        count = len(self.envelope.rcpt_tos) if self.envelope else 0
        await super().smtp_RCPT(head)
        if self.envelope is not None and len(self.envelope.rcpt_tos) > count:
            self.extras.rcpt_params.append(params)


class ProxyHandler:
    """aiosmtpd handler: scan, then re-inject or quarantine."""

    def __init__(
        self,
        pipeline: Callable[[], Pipeline],
        reinject: tuple[str, int],
        store: Callable[[], QuarantineStore | None],
        timeout_s: float = 60.0,
    ) -> None:
        self.pipeline = pipeline
        self.reinject = reinject
        self.store = store
        self.timeout_s = timeout_s

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        extra = [
            "250-DSN",
            "250-XFORWARD " + " ".join(XFORWARD_ATTRS),
            "250-PIPELINING",
        ]
        return [responses[0], *extra, *responses[1:]]

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        extras: _Extras = getattr(server, "extras", _Extras())
        raw = envelope.original_content or b""
        msg_env = _message_envelope(session, envelope, extras)
        try:
            return await self._handle(msg_env, raw, envelope, extras)
        except Exception:  # never lose mail to our own bug: Postfix retries
            log.exception("queue_id=%s: proxy error", msg_env.queue_id or "-")
            return TEMPFAIL_451.format(why="internal error")

    async def _handle(
        self, msg_env: MessageEnvelope, raw: bytes, envelope: Envelope, extras: _Extras
    ) -> str:
        decision = await self.pipeline().inspect(msg_env, raw)
        if decision.action == "tempfail":
            return TEMPFAIL_451.format(why="scan failed")
        groups = _recipient_groups(decision, envelope.rcpt_tos, extras)
        done = []
        for action, rcpts in groups.items():
            done.append(
                await self._deliver_group(action, rcpts, msg_env, raw, decision, extras)
            )
        return OK_250.format(what="; ".join(done))

    async def _deliver_group(
        self,
        action: str,
        rcpts: list[tuple[str, list[str]]],
        msg_env: MessageEnvelope,
        raw: bytes,
        decision: Decision,
        extras: _Extras,
    ) -> str:
        if action in ("quarantine", "reject"):
            return await self._quarantine(raw, msg_env, decision, [r for r, _ in rcpts])
        tag = decision.subject_tag if action == "tag" else ""
        message = rewrite_headers(raw, _with_action(decision.headers, action), tag)
        await self._reinject(message, msg_env, rcpts, extras)
        return f"{action} {len(rcpts)}"

    async def _quarantine(
        self,
        raw: bytes,
        msg_env: MessageEnvelope,
        decision: Decision,
        rcpts: list[str],
    ) -> str:
        store = self.store()
        if store is None:
            raise RuntimeError("quarantine needed but no store configured")
        entry = await asyncio.get_running_loop().run_in_executor(
            None, store_decision, store, msg_env, raw, decision, tuple(rcpts)
        )
        log.info("queue_id=%s: quarantined as %s", msg_env.queue_id or "-", entry)
        return f"quarantined {entry}"

    async def _reinject(
        self,
        message: bytes,
        msg_env: MessageEnvelope,
        rcpts: list[tuple[str, list[str]]],
        extras: _Extras,
    ) -> None:
        host, port = self.reinject
        client = aiosmtplib.SMTP(
            hostname=host, port=port, timeout=self.timeout_s, start_tls=False
        )
        await client.connect()
        try:
            await client.ehlo()
            if extras.xforward and client.supports_extension("xforward"):
                attrs = " ".join(f"{k}={v}" for k, v in extras.xforward.items())
                await _expect(client, f"XFORWARD {attrs}")
            mail_options = [p for p in extras.mail_params if _supported(client, p)]
            await client.mail(msg_env.mail_from, options=mail_options)
            for rcpt, params in rcpts:
                await client.rcpt(
                    rcpt,
                    options=[p for p in params if client.supports_extension("dsn")],
                )
            await client.data(message)
        finally:
            try:
                await client.quit()
            except aiosmtplib.SMTPException:
                client.close()


def _with_action(
    headers: tuple[tuple[str, str], ...], action: str
) -> tuple[tuple[str, str], ...]:
    """The verdict header names this recipient group's action."""
    out = []
    for name, value in headers:
        if name == HEADER_PREFIX + "Verdict":
            value = value.split(" action=", 1)[0] + f" action={action}"
        out.append((name, value))
    return tuple(out)


async def _expect(client: aiosmtplib.SMTP, command: str) -> None:
    response = await client.execute_command(command.encode())
    if response.code >= 400:
        raise aiosmtplib.SMTPResponseException(response.code, response.message)


def _supported(client: aiosmtplib.SMTP, param: str) -> bool:
    key = param.split("=", 1)[0].upper()
    needs = {
        "SIZE": "size",
        "BODY": "8bitmime",
        "SMTPUTF8": "smtputf8",
        "RET": "dsn",
        "ENVID": "dsn",
    }
    return client.supports_extension(needs.get(key, key.lower()))


def _message_envelope(
    session: Session, envelope: Envelope, extras: _Extras
) -> MessageEnvelope:
    xf = extras.xforward
    return MessageEnvelope(
        front_door="proxy",
        queue_id=xf.get("IDENT", ""),
        client_addr=xf.get("ADDR", "") or (session.peer[0] if session.peer else ""),
        client_name=xf.get("NAME", ""),
        helo=xf.get("HELO", session.host_name or ""),
        mail_from=envelope.mail_from or "",
        rcpt_to=tuple(envelope.rcpt_tos),
    )


def _recipient_groups(
    decision: Decision, rcpt_tos: list[str], extras: _Extras
) -> dict[str, list[tuple[str, list[str]]]]:
    """Recipients grouped by their action; ``reject`` never bounces here."""
    per_rcpt = dict(getattr(decision, "per_recipient", ()))
    groups: dict[str, list[tuple[str, list[str]]]] = {}
    for index, rcpt in enumerate(rcpt_tos):
        action = per_rcpt.get(rcpt, decision.action)
        if action not in SEVERITY:
            action = "accept"
        if action == "reject":
            action = "quarantine"
        params = extras.rcpt_params[index] if index < len(extras.rcpt_params) else []
        groups.setdefault(action, []).append((rcpt, params))
    return groups


class ProxyServer:
    """Listens for Postfix's content-filter connections."""

    def __init__(
        self,
        listen: str,
        handler: ProxyHandler,
        *,
        hostname: str = "phishgate",
        timeout_s: float = 300.0,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        host, _, port = listen.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.handler = handler
        self._factory: Callable[[], Any] = lambda: ProxySMTP(
            handler,
            hostname=hostname,
            data_size_limit=max_message_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=timeout_s,
        )
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, self.host, self.port)
        log.info("proxy listening on %s:%d", self.host, self.port)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()
