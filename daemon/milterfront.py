"""The milter front door: translate a milter envelope into the pipeline and back.

It only translates. Headers and body come in; a :class:`Decision` goes out
as milter actions: remove any ``X-Phishgate-*`` header the message arrived
with (nobody else may speak for us), add ours, prefix the Subject on
``tag``, ``SMFIR_QUARANTINE`` (hold queue) or store-and-discard on
``quarantine``, ``550 5.7.1`` on ``reject``, ``451`` on ``tempfail``.

A report address among the recipients is removed (``SMFIR_DELRCPT``); an
accepted report goes to ``[feedback] forward_to`` (``SMFIR_ADDRCPT``) or is
discarded, and a refused one is answered ``550 5.7.1`` with the reason, so
the reporter's client says why at once.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence

from phishgate.milter import (
    Action,
    AddHeader,
    AddRecipient,
    ChangeHeader,
    Continue,
    DeleteRecipient,
    Discard,
    Envelope,
    Handler,
    Quarantine,
    ReplyCode,
    Session,
    TempFail,
)

from .pipeline import HEADER_PREFIX, Decision, MessageEnvelope, Pipeline, ReportAction

__all__ = ["MilterFrontDoor", "message_bytes"]

log = logging.getLogger(__name__)

# RFC 3463: 5.7.1 delivery not authorized, message refused.
REJECT_CODE, REJECT_XCODE = 550, "5.7.1"

QuarantineWriter = Callable[[MessageEnvelope, bytes, Decision], str]
"""Stores a message durably and returns its quarantine id (blocking)."""


def message_bytes(envelope: Envelope) -> bytes:
    """Rebuild the message as the client sent it: headers, blank line, body."""
    text = "".join(
        f"{name}: {value.lstrip(' ')}\r\n" for name, value in envelope.headers
    )
    # Folded values carry bare LF between their lines; the wire wants CRLF.
    head = text.replace("\r\n", "\n").replace("\n", "\r\n")
    return b"".join((head.encode("utf-8", "surrogateescape"), b"\r\n", envelope.body))


def to_message_envelope(envelope: Envelope) -> MessageEnvelope:
    return MessageEnvelope(
        front_door="milter",
        queue_id=envelope.queue_id or "",
        client_addr=envelope.client_address,
        client_name=envelope.client_name,
        helo=envelope.helo,
        mail_from=envelope.mail_from or "",
        rcpt_to=tuple(envelope.rcpt_to),
        auth_login=envelope.auth_authen or "",
    )


class MilterFrontDoor(Handler):
    """A milter handler backed by the pipeline."""

    def __init__(
        self,
        pipeline: Pipeline,
        quarantine_mode: Callable[[], str],
        store: QuarantineWriter | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.quarantine_mode = quarantine_mode
        self.store = store

    async def end_of_message(
        self, session: Session, envelope: Envelope
    ) -> Sequence[Action]:
        """Scan the message and return the milter actions for its decision."""
        msg_envelope = to_message_envelope(envelope)
        raw = message_bytes(envelope)
        decision = await self.pipeline.inspect(msg_envelope, raw)
        if decision.action == "tempfail":
            return [TempFail()]
        if decision.action == "report":
            return _report_only(envelope, decision)
        actions: list[Action] = [*remove_our_headers(envelope.headers)]
        if decision.report is not None:
            actions += _redirect_report(decision.report)
        actions += [AddHeader(name, value) for name, value in decision.headers]
        if decision.action == "tag" and decision.subject_tag:
            actions.append(_tag_subject(envelope, decision.subject_tag))
        if decision.action == "reject":
            return [ReplyCode(REJECT_CODE, REJECT_XCODE, decision.reply_text)]
        if decision.action == "quarantine":
            return await self._quarantine(actions, msg_envelope, raw, decision)
        return [*actions, Continue()]

    async def _quarantine(
        self,
        actions: list[Action],
        envelope: MessageEnvelope,
        raw: bytes,
        decision: Decision,
    ) -> list[Action]:
        reason = (
            decision.verdict.reasons[0]
            if decision.verdict and decision.verdict.reasons
            else "phishing"
        )
        if self.quarantine_mode() == "store" and self.store is not None:
            try:
                loop = asyncio.get_running_loop()
                entry = await loop.run_in_executor(
                    None, self.store, envelope, raw, decision
                )
            except (OSError, sqlite3.Error):
                log.exception(
                    "queue_id=%s: quarantine store failed; holding instead",
                    envelope.queue_id or "-",
                )
            else:
                log.info(
                    "queue_id=%s: stored in quarantine as %s",
                    envelope.queue_id or "-",
                    entry,
                )
                return [Discard()]
        return [*actions, Quarantine(f"phishgate: {reason}"[:200]), Continue()]


def _report_only(envelope: Envelope, decision: Decision) -> list[Action]:
    """A message sent only to report addresses: forward, drop or refuse it."""
    report = decision.report
    assert report is not None  # set on every "report" decision
    if not report.result.accepted:
        return [
            ReplyCode(
                REJECT_CODE, REJECT_XCODE, f"Report refused: {decision.reply_text}"
            )
        ]
    if not report.forward:
        return [Discard()]
    return [
        *remove_our_headers(envelope.headers),
        *_redirect_report(report),
        AddHeader(*report.header),
        Continue(),
    ]


def _redirect_report(report: ReportAction) -> list[Action]:
    actions: list[Action] = [DeleteRecipient(f"<{r}>") for r in report.recipients]
    if report.forward:
        actions.append(AddRecipient(f"<{report.forward_to}>"))
    return actions


def remove_our_headers(headers: list[tuple[str, str]]) -> list[Action]:
    """Delete every incoming X-Phishgate-* header, last occurrence first."""
    seen: dict[str, int] = {}
    deletions: list[ChangeHeader] = []
    for name, _ in headers:
        key = name.lower()
        seen[key] = seen.get(key, 0) + 1
        if key.startswith(HEADER_PREFIX.lower()):
            deletions.append(ChangeHeader(seen[key], name, ""))
    return list(reversed(deletions))


def _tag_subject(envelope: Envelope, tag: str) -> Action:
    subjects = envelope.header_values("Subject")
    if not subjects:
        return AddHeader("Subject", tag.strip())
    current = subjects[0].lstrip(" ")
    if current.startswith(tag.strip()):
        return ChangeHeader(1, "Subject", current)
    return ChangeHeader(1, "Subject", tag + current)
