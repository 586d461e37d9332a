"""The verdict log: batched rows, and labels shown next to verdicts."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest
from mailfactory import as_bytes, phish
from phishgate.daemon.labels import record_label
from phishgate.daemon.verdictlog import (
    BATCH_ROWS,
    BATCH_SECONDS,
    DB_NAME,
    VerdictLog,
    make_row,
    read_verdicts,
)


def _log_two(state: Path) -> None:
    log = VerdictLog(state)
    log.start()
    log.record(
        make_row(message_id="<a@x>", action="quarantine", phish=0.97, reasons=["r"])
    )
    log.record(make_row(message_id="<b@x>", action="accept", phish=0.01, reasons=[]))
    log.close()


def test_rows_are_written_and_read_back(tmp_path: Path) -> None:
    """Queued rows reach SQLite on close and read back newest first, lists decoded."""
    _log_two(tmp_path)
    rows = list(read_verdicts(tmp_path / DB_NAME))
    assert [r["message_id"] for r in rows] == ["<b@x>", "<a@x>"]
    assert rows[1]["reasons"] == ["r"]
    assert all(r["label"] is None for r in rows)
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_rows_land_while_the_daemon_runs(tmp_path: Path) -> None:
    """Without a close, the writer's clock flushes every row (two batches and more)."""
    log = VerdictLog(tmp_path)
    log.start()
    try:
        for n in range(BATCH_ROWS * 2 + 5):
            log.record(make_row(message_id=f"<{n}@x>", action="accept", phish=0.0))
        deadline = time.monotonic() + 10 * BATCH_SECONDS + 5
        while log.written < BATCH_ROWS * 2 + 5 and time.monotonic() < deadline:
            time.sleep(BATCH_SECONDS / 2)
        assert log.written == BATCH_ROWS * 2 + 5
        assert len(list(read_verdicts(tmp_path / DB_NAME, limit=1000))) == log.written
    finally:
        log.close()


def test_a_batch_that_cannot_be_written_is_counted_and_the_writer_goes_on(
    tmp_path: Path,
) -> None:
    """A write that fails for good (not a busy lock) drops that batch, says
    how many rows, and the rows after it are still written."""
    dropped: list[int] = []
    log = VerdictLog(tmp_path, on_drop=dropped.append)
    log.start()
    try:
        bad = make_row(message_id="<bad@x>", action="accept", phish=0.0)
        bad["size"] = object()  # no SQLite type: the insert raises
        log.record(bad)
        deadline = time.monotonic() + 10 * BATCH_SECONDS + 5
        while not dropped and time.monotonic() < deadline:
            time.sleep(BATCH_SECONDS / 2)
        assert dropped == [1]
        log.record(make_row(message_id="<good@x>", action="accept", phish=0.0))
        while log.written < 1 and time.monotonic() < deadline:
            time.sleep(BATCH_SECONDS / 2)
        assert log.written == 1 and log.failed == 1
    finally:
        log.close()
    assert [r["message_id"] for r in read_verdicts(tmp_path / DB_NAME)] == ["<good@x>"]


def test_close_writes_rows_of_a_log_never_started(tmp_path: Path) -> None:
    """A tool that records and closes without the writer thread loses nothing."""
    log = VerdictLog(tmp_path)
    log.record(make_row(message_id="<only@x>", action="accept", phish=0.0))
    log.close()
    assert [r["message_id"] for r in read_verdicts(tmp_path / DB_NAME)] == ["<only@x>"]


def test_labels_appear_and_admin_wins(tmp_path: Path) -> None:
    """A label shows on its verdict; an admin label beats a later user report."""
    _log_two(tmp_path)
    raw = as_bytes(phish())
    record_label(tmp_path, raw, "ham", "admin-release", message_id="<a@x>")
    record_label(tmp_path, raw, "phish", "user-report", message_id="<a@x>")
    labels = {r["message_id"]: r["label"] for r in read_verdicts(tmp_path / DB_NAME)}
    assert labels == {"<a@x>": "ham", "<b@x>": None}
    only = list(read_verdicts(tmp_path / DB_NAME, action="quarantine"))
    assert [r["message_id"] for r in only] == ["<a@x>"]


OLD_SCHEMA = """
CREATE TABLE verdicts (
    id INTEGER PRIMARY KEY, time REAL, time_iso TEXT, front_door TEXT,
    queue_id TEXT, message_id TEXT, client_addr TEXT, sender TEXT,
    recipients TEXT, from_header TEXT, subject TEXT, size INTEGER, ham REAL,
    spam REAL, phish REAL, action TEXT, reasons TEXT, model_version TEXT,
    scan_ms REAL, status TEXT
);
INSERT INTO verdicts (time, message_id, action, phish, reasons, status)
VALUES (1.0, '<old@x>', 'accept', 0.02, '[]', 'scanned');
"""


def test_old_table_gains_the_features_column(tmp_path: Path) -> None:
    """A log from before the features column gets it on open; old rows stay."""
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.executescript(OLD_SCHEMA)
    conn.close()

    log = VerdictLog(tmp_path)
    log.start()
    log.record(
        make_row(message_id="<new@x>", action="tag", features={"url_count": 3.0})
    )
    log.close()

    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(verdicts)")]
        stored = conn.execute("SELECT features FROM verdicts ORDER BY id").fetchall()
    conn.close()
    assert columns[-1] == "features"
    assert stored == [(None,), ('{"url_count":3}',)]
    rows = {r["message_id"]: r for r in read_verdicts(tmp_path / DB_NAME)}
    assert rows["<old@x>"]["features"] is None and rows["<old@x>"]["phish"] == 0.02
    assert rows["<new@x>"]["features"] == {"url_count": 3}


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_labels_root_records_belong_to_the_state_dirs_owner(tmp_path: Path) -> None:
    """An admin's `phishgate report` as root leaves files the service user owns."""
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)  # as if it belonged to the phishgate user
    record_label(state, as_bytes(phish()), "phish", "admin", "<p@x>")
    made = [state / DB_NAME, *state.rglob("*")]
    assert {(p.name, p.stat().st_uid, p.stat().st_gid) for p in made} == {
        (p.name, 65534, 65534) for p in made
    }
    assert any(p.suffix == ".eml" for p in made)
