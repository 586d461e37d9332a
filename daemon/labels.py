"""Labels: messages whose true class an admin or a user told us.

Stored raw (for retraining with the current extractor) next to an index
row that records where the label came from; admin labels win over user
labels when both exist for one message.

Schema (table ``labels``, same database as the verdict log)::

    id INTEGER PRIMARY KEY   time REAL   message_id TEXT
    label TEXT (ham | spam | phish)
    source TEXT (admin | admin-release | user-report)   path TEXT   sha256 TEXT
    reporter TEXT (user reports: who reported)
    verdict_id INTEGER (the verdict row of the original, when it was found)
    matched_by TEXT (message-id | fingerprint | none)
    confidence TEXT (attachment | inline: how the original was recovered)

Columns added in later versions are added to an existing table on open.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .verdictlog import DB_NAME

__all__ = ["LABELS", "LabelInfo", "open_labels", "record_label", "store_raw"]

LABELS = ("ham", "spam", "phish")
SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY, time REAL, message_id TEXT, label TEXT,
    source TEXT, path TEXT, sha256 TEXT
);
CREATE INDEX IF NOT EXISTS labels_message_id ON labels (message_id);
"""
LATER_COLUMNS = {
    "reporter": "TEXT",
    "verdict_id": "INTEGER",
    "matched_by": "TEXT",
    "confidence": "TEXT",
}
INDEXES = "CREATE INDEX IF NOT EXISTS labels_reporter_time ON labels (reporter, time);"


@dataclass(frozen=True)
class LabelInfo:
    """Where a user-report label came from; empty for admin labels."""

    reporter: str = ""
    verdict_id: int | None = None
    matched_by: str = ""
    confidence: str = ""


def service_owner(state_dir: Path) -> tuple[int, int] | None:
    """Whose files these are, when root writes into a service's state dir.

    An admin runs ``phishgate report`` or ``quarantine release`` as root in
    a state directory that belongs to the ``phishgate`` user; files root
    creates there must go to that user, or the daemon and the retrain
    service (which run as it) cannot read or add to them.
    """
    if os.geteuid() != 0:
        return None
    try:
        st = state_dir.stat()
    except OSError:
        return None
    return None if st.st_uid == 0 else (st.st_uid, st.st_gid)


def adopt(owner: tuple[int, int] | None, *paths: Path) -> None:
    """Give *paths* (those that exist) to *owner*; nothing when it is None."""
    if owner is None:
        return
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.chown(path, *owner)


def open_labels(state_dir: Path) -> sqlite3.Connection:
    """Connect to the database with the ``labels`` table up to date."""
    state_dir.mkdir(parents=True, exist_ok=True)
    db = state_dir / DB_NAME
    conn = sqlite3.connect(str(db), timeout=30.0)
    adopt(
        service_owner(state_dir),
        db,
        db.with_name(DB_NAME + "-wal"),
        db.with_name(DB_NAME + "-shm"),
    )
    conn.executescript(SCHEMA)
    present = {row[1] for row in conn.execute("PRAGMA table_info(labels)")}
    for name, kind in LATER_COLUMNS.items():
        if name not in present:
            # Only names and types from LATER_COLUMNS enter the SQL text.
            conn.execute(f"ALTER TABLE labels ADD COLUMN {name} {kind}")
    conn.executescript(INDEXES)
    return conn


def store_raw(state_dir: Path, raw: bytes) -> tuple[Path, str]:
    """Write *raw* once under ``labels/`` (mode 0600); returns path and digest."""
    digest = hashlib.sha256(raw).hexdigest()
    folder = state_dir / "labels" / digest[:2]
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{digest}.eml"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(raw)
        tmp.chmod(0o600)
        adopt(service_owner(state_dir), folder.parent, folder, tmp)
        tmp.replace(path)
    return path, digest


def record_label(
    state_dir: Path,
    raw: bytes,
    label: str,
    source: str,
    message_id: str = "",
    info: LabelInfo | None = None,
) -> int:
    """Store *raw* under ``labels/`` and index it; returns the row id."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {', '.join(LABELS)}")
    info = info or LabelInfo()
    path, digest = store_raw(state_dir, raw)
    conn = open_labels(state_dir)
    try:
        with conn:
            cursor = conn.execute(
                "INSERT INTO labels (time, message_id, label, source, path, sha256,"
                " reporter, verdict_id, matched_by, confidence)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    time.time(),
                    message_id,
                    label,
                    source,
                    str(path),
                    digest,
                    info.reporter,
                    info.verdict_id,
                    info.matched_by,
                    info.confidence,
                ),
            )
        return int(cursor.lastrowid or 0)
    finally:
        conn.close()
