"""The one pipeline every front door calls: ``inspect(envelope, raw)``.

parse -> features -> model (in a worker thread, under a time budget) ->
verdict -> policy -> a :class:`Decision` that the front door carries out.
The pipeline never raises: an error or a timeout gives a Decision that
follows ``[policy] on_error`` (accept with ``X-Phishgate-Status``, or
tempfail), and the traceback is logged with the queue id.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field, replace

import aiosmtplib

from .config import Config
from .engine import ScanEngine, ThreadEngine
from .feedback import REFUSALS, ReportDesk, ReportResult, receipt
from .metrics import Metrics
from .model import Verdict
from .policy import Policy, PolicyResult
from .scanner import Scanner, ScanResult
from .verdictlog import VerdictLog, make_row

__all__ = [
    "HEADER_PREFIX",
    "Decision",
    "MessageEnvelope",
    "Pipeline",
    "ReportAction",
]

log = logging.getLogger(__name__)

HEADER_PREFIX = "X-Phishgate-"
MAX_REASONS_HEADER = 3


@dataclass(frozen=True)
class MessageEnvelope:
    """What the front door knows of a message besides its bytes."""

    front_door: str
    queue_id: str = ""
    client_addr: str = ""
    client_name: str = ""
    helo: str = ""
    mail_from: str = ""
    rcpt_to: tuple[str, ...] = ()
    auth_login: str = ""


@dataclass(frozen=True)
class ReportAction:
    """A report among the recipients, and what the front door does with it.

    The report addresses never receive the message: they are removed, and
    an accepted report goes to ``forward_to`` instead (if set).
    """

    result: ReportResult
    recipients: tuple[str, ...]
    forward_to: str = ""

    @property
    def forward(self) -> bool:
        return bool(self.forward_to) and self.result.accepted

    @property
    def header(self) -> tuple[str, str]:
        return HEADER_PREFIX + "Report", self.result.summary


@dataclass(frozen=True)
class Decision:
    """What to do with a message, and the headers that say why."""

    action: str  # accept | tag | quarantine | reject | tempfail | report
    status: str  # scanned | error | timeout | skipped-size | report ...
    verdict: Verdict | None
    headers: tuple[tuple[str, str], ...]
    subject_tag: str = ""
    reply_text: str = ""
    policy_reason: str = ""
    message_id: str = ""
    scan_s: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)
    per_recipient: tuple[tuple[str, str], ...] = ()
    """(recipient, action) pairs, for a front door that can split a message."""
    report: ReportAction | None = None
    """Set when some recipients were report addresses (``[feedback]``)."""
    features: dict[str, float] = field(default_factory=dict)
    """The scan's drift features (see drift.py), for the verdict log."""


class Pipeline:
    """Scores messages for every front door and logs each decision."""

    def __init__(
        self,
        config: Config,
        engine: ScanEngine | Scanner,
        metrics: Metrics,
        verdict_log: VerdictLog | None,
    ) -> None:
        self.config = config
        self.engine = _as_engine(engine)
        self.policy = Policy(config)
        self.metrics = metrics
        self.verdict_log = verdict_log
        self.in_flight = 0
        self.reports = _report_desk(config)
        self._receipts: set[asyncio.Task[None]] = set()
        self._scans: dict[ScanEngine, int] = {}
        """Scans running on each engine: a replaced one closes after its last."""
        self._retired: set[ScanEngine] = set()

    def reconfigure(
        self, config: Config, engine: ScanEngine | Scanner | None = None
    ) -> None:
        """Swap in a new config (and model); in-flight messages keep the old.

        *engine* may be the running one, after it switched models in place.
        """
        self.config = config
        self.policy = Policy(config)
        self.reports = _report_desk(config)
        if engine is not None:
            old, self.engine = self.engine, _as_engine(engine)
            self.metrics.set_model(self.engine.model_version)
            if old is self.engine:
                return
            if self._scans.get(old):
                self._retired.add(old)
            else:
                old.close()

    def close(self) -> None:
        for engine in (self.engine, *self._retired):
            engine.close()
        self._retired.clear()

    async def inspect(self, envelope: MessageEnvelope, raw: bytes) -> Decision:
        """Decide on one message; never raises."""
        self.metrics.in_flight.inc()
        self.in_flight += 1
        try:
            decision = await self._inspect(envelope, raw)
        except Exception:  # never lose mail to our own bug
            log.exception("queue_id=%s: pipeline error", envelope.queue_id or "-")
            decision = self._failure(envelope, "error")
        finally:
            self.metrics.in_flight.dec()
            self.in_flight -= 1
        self._account(envelope, raw, decision)
        return decision

    async def _inspect(self, envelope: MessageEnvelope, raw: bytes) -> Decision:
        config = self.config
        label, report_rcpts = self.reports.label_for(envelope.rcpt_to)
        if report_rcpts:
            return await self._report(envelope, raw, label, report_rcpts)
        if len(raw) > config.policy.max_scan_bytes:
            self.metrics.errors.labels(reason="size").inc()
            return self._skipped(envelope, "skipped-size")
        engine = self.engine  # a reload between here and the end changes nothing
        self._scans[engine] = self._scans.get(engine, 0) + 1
        try:
            result = await asyncio.wait_for(
                engine.scan(raw, envelope.mail_from), config.policy.scan_timeout_s
            )
        except TimeoutError:
            log.warning(
                "queue_id=%s: scan timed out after %g s",
                envelope.queue_id or "-",
                config.policy.scan_timeout_s,
            )
            return self._failure(envelope, "timeout")
        finally:
            self._scan_done(engine)
        self._observe(result)
        outcome = self.policy.decide(envelope, result)
        return self._scanned(result, outcome)

    async def _report(
        self,
        envelope: MessageEnvelope,
        raw: bytes,
        label: str,
        report_rcpts: tuple[str, ...],
    ) -> Decision:
        """Record a report; the other recipients' copy is scanned as usual."""
        desk = self.reports
        handle = functools.partial(
            desk.handle,
            label,
            raw,
            mail_from=envelope.mail_from,
            auth_login=envelope.auth_login,
            client_addr=envelope.client_addr,
        )
        try:
            result = await asyncio.get_running_loop().run_in_executor(None, handle)
        except Exception:  # the reporter's client retries a 4xx; nothing is lost
            log.exception("queue_id=%s: report failed", envelope.queue_id or "-")
            self.metrics.errors.labels(reason="report").inc()
            return Decision("tempfail", "error", None, ())
        self._count_report(result)
        log.info(
            "queue_id=%s: report to %s from %s (client %s): %s",
            envelope.queue_id or "-",
            ", ".join(report_rcpts),
            result.reporter or "-",
            envelope.client_addr or "-",
            result.summary,
        )
        feedback = self.config.feedback
        if result.accepted and feedback.acknowledge and envelope.mail_from:
            self._send_receipt(result, report_rcpts[0], envelope.mail_from)
        action = ReportAction(result, report_rcpts, feedback.forward_to)
        others = tuple(r for r in envelope.rcpt_to if r not in report_rcpts)
        if others:
            decision = await self._inspect(replace(envelope, rcpt_to=others), raw)
            return replace(decision, report=action)
        return Decision(
            "report",
            f"report {result.summary}",
            None,
            (action.header,),
            reply_text=REFUSALS.get(result.reason, ""),
            report=action,
        )

    def _count_report(self, result: ReportResult) -> None:
        metrics = self.metrics
        if result.accepted:
            metrics.reports.labels(result="accepted").inc()
            metrics.labels.labels(source="user-report", label=result.label).inc(
                len(result.label_ids)
            )
        else:
            metrics.reports.labels(result="refused").inc()
            metrics.report_refusals.labels(reason=result.reason).inc()

    def _send_receipt(self, result: ReportResult, sender: str, to: str) -> None:
        """Mail the reporter a receipt in the background (null envelope sender)."""
        host, _, port = (
            self.config.feedback.send_via or self.config.proxy.reinject
        ).rpartition(":")
        message = receipt(result, sender, to)

        async def send() -> None:
            client = aiosmtplib.SMTP(hostname=host.strip("[]"), port=int(port))
            try:
                async with client:
                    await client.sendmail("", [to], message, timeout=30)
            except (aiosmtplib.SMTPException, OSError, ValueError) as exc:
                log.warning("report receipt to %s not sent: %s", to, exc)

        task = asyncio.get_running_loop().create_task(send())
        self._receipts.add(task)
        task.add_done_callback(self._receipts.discard)

    def _scan_done(self, engine: ScanEngine) -> None:
        left = self._scans[engine] - 1
        if left:
            self._scans[engine] = left
            return
        del self._scans[engine]
        if engine in self._retired:
            self._retired.discard(engine)
            engine.close()

    def _observe(self, result: ScanResult) -> None:
        stages = self.metrics.stage_seconds
        stages["parse"].observe(result.parse_s)
        stages["features"].observe(result.features_s)
        stages["model"].observe(result.model_s)
        stages["total"].observe(result.scan_s)
        self.metrics.phish_score.observe(result.verdict.phish)

    def _scanned(self, result: ScanResult, outcome: PolicyResult) -> Decision:
        verdict = result.verdict
        headers = verdict_headers(verdict, outcome.action, "scanned")
        reply = ""
        if outcome.action == "reject":
            first = (
                verdict.reasons[0] if verdict.reasons else outcome.reason or "phishing"
            )
            reply = f"Message looks like phishing ({first})"
        return Decision(
            action=outcome.action,
            status="scanned",
            verdict=verdict,
            headers=headers,
            subject_tag=self.config.policy.subject_tag
            if outcome.action == "tag"
            else "",
            reply_text=reply,
            policy_reason=outcome.reason,
            per_recipient=outcome.per_recipient,
            message_id=result.message_id,
            scan_s=result.scan_s,
            extra={
                "from": result.from_header,
                "subject": result.subject,
                "fingerprint": result.fingerprint,
            },
            features=result.drift_features,
        )

    def _failure(self, envelope: MessageEnvelope, status: str) -> Decision:
        self.metrics.errors.labels(reason=status).inc()
        if self.config.policy.on_error == "tempfail":
            return Decision("tempfail", status, None, ())
        self.metrics.fail_open.inc()
        return Decision("accept", status, None, ((HEADER_PREFIX + "Status", status),))

    def _skipped(self, envelope: MessageEnvelope, status: str) -> Decision:
        return Decision("accept", status, None, ((HEADER_PREFIX + "Status", status),))

    def _account(
        self, envelope: MessageEnvelope, raw: bytes, decision: Decision
    ) -> None:
        self.metrics.messages.labels(
            front_door=envelope.front_door, action=decision.action
        ).inc()
        verdict = decision.verdict
        log.info(
            "queue_id=%s message_id=%s action=%s phish=%s status=%s model=%s"
            " reasons=%s",
            envelope.queue_id or "-",
            decision.message_id or "-",
            decision.action,
            f"{verdict.phish:.4f}" if verdict else "-",
            decision.status,
            verdict.model_version if verdict else "-",
            "; ".join(verdict.reasons[:3]) if verdict else "-",
        )
        if self.verdict_log is None:
            return
        self.verdict_log.record(
            make_row(
                front_door=envelope.front_door,
                queue_id=envelope.queue_id,
                message_id=decision.message_id,
                client_addr=envelope.client_addr,
                sender=envelope.mail_from,
                recipients=list(envelope.rcpt_to),
                from_header=decision.extra.get("from", ""),
                subject=decision.extra.get("subject", ""),
                size=len(raw),
                ham=verdict.ham if verdict else None,
                spam=verdict.spam if verdict else None,
                phish=verdict.phish if verdict else None,
                action=decision.action,
                reasons=list(verdict.reasons) if verdict else [],
                model_version=verdict.model_version if verdict else None,
                scan_ms=round(decision.scan_s * 1000, 3),
                status=decision.status,
                fingerprint=decision.extra.get("fingerprint", ""),
                time=time.time(),
                features=decision.features or None,
            )
        )
        self.metrics.log_rows.inc()


def verdict_headers(
    verdict: Verdict, action: str, status: str
) -> tuple[tuple[str, str], ...]:
    """The X-Phishgate-* headers for a scanned message."""
    reasons = "; ".join(verdict.reasons[:MAX_REASONS_HEADER]) or "none"
    return (
        (HEADER_PREFIX + "Verdict", f"{verdict.label} action={action}"),
        (HEADER_PREFIX + "Score", f"{verdict.phish:.4f}"),
        (HEADER_PREFIX + "Reasons", fold(reasons)),
        (HEADER_PREFIX + "Model", verdict.model_version),
        (HEADER_PREFIX + "Status", status),
    )


def fold(value: str, width: int = 76) -> str:
    """Fold a header value at '; ' boundaries (RFC 5322 section 2.2.3)."""
    value = "".join(ch if ch.isprintable() else " " for ch in value)
    lines: list[str] = []
    current = ""
    for part in value.split("; "):
        piece = part if not current else "; " + part
        if current and len(current) + len(piece) > width:
            lines.append(current + ";")
            current = part
        else:
            current += piece
    lines.append(current)
    return "\n\t".join(lines)


def _report_desk(config: Config) -> ReportDesk:
    return ReportDesk(config.state_dir, config.feedback, config.policy.subject_tag)


def _as_engine(engine: ScanEngine | Scanner) -> ScanEngine:
    return ThreadEngine(engine) if isinstance(engine, Scanner) else engine
