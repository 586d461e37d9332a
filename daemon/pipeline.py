"""The one pipeline every front door calls: ``inspect(envelope, raw)``.

parse -> features -> model (in a worker thread, under a time budget) ->
verdict -> policy -> a :class:`Decision` that the front door carries out.
The pipeline never raises: an error or a timeout gives a Decision that
follows ``[policy] on_error`` (accept with ``X-Phishgate-Status``, or
tempfail), and the traceback is logged with the queue id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from .config import Config
from .engine import ScanEngine, ThreadEngine
from .metrics import Metrics
from .model import Verdict
from .policy import Policy, PolicyResult
from .scanner import Scanner, ScanResult
from .verdictlog import VerdictLog, make_row

__all__ = ["HEADER_PREFIX", "Decision", "MessageEnvelope", "Pipeline"]

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
class Decision:
    """What to do with a message, and the headers that say why."""

    action: str  # accept | tag | quarantine | reject | tempfail
    status: str  # scanned | error | timeout | skipped-size
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

    def reconfigure(
        self, config: Config, engine: ScanEngine | Scanner | None = None
    ) -> None:
        """Swap in a new config (and model); in-flight messages keep the old."""
        self.config = config
        self.policy = Policy(config)
        if engine is not None:
            old, self.engine = self.engine, _as_engine(engine)
            self.metrics.set_model(self.engine.model_version)
            old.close()

    def close(self) -> None:
        self.engine.close()

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
        if len(raw) > config.policy.max_scan_bytes:
            self.metrics.errors.labels(reason="size").inc()
            return self._skipped(envelope, "skipped-size")
        engine = self.engine  # a reload between here and the end changes nothing
        try:
            result = await asyncio.wait_for(
                engine.scan(raw, envelope.mail_from), config.policy.scan_timeout_s
            )
        except TimeoutError:
            log.warning(
                "queue_id=%s: scan timed out after %.1f s",
                envelope.queue_id or "-",
                config.policy.scan_timeout_s,
            )
            return self._failure(envelope, "timeout")
        self._observe(result)
        outcome = self.policy.decide(envelope, result)
        return self._scanned(result, outcome)

    def _observe(self, result: ScanResult) -> None:
        scan = self.metrics.scan_seconds
        scan.labels(stage="parse").observe(result.parse_s)
        scan.labels(stage="features").observe(result.features_s)
        scan.labels(stage="model").observe(result.model_s)
        scan.labels(stage="total").observe(result.scan_s)
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
            extra={"from": result.from_header, "subject": result.subject},
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


def _as_engine(engine: ScanEngine | Scanner) -> ScanEngine:
    return ThreadEngine(engine) if isinstance(engine, Scanner) else engine
