"""The daemon's periodic monitoring: gauges from real SQLite files, drift action."""

from __future__ import annotations

import datetime as dt
import logging
import math
import shutil
import sqlite3
from pathlib import Path

import pytest
from phishgate.daemon.config import Config, parse_config
from phishgate.daemon.drift import DRIFT_FEATURE_NAMES
from phishgate.daemon.metrics import Metrics
from phishgate.daemon.model import Model, default_model_dir
from phishgate.daemon.models_dir import ACTIVE_FILE, models_dir
from phishgate.daemon.monitor import RETRAIN_STAMP, Monitor, served_meta
from phishgate.daemon.quarantine import QuarantineStore
from phishgate.daemon.verdictlog import VerdictLog, make_row

BUNDLED = Model.load()
RETRAIN_TIMEOUT_S = 120.0
"""A retrain with no labels imports LightGBM, finds nothing to learn, exits."""


def _config(state: Path, drift: str = "") -> tuple[Config, Path]:
    path = state / "phishgate.toml"
    state.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[storage]\nstate_dir = "{state}"\n[drift]\n{drift}')
    return parse_config(path.read_text(), str(path)), path


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


def test_refresh_sets_the_dashboard_gauges(tmp_path: Path) -> None:
    """Held entries, model age, label count; NaN where there is nothing to say."""
    config, _ = _config(tmp_path)
    store = QuarantineStore(tmp_path)
    first, _second = (store.put(b"Subject: x\n\nbody\n") for _ in range(2))
    assert store.claim(first, "released")
    metrics = Metrics()

    Monitor(metrics, None).refresh(config, BUNDLED.version)

    created = dt.datetime.strptime(BUNDLED.meta["created"], "%Y-%m-%dT%H:%M:%SZ")
    assert _value(metrics, "phishgate_quarantine_messages") == 1
    assert (
        _value(metrics, "phishgate_model_created_timestamp_seconds")
        == created.replace(tzinfo=dt.UTC).timestamp()
    )
    assert _value(metrics, "phishgate_live_labelled_messages") == 0
    assert math.isnan(_value(metrics, "phishgate_live_precision"))
    assert math.isnan(_value(metrics, "phishgate_drift_psi", feature="score"))
    assert _value(metrics, "phishgate_model_reloads_total", result="refused") == 0


def _shifted_log(state: Path, n: int = 200) -> None:
    """Mail unlike the training rows: all phish-like, every message a form."""
    features = dict.fromkeys(DRIFT_FEATURE_NAMES, 0.0)
    features.update(html_present=1.0, html_forms=1.0, url_count=40.0)
    log = VerdictLog(state)
    log.start()
    for _ in range(n):
        log.record(make_row(action="quarantine", phish=0.999, features=features))
    log.close()


def test_shift_warns_once_and_starts_one_retrain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Crossing the threshold: one WARNING naming features, one retrain, cooldown."""
    config, path = _config(tmp_path, "retrain = true\n")
    _shifted_log(tmp_path)
    metrics = Metrics()
    monitor = Monitor(metrics, str(path))

    with caplog.at_level(logging.INFO, logger="phishgate"):
        monitor.refresh(config, BUNDLED.version)
        process = monitor.retrain_process
        assert process is not None
        assert process.wait(RETRAIN_TIMEOUT_S) == 4  # no labels: nothing to learn
        monitor.refresh(config, BUNDLED.version)  # reaps it; the cooldown holds

    assert monitor.retrain_process is None
    assert (tmp_path / RETRAIN_STAMP).exists()
    messages = [r.getMessage() for r in caplog.records]
    warnings = [m for m in messages if "PSI above 0.25" in m]
    assert len(warnings) == 1
    assert all(name in warnings[0] for name in ("score", "html_forms", "url_count"))
    assert sum("starting" in m and "retrain" in m for m in messages) == 1
    assert any("retrain exited with status 4" in m for m in messages)
    assert monitor.shifted >= {"score", "html_present", "html_forms"}
    assert _value(metrics, "phishgate_drift_psi", feature="html_forms") > 0.25


def test_no_retrain_unless_configured(tmp_path: Path) -> None:
    """With [drift] retrain = false a shift is only logged."""
    config, path = _config(tmp_path)
    _shifted_log(tmp_path)
    monitor = Monitor(Metrics(), str(path))
    monitor.refresh(config, BUNDLED.version)
    assert monitor.shifted and monitor.retrain_process is None
    assert not (tmp_path / RETRAIN_STAMP).exists()


def test_served_meta_follows_the_served_version(tmp_path: Path) -> None:
    """A pointer left on a model the daemon refused does not change what is read."""
    config, _ = _config(tmp_path)
    other = models_dir(tmp_path) / "refused-1"
    shutil.copytree(default_model_dir(), other)
    (other / "meta.json").write_text('{"version": "refused-1"}')
    (models_dir(tmp_path) / ACTIVE_FILE).write_text("refused-1\n")

    assert served_meta(config, BUNDLED.version)["created"] == BUNDLED.meta["created"]
    assert served_meta(config, "refused-1") == {"version": "refused-1"}
    assert served_meta(config, "never-seen") == {}


def test_quarantine_operations_are_counted_from_what_the_cli_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Deletes, a purge and a release that cannot reach Postfix, each counted
    by result (a mistyped id is not an operation); a second refresh adds only
    what is new, and a new Monitor (a restarted daemon) starts from the kept
    totals."""
    from phishgate.daemon.quarantine_cli import cmd_delete, cmd_purge, cmd_release

    config = parse_config(
        f'[storage]\nstate_dir = "{tmp_path}"\n'
        f'[proxy]\nreinject = "127.0.0.1:{_closed_port()}"\n'
        f'[quarantine]\npostfix_config_dir = "{tmp_path / "no-postfix"}"\n',
        "t",
    )
    store = QuarantineStore(tmp_path)
    kept, deleted, expired = (store.put(b"Subject: x\n\nbody\n") for _ in range(3))
    with sqlite3.connect(tmp_path / "phishgate.db") as conn:  # older than 30 days
        conn.execute("UPDATE quarantine SET time = time - 31 * 86400")
    assert cmd_delete(config, [deleted, "no-such-entry"]) == 1
    metrics = Metrics()
    monitor = Monitor(metrics, None)
    monitor.refresh(config, BUNDLED.version)
    ops = "phishgate_quarantine_operations_total"
    assert _value(metrics, ops, operation="delete", result="ok") == 1
    assert _value(metrics, ops, operation="delete", result="failed") == 0  # mistyped
    assert _value(metrics, ops, operation="release", result="ok") == 0

    assert cmd_release(config, [kept]) == 1  # nothing listens on the port
    assert cmd_purge(config) == 0  # both held entries are past 30 days
    monitor.refresh(config, BUNDLED.version)
    assert _value(metrics, ops, operation="release", result="failed") == 1
    assert _value(metrics, ops, operation="purge", result="ok") == 2
    assert _value(metrics, ops, operation="delete", result="ok") == 1
    assert expired not in {e.id for e in store.entries()}

    restarted = Metrics()
    Monitor(restarted, None).count_operations(tmp_path / "phishgate.db")
    assert _value(restarted, ops, operation="purge", result="ok") == 2
    capsys.readouterr()


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
