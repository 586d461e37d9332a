"""The verdict log: batched rows, and labels shown next to verdicts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mailfactory import as_bytes, phish
from phishgate.daemon.labels import record_label
from phishgate.daemon.verdictlog import DB_NAME, VerdictLog, make_row, read_verdicts


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
