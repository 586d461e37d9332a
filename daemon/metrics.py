"""Prometheus metrics, declared once on a registry tests can replace.

Labels are small fixed sets (front door, action, stage, reason); never an
address or a subject. Times are in seconds.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)

from .feedback import REFUSALS
from .quarantine import OPERATIONS
from .verdictlog import ACTIONS

__all__ = ["Metrics"]

STAGES = ("parse", "features", "model", "total")

STAGE_BUCKETS = (
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256,
    0.5, 1, 2, 5, 10,
)  # fmt: skip
SCORE_BUCKETS = (
    0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0,
)  # fmt: skip


class Metrics:
    """Every metric the daemon exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "phishgate_messages_total",
            "Messages handled, by front door and action.",
            ["front_door", "action"],
            registry=r,
        )
        self.scan_seconds = Histogram(
            "phishgate_scan_duration_seconds",
            "Time spent per scan stage (parse, features, model, total).",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        # The labelled series every scan observes, looked up once.
        self.stage_seconds = {
            stage: self.scan_seconds.labels(stage=stage) for stage in STAGES
        }
        self.phish_score = Histogram(
            "phishgate_phish_score",
            "Phish probability of scanned messages.",
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "phishgate_errors_total",
            "Messages not scanned, by reason (timeout, error, size).",
            ["reason"],
            registry=r,
        )
        self.fail_open = Counter(
            "phishgate_fail_open_total",
            "Messages accepted unscanned because of an error or timeout.",
            registry=r,
        )
        self.in_flight = Gauge(
            "phishgate_in_flight_messages", "Messages being scanned now.", registry=r
        )
        self.scan_queue = Gauge(
            "phishgate_scan_queue_messages",
            "Messages waiting for a free scan worker (always 0 with one worker).",
            registry=r,
        )
        self.model_info = Gauge(
            "phishgate_model_info", "The model being served.", ["version"], registry=r
        )
        self.log_rows = Counter(
            "phishgate_verdict_log_rows_total",
            "Rows queued to the verdict log.",
            registry=r,
        )
        self.log_dropped = Counter(
            "phishgate_verdict_log_dropped_rows_total",
            "Verdict rows the log could not write (busy past its retries, or failing).",
            registry=r,
        )
        self.milter_connections = Gauge(
            "phishgate_milter_connections", "Open milter connections.", registry=r
        )
        self.config_reloads = Counter(
            "phishgate_config_reloads_total",
            "Reloads of the configuration and the active model (SIGHUP, "
            "systemctl reload, or a new model activated), by result.",
            ["result"],
            registry=r,
        )
        self.drift_psi = Gauge(
            "phishgate_drift_psi",
            "Population stability index of live inputs against the reference.",
            ["feature"],
            registry=r,
        )
        self.reports = Counter(
            "phishgate_reports_total",
            "Reports to the feedback addresses, by result (accepted, refused).",
            ["result"],
            registry=r,
        )
        self.report_refusals = Counter(
            "phishgate_report_refusals_total",
            "Refused reports, by reason (unauthenticated, rate-limited, ...).",
            ["reason"],
            registry=r,
        )
        self.labels = Counter(
            "phishgate_labels_total",
            "Labels recorded by the daemon, by source and label.",
            ["source", "label"],
            registry=r,
        )
        self.build = Info("phishgate_build", "Version of phishgate.", registry=r)
        self._monitoring(r)
        self._start_at_zero()

    def _start_at_zero(self) -> None:
        """Export each known label value from the start, so that rate() and
        increase() see the first event rather than a series appearing at 1."""
        for front_door in ("milter", "proxy"):
            for action in ACTIONS:
                self.messages.labels(front_door=front_door, action=action)
        for reason in ("timeout", "error", "size", "report"):
            self.errors.labels(reason=reason)
        for result in ("ok", "refused"):
            self.config_reloads.labels(result=result)
        for result in ("accepted", "refused"):
            self.reports.labels(result=result)
        for reason in REFUSALS:
            self.report_refusals.labels(reason=reason)
        for label in ("phish", "ham"):
            self.labels.labels(source="user-report", label=label)

    def _monitoring(self, r: CollectorRegistry) -> None:
        """What the periodic monitoring task refreshes, and model reloads."""
        self.live_precision = Gauge(
            "phishgate_live_precision",
            "Share of labelled flagged messages (tag, quarantine, reject) that "
            "are phish, over the labels window; NaN with too few labels.",
            registry=r,
        )
        self.live_recall = Gauge(
            "phishgate_live_recall",
            "Share of labelled phish that was flagged, over the labels window; "
            "NaN with too few labels.",
            registry=r,
        )
        self.live_labelled = Gauge(
            "phishgate_live_labelled_messages",
            "Scanned messages in the labels window that carry a label.",
            registry=r,
        )
        self.quarantine_messages = Gauge(
            "phishgate_quarantine_messages",
            "Messages held in phishgate's quarantine store.",
            registry=r,
        )
        self.quarantine_operations = Counter(
            "phishgate_quarantine_operations_total",
            "Operations on held mail (phishgate quarantine release, delete, "
            "purge, digest; the daemon's own expiry counts as purge), by result.",
            ["operation", "result"],
            registry=r,
        )
        for operation in OPERATIONS:
            for result in ("ok", "failed"):
                self.quarantine_operations.labels(operation=operation, result=result)
        self.model_created = Gauge(
            "phishgate_model_created_timestamp_seconds",
            "When the served model was trained (from its metadata).",
            registry=r,
        )
        self.model_reloads = Counter(
            "phishgate_model_reloads_total",
            "New models taken into service (ok) or refused by their checks.",
            ["result"],
            registry=r,
        )
        for result in ("ok", "refused"):
            self.model_reloads.labels(result=result)

    def set_model(self, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)

    def serve(self, listen: str) -> None:
        """Expose /metrics on HOST:PORT in a background thread."""
        host, _, port = listen.rpartition(":")
        start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
