"""Parse, extract and score one message: the core every front door calls.

Stages are timed separately (parse, features, model) so the daemon's
metrics and the benchmark can say where the time goes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from .drift import DRIFT_FEATURE_NAMES
from .features import FeatureExtractor, Features
from .message import (
    DEFAULT_LIMITS,
    Limits,
    ParsedMessage,
    content_fingerprint,
    parse_message,
)
from .model import Model, Thresholds, Verdict

__all__ = ["ScanResult", "Scanner"]


@dataclass(frozen=True)
class ScanResult:
    """A verdict with what the message was and what scoring cost."""

    verdict: Verdict
    action: str
    message_id: str
    subject: str
    from_header: str
    limits_hit: frozenset[str]
    thresholds: Thresholds
    parse_s: float
    features_s: float
    model_s: float
    worker_pid: int = 0
    """The process that scanned (the daemon's own, or a scan worker's)."""
    fingerprint: str = ""
    """:func:`content_fingerprint`: finds the message again when it is reported."""
    drift_values: tuple[float, ...] = ()
    """The message's values of ``drift.DRIFT_FEATURE_NAMES``, in that order."""

    @property
    def scan_s(self) -> float:
        return self.parse_s + self.features_s + self.model_s

    @property
    def drift_features(self) -> dict[str, float]:
        """The drift features by name, for the verdict log."""
        return dict(zip(DRIFT_FEATURE_NAMES, self.drift_values, strict=False))


class Scanner:
    """Scores raw messages with one model; safe to share across threads."""

    def __init__(
        self,
        model: Model,
        extractor: FeatureExtractor | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.model = model
        self.extractor = extractor or FeatureExtractor(max_urls=limits.max_urls)
        self.extractor.text_hashing = model.uses_text_hashing
        self.limits = limits

    def parse(self, raw: bytes, envelope_from: str = "") -> ParsedMessage:
        return parse_message(raw, self.limits, envelope_from=envelope_from)

    def scan(self, raw: bytes, envelope_from: str = "") -> ScanResult:
        """Score *raw*; never raises on message content."""
        t0 = time.perf_counter()
        parsed = self.parse(raw, envelope_from)
        t1 = time.perf_counter()
        features = self.extractor.extract(parsed, raw)
        t2 = time.perf_counter()
        verdict = self.model.score([features])[0]
        t3 = time.perf_counter()
        return ScanResult(
            verdict=verdict,
            action=self.model.thresholds.action(verdict.phish),
            message_id=parsed.message_id,
            subject=parsed.subject,
            from_header=parsed.header("from"),
            limits_hit=frozenset(parsed.limits_hit),
            thresholds=self.model.thresholds,
            parse_s=t1 - t0,
            features_s=t2 - t1,
            model_s=t3 - t2,
            worker_pid=os.getpid(),
            fingerprint=content_fingerprint(parsed),
            drift_values=tuple(features.get(name) for name in DRIFT_FEATURE_NAMES),
        )

    def features(self, raw: bytes) -> Features:
        return self.extractor.extract(self.parse(raw), raw)
