"""The LMTP/SMTP proxy front door: Postfix's after-queue content filter.

Postfix hands every message over LMTP (``content_filter =
phishgate:[127.0.0.1]:10025`` with an ``lmtp`` transport; an ``smtp`` one
works too); the proxy scans it through the same pipeline as the milter and
re-injects it into Postfix's second smtpd (``127.0.0.1:10026``). Rules that
keep mail safe:

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
  delivered (or held) in its own transaction. Over LMTP each recipient gets
  its own reply, so a group that fails is retried alone; over SMTP the one
  reply is 451 if any group failed (the groups done may get a duplicate).
* Report addresses (``[feedback]``) are taken off the recipients; an accepted
  report goes to ``[feedback] forward_to`` (if set), a refused one nowhere
  (after the queue, the reporter cannot be told in the session).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from .headers import rewrite_headers
from .pipeline import HEADER_PREFIX, Decision, MessageEnvelope, Pipeline
from .policy import SEVERITY
from .quarantine import QuarantineStore, store_decision
from .reinject import ReinjectError, ReinjectSessions, Transaction

__all__ = ["ProxyHandler", "ProxySMTP", "ProxyServer", "read_data"]

log = logging.getLogger(__name__)

# RFC 5321 4.2.2 / RFC 3463 status codes used here.
OK_250 = "250 2.0.0 Ok: {what}"
TEMPFAIL_451 = "451 4.3.0 Error: {why}, try again later"
XFORWARD_ATTRS = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
MAX_LINE_BYTES = 1024 * 1024
"""Longest line taken in DATA. smtp(8) folds at smtp_line_length_limit (998)
unless set to 0; aiosmtpd's own limit, 1001, would answer 500: a bounce."""
_MAIL_PASS_THROUGH = ("RET=", "ENVID=")
_DOT_LINE = b".\r\n"
"""Ends the message data when it starts a line (RFC 5321 4.1.1.4)."""
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(
    rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>\s*"
)
"""A path whose address is a dot-atom at a host name: nothing to unquote."""
NULL_PATH = "<>"
"""RFC 5321 4.5.5: the reverse-path of notifications (bounces, DSNs, MDNs)."""


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
    """aiosmtpd's server, plus LMTP, XFORWARD and pass-through DSN parameters.

    The client's greeting picks the protocol for the session: after ``LHLO``
    (RFC 2033) the end of DATA is answered with one reply per accepted
    recipient, so Postfix's ``lmtp`` transport retries only the recipients
    that got a 4xx; after ``EHLO`` or ``HELO`` there is one reply for all.
    The handler's ``handle_DATA`` returns a list of per-recipient replies or
    one reply (used for every recipient in LMTP).
    """

    extras: _Extras
    lmtp: bool = False
    line_length_limit = MAX_LINE_BYTES

    def _set_rset_state(self) -> None:
        super()._set_rset_state()  # type: ignore[no-untyped-call]  # aiosmtpd is untyped here
        xforward = getattr(self, "extras", _Extras()).xforward
        self.extras = _Extras(xforward=xforward)

    def _set_post_data_state(self) -> None:
        # Each transaction brings its own MAIL/RCPT parameters and, from
        # Postfix, its own XFORWARD: nothing carries over to the next one.
        super()._set_post_data_state()  # type: ignore[no-untyped-call]  # aiosmtpd is untyped here
        self.extras = _Extras()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parser, skipped for a plain ``<local@host>``.

        Its email-header parser costs more than the rest of a MAIL or RCPT
        command; for a dot-atom address it returns the same address and rest.
        """
        match = _PLAIN_PATH.match(arg)
        if match is None or self.local_part_limit:
            address: tuple[str | None, str | None] = super()._getaddr(arg)
            return address
        return match[1], arg[match.end() :]

    @syntax("LHLO hostname")
    async def smtp_LHLO(self, arg: str) -> None:
        """The LMTP greeting: the same extensions as EHLO."""
        await self.smtp_EHLO(arg)
        self.lmtp = bool(arg)

    async def smtp_EHLO(self, arg: str) -> None:
        self.lmtp = False
        await super().smtp_EHLO(arg)

    async def smtp_HELO(self, arg: str) -> None:
        self.lmtp = False
        await super().smtp_HELO(arg)

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

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading the message in large pieces, not by line.

        aiosmtpd reads and checks every line in Python, which costs more than
        the scan for a large message; here the reader looks for the
        end-of-data line in bulk. Lines of any length are taken (a 500 after
        the queue would be a bounce); SIZE is enforced as aiosmtpd does.
        """
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None  # set by aiosmtpd before any command
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        content = await read_data(self._reader, self.data_size_limit)
        if content is None:
            await self._reply_data("552 Error: Too much mail data")
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        await self._reply_data("250 OK" if status is MISSING else status)

    async def _reply_data(self, status: str | list[str]) -> None:
        """The reply to the end of DATA: one, or one per recipient in LMTP."""
        assert self.envelope is not None  # set by aiosmtpd before any command
        count = len(self.envelope.rcpt_tos) if self.lmtp else 1
        replies = status if isinstance(status, list) else [status] * count
        self._set_post_data_state()
        self._writer.write("".join(r + "\r\n" for r in replies).encode())
        await self._writer.drain()


async def read_data(reader: asyncio.StreamReader, limit: int | None) -> bytes | None:
    """The message up to the end-of-data line, un-dot-stuffed (RFC 5321 4.5.2).

    None when it is longer than ``limit`` (it is still read to its end). The
    reader is left just after the end-of-data line, at a pipelined command.
    """
    data = bytearray()
    too_much = False
    while True:
        try:
            data += await reader.readuntil(_DOT_LINE)
        except asyncio.LimitOverrunError as exc:  # no ".\r\n" for a long while
            data += await reader.readexactly(exc.consumed)
        else:
            end = len(data) - len(_DOT_LINE)
            if end == 0 or data[end - 2 : end] == b"\r\n":
                break  # the "." stands alone on its line
        if limit and len(data) > limit:
            too_much = True
            del data[:-2]  # keep what tells the next "." where its line starts
    if too_much or (limit and end > limit):
        return None
    del data[end:]
    if data[:1] == b".":
        del data[:1]
    return bytes(data.replace(b"\r\n.", b"\r\n"))


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
        self.sessions = ReinjectSessions(reinject, timeout_s)

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
    ) -> str | list[str]:
        """One reply (SMTP), or one per recipient (LMTP, see ProxySMTP)."""
        extras: _Extras = getattr(server, "extras", _Extras())
        lmtp: bool = getattr(server, "lmtp", False)
        raw = envelope.original_content or b""
        msg_env = _message_envelope(session, envelope, extras)
        try:
            outcomes = await self._handle(msg_env, raw, envelope, extras, lmtp)
        except Exception:  # never lose mail to our own bug: Postfix retries
            log.exception("queue_id=%s: proxy error", msg_env.queue_id or "-")
            return TEMPFAIL_451.format(why="internal error")
        if lmtp:
            return _per_recipient(outcomes, len(envelope.rcpt_tos))
        return _one_reply(outcomes)

    async def _handle(
        self,
        msg_env: MessageEnvelope,
        raw: bytes,
        envelope: Envelope,
        extras: _Extras,
        lmtp: bool,
    ) -> list[Outcome]:
        """Scan, then carry out the decision group by group.

        In SMTP mode the first failed group ends the message (Postfix retries
        every recipient anyway); in LMTP mode every group gets its own try.
        """
        decision = await self.pipeline().inspect(msg_env, raw)
        everyone = list(range(len(envelope.rcpt_tos)))
        if decision.action == "tempfail":
            return [Outcome(everyone, failed="scan failed")]
        rcpts = [
            Rcpt(i, rcpt, extras.rcpt_params[i] if i < len(extras.rcpt_params) else [])
            for i, rcpt in enumerate(envelope.rcpt_tos)
        ]
        report = decision.report
        skip = set(report.recipients) if report is not None else set()
        jobs: list[tuple[str, list[Rcpt]]] = []
        if report is not None:
            jobs.append(("report", [r for r in rcpts if r.address in skip]))
        others = [r for r in rcpts if r.address not in skip]
        groups = _recipient_groups(decision, others)
        # Held first: over SMTP a store that fails then leaves nothing
        # re-injected that Postfix's retry would deliver twice.
        if "quarantine" in groups:
            jobs.insert(0, ("quarantine", groups.pop("quarantine")))
        jobs += groups.items()
        return await self._deliver_all(jobs, msg_env, raw, decision, extras, lmtp)

    async def _deliver_all(
        self,
        jobs: list[tuple[str, list[Rcpt]]],
        msg_env: MessageEnvelope,
        raw: bytes,
        decision: Decision,
        extras: _Extras,
        lmtp: bool,
    ) -> list[Outcome]:
        """Each group's Outcome; a group after an unreachable smtpd does not try."""
        outcomes: list[Outcome] = []
        unreachable = ""
        for action, group in jobs:
            indices = [r.index for r in group]
            if outcomes and outcomes[-1].failed and not lmtp:
                outcome = Outcome(indices, failed=outcomes[-1].failed)
            elif unreachable and action != "quarantine":
                outcome = Outcome(indices, failed=unreachable)
            else:
                outcome = await self._deliver_group(
                    action, group, msg_env, raw, decision, extras, lmtp
                )
                unreachable = unreachable or outcome.unreachable
            outcomes.append(outcome)
        return outcomes

    async def _deliver_group(
        self,
        action: str,
        rcpts: list[Rcpt],
        msg_env: MessageEnvelope,
        raw: bytes,
        decision: Decision,
        extras: _Extras,
        partial: bool,
    ) -> Outcome:
        """Re-inject, store or forward one group; its Outcome, never raises.

        With ``partial`` (LMTP), recipients the re-injection smtpd refuses
        are retried on their own while the others are delivered.
        """
        indices = [r.index for r in rcpts]
        try:
            if action == "report":
                return await self._report(rcpts, msg_env, raw, decision, extras)
            if action == "quarantine":
                return Outcome(
                    indices, await self._quarantine(raw, msg_env, decision, rcpts)
                )
            tag = decision.subject_tag if action == "tag" else ""
            message = rewrite_headers(raw, _with_action(decision.headers, action), tag)
            refused = await self._reinject(message, msg_env, rcpts, extras, partial)
        except ReinjectError as exc:
            log.warning(
                "queue_id=%s: re-injection to %s:%d failed for %d recipients: %s",
                msg_env.queue_id or "-",
                *self.reinject,
                len(rcpts),
                exc,
            )
            unreachable = "re-injection failed" if exc.unreachable else ""
            return Outcome(
                indices, failed="re-injection failed", unreachable=unreachable
            )
        except Exception:  # never lose mail to our own bug: Postfix retries
            log.exception("queue_id=%s: proxy error", msg_env.queue_id or "-")
            return Outcome(indices, failed="internal error")
        if refused:
            log.warning(
                "queue_id=%s: re-injection refused %d of %d recipients: %s",
                msg_env.queue_id or "-",
                len(refused),
                len(rcpts),
                "; ".join(refused.values()),
            )
        return Outcome(
            indices, action, f"{action} {len(rcpts) - len(refused)}", refused
        )

    async def _report(
        self,
        rcpts: list[Rcpt],
        msg_env: MessageEnvelope,
        raw: bytes,
        decision: Decision,
        extras: _Extras,
    ) -> Outcome:
        """The report addresses: forward an accepted report, or just answer."""
        report = decision.report
        assert report is not None  # only called for a message with a report
        indices = [r.index for r in rcpts]
        if not report.forward:
            return Outcome(indices, f"report {report.result.summary}")
        message = rewrite_headers(raw, (report.header,), "")
        forward = [Rcpt(indices[0], report.forward_to, [])]
        await self._reinject(message, msg_env, forward, extras, partial=False)
        return Outcome(indices, "report forwarded")

    async def _quarantine(
        self,
        raw: bytes,
        msg_env: MessageEnvelope,
        decision: Decision,
        rcpts: list[Rcpt],
    ) -> str:
        store = self.store()
        if store is None:
            raise RuntimeError("quarantine needed but no store configured")
        # The stored copy says what happened to it, also for a reject.
        held = replace(decision, headers=_with_action(decision.headers, "quarantine"))
        addresses = tuple(r.address for r in rcpts)
        entry = await asyncio.get_running_loop().run_in_executor(
            None, store_decision, store, msg_env, raw, held, addresses
        )
        log.info("queue_id=%s: quarantined as %s", msg_env.queue_id or "-", entry)
        return f"quarantined {entry}"

    async def _reinject(
        self,
        message: bytes,
        msg_env: MessageEnvelope,
        rcpts: list[Rcpt],
        extras: _Extras,
        partial: bool,
    ) -> dict[int, str]:
        """One SMTP transaction into Postfix; the recipients it refused.

        ReinjectError if it took none of them (or, unless ``partial``, not
        all of them), or not the message.
        """
        tx = Transaction(
            msg_env.mail_from,
            [(r.address, r.params) for r in rcpts],
            message,
            extras.mail_params,
            extras.xforward,
        )
        refused = await self.sessions.send(tx, partial)
        return {rcpts[i].index: reply for i, reply in refused.items()}

    def close(self) -> None:
        """Drop the idle re-injection sessions."""
        self.sessions.close()


@dataclass(frozen=True)
class Rcpt:
    """One recipient: its place in RCPT order, address and RCPT parameters."""

    index: int
    address: str
    params: list[str]


@dataclass(frozen=True)
class Outcome:
    """What became of a group of recipients (by their place in RCPT order)."""

    rcpts: list[int]
    done: str = ""
    """Per recipient, what was done: ``accept``, ``quarantined <id>``..."""
    summary: str = ""
    """For the one SMTP reply: ``accept 2``; ``done`` when empty."""
    refused: dict[int, str] = field(default_factory=dict)
    """Recipients the re-injection smtpd refused: its reply, to be retried."""
    failed: str = ""
    """Why the whole group must be retried; empty when it was done."""
    unreachable: str = ""
    """Set when no re-injection session could be opened."""

    def reply(self, index: int) -> str:
        """The reply for one recipient of the group."""
        if self.failed:
            return TEMPFAIL_451.format(why=self.failed)
        if index in self.refused:
            return TEMPFAIL_451.format(why=f"re-injection: {self.refused[index]}")
        return OK_250.format(what=self.done)


def _per_recipient(outcomes: list[Outcome], count: int) -> list[str]:
    """LMTP: one reply per recipient, in RCPT order (RFC 2033 4.2)."""
    replies = {i: o.reply(i) for o in outcomes for i in o.rcpts}
    return [replies[i] for i in range(count)]


def _one_reply(outcomes: list[Outcome]) -> str:
    """SMTP: 250 only when every recipient's part was done, else 451."""
    for outcome in outcomes:
        if outcome.failed:
            return TEMPFAIL_451.format(why=outcome.failed)
        if outcome.refused:
            return TEMPFAIL_451.format(why="re-injection refused recipient")
    return OK_250.format(what="; ".join(o.summary or o.done for o in outcomes))


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
        # aiosmtpd keeps the null reverse-path (bounces, DSNs) as "<>".
        mail_from="" if envelope.mail_from == NULL_PATH else envelope.mail_from or "",
        rcpt_to=tuple(envelope.rcpt_tos),
    )


def _recipient_groups(decision: Decision, rcpts: list[Rcpt]) -> dict[str, list[Rcpt]]:
    """Recipients grouped by action, in RCPT order; ``reject`` never bounces."""
    per_rcpt = dict(decision.per_recipient)
    groups: dict[str, list[Rcpt]] = {}
    for rcpt in rcpts:
        action = per_rcpt.get(rcpt.address, decision.action)
        if action not in SEVERITY:
            action = "accept"
        if action == "reject":
            action = "quarantine"
        groups.setdefault(action, []).append(rcpt)
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
        self.handler.close()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()
