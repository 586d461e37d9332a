"""What the daemon watches on a schedule: drift, live quality, the store, the model.

Every ``[drift] interval_s`` the daemon calls :meth:`Monitor.refresh` in a
worker thread. It reads the verdict log, the labels and the quarantine's
operations (read-only, WAL lets it run beside the writer), sets the gauges
and counters, and acts when drift crosses
``[drift] threshold``: one WARNING naming the features each time the set of
shifted values grows, and, with ``[drift] retrain = true``, a
``phishgate retrain`` subprocess at most once per ``retrain_cooldown_hours``
(retrain holds its own lock and gate, so a run that finds too few labels or
a worse candidate publishes nothing). Nothing here touches mail.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import Config
from .drift import DriftReport, drift_reports, model_meta, references_for
from .metrics import Metrics
from .model import ModelError, default_model_dir
from .models_dir import models_dir, serving_model_dir
from .quality import LiveQuality, live_quality
from .quarantine import held_count, operation_counts
from .verdictlog import DB_NAME

__all__ = ["Monitor", "served_meta"]

log = logging.getLogger(__name__)

RETRAIN_STAMP = "drift-retrain.last"
"""Its mtime is when drift last started a retrain (survives restarts)."""
NAN = math.nan


class Monitor:
    """Refreshes the monitoring gauges and carries out the drift action."""

    def __init__(self, metrics: Metrics, config_path: str | None) -> None:
        self.metrics = metrics
        self.config_path = config_path
        self.shifted: frozenset[str] = frozenset()
        self.retrain_process: subprocess.Popen[bytes] | None = None
        self._operations_seen: dict[tuple[str, str], int] = {}

    def refresh(self, config: Config, model_version: str) -> list[DriftReport]:
        """One round: read, set the gauges, act on drift; returns the reports."""
        db_path = config.state_dir / DB_NAME
        self.count_operations(db_path)
        meta = served_meta(config, model_version)
        self.metrics.model_created.set(created_timestamp(meta))
        reports = drift_reports(
            db_path,
            references_for(config.state_dir, meta),
            config.drift.window_hours * 3600,
        )
        for report in reports:
            value = NAN if report.psi is None else report.psi
            self.metrics.drift_psi.labels(feature=report.feature).set(value)
        self._set_quality(
            live_quality(db_path, config.drift.labels_window_days * 86400)
        )
        self.metrics.quarantine_messages.set(held_count(db_path))
        self._reap_retrain()
        self._act(config, reports)
        return reports

    def count_operations(self, db_path: Path) -> None:
        """Bring the operations counter up to the totals the CLI keeps.

        The daemon calls this once before it serves metrics, so after a
        restart the counter starts at the kept total, not at 0.
        """
        try:
            totals = operation_counts(db_path)
        except sqlite3.Error as exc:  # a busy or damaged file: next round
            log.warning("quarantine operation counts unreadable: %s", exc)
            return
        counter = self.metrics.quarantine_operations
        for (operation, result), total in totals.items():
            child = counter.labels(operation=operation, result=result)
            seen = self._operations_seen.get((operation, result), 0)
            if total > seen:
                child.inc(total - seen)
                self._operations_seen[(operation, result)] = total

    def _set_quality(self, quality: LiveQuality) -> None:
        self.metrics.live_labelled.set(quality.labelled)
        precision, recall = quality.precision, quality.recall
        self.metrics.live_precision.set(NAN if precision is None else precision)
        self.metrics.live_recall.set(NAN if recall is None else recall)

    def _act(self, config: Config, reports: Sequence[DriftReport]) -> None:
        threshold = config.drift.threshold
        over = [r for r in reports if r.psi is not None and r.psi > threshold]
        names = frozenset(r.feature for r in over)
        if names - self.shifted:
            log.warning(
                "drift: PSI above %g for %s (window %g h)",
                threshold,
                ", ".join(f"{r.feature} {r.psi:.3f} over {r.n}" for r in over),
                config.drift.window_hours,
            )
        elif self.shifted and not names:
            log.info("drift: every PSI back at or below %g", threshold)
        self.shifted = names
        if names and config.drift.retrain:
            self._maybe_retrain(config)

    def _maybe_retrain(self, config: Config) -> None:
        if self.retrain_process is not None:
            return  # one is still running
        stamp = config.state_dir / RETRAIN_STAMP
        cooldown_s = config.drift.retrain_cooldown_hours * 3600
        if stamp.exists() and time.time() - stamp.stat().st_mtime < cooldown_s:
            return
        stamp.touch()
        command = [sys.executable, "-m", "phishgate.daemon.cli", "retrain"]
        if self.config_path:
            command += ["--config", self.config_path]
        log.warning("drift: starting %s", " ".join(command))
        # Its log lines go where the daemon's go (the journal under systemd).
        self.retrain_process = subprocess.Popen(command, stdin=subprocess.DEVNULL)

    def _reap_retrain(self) -> None:
        if self.retrain_process is None or self.retrain_process.poll() is None:
            return
        log.info(
            "drift: phishgate retrain exited with status %d "
            "(0 published, 3 refused by the gate, 4 too few new labels)",
            self.retrain_process.returncode,
        )
        self.retrain_process = None


def served_meta(config: Config, version: str) -> dict[str, Any]:
    """The metadata of the model being served (which may not be the active one).

    A refused reload leaves the pointer on a model the daemon does not serve,
    so the folder is found by the served version, not by the pointer alone.
    """
    for folder in _candidate_folders(config, version):
        meta = model_meta(folder)
        if meta.get("version") == version:
            return meta
    return {}


def _candidate_folders(config: Config, version: str) -> list[Path]:
    folders = [models_dir(config.state_dir) / version, default_model_dir()]
    with contextlib.suppress(ModelError):  # the pointer names a missing version
        folders.insert(0, serving_model_dir(config))
    return folders


def created_timestamp(meta: Mapping[str, Any]) -> float:
    """``created`` of a model's metadata as Unix seconds (NaN if missing)."""
    try:
        created = dt.datetime.strptime(str(meta["created"]), "%Y-%m-%dT%H:%M:%SZ")
    except (KeyError, ValueError):
        return NAN
    return created.replace(tzinfo=dt.UTC).timestamp()
