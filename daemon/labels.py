"""Labels: messages whose true class an admin or a user told us.

Stored raw (for retraining with the current extractor) next to an index
row that records where the label came from; admin labels win over user
labels when both exist for one message.

Schema (table ``labels``, same database as the verdict log)::

    id INTEGER PRIMARY KEY   time REAL   message_id TEXT
    label TEXT (ham | spam | phish)
    source TEXT (admin | admin-release | user-report)   path TEXT   sha256 TEXT
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

from .verdictlog import DB_NAME

__all__ = ["LABELS", "record_label"]

LABELS = ("ham", "spam", "phish")
SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY, time REAL, message_id TEXT, label TEXT,
    source TEXT, path TEXT, sha256 TEXT
);
CREATE INDEX IF NOT EXISTS labels_message_id ON labels (message_id);
"""


def record_label(
    state_dir: Path, raw: bytes, label: str, source: str, message_id: str = ""
) -> int:
    """Store *raw* under ``labels/`` and index it; returns the row id."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {', '.join(LABELS)}")
    digest = hashlib.sha256(raw).hexdigest()
    folder = state_dir / "labels" / digest[:2]
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{digest}.eml"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(raw)
        tmp.chmod(0o600)
        tmp.replace(path)
    conn = sqlite3.connect(str(state_dir / DB_NAME), timeout=30.0)
    try:
        conn.executescript(SCHEMA)
        with conn:
            cursor = conn.execute(
                "INSERT INTO labels (time, message_id, label, source, path, sha256) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), message_id, label, source, str(path), digest),
            )
        return int(cursor.lastrowid or 0)
    finally:
        conn.close()
