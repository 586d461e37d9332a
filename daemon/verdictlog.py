"""The verdict log: one SQLite row per scanned message.

One writer thread owns the connection and inserts rows in batches, so the
event loop only appends a dict to a deque and never waits on disk. The
writer wakes on a clock (every ``BATCH_SECONDS``), not on each row: a thread
woken per message takes the GIL each time, and the event loop waits for it
back. The database runs in WAL mode, so ``phishgate log`` and ad-hoc queries
(``sqlite-utils``, Datasette) can read while the daemon writes.

Schema (table ``verdicts``)::

    id INTEGER PRIMARY KEY   time REAL (Unix seconds)   time_iso TEXT (UTC)
    front_door TEXT (milter | proxy)   queue_id TEXT   message_id TEXT
    client_addr TEXT   sender TEXT   recipients TEXT (JSON list)
    from_header TEXT   subject TEXT (first 200 characters)   size INTEGER
    ham REAL   spam REAL   phish REAL   action TEXT   reasons TEXT (JSON list)
    model_version TEXT   scan_ms REAL   status TEXT (scanned | skipped: why)
    fingerprint TEXT (the body digest that finds a reported copy again)
    features TEXT (JSON object: the drift features' values, see drift.py)

A database from before a column was added gets it on open (``ALTER TABLE
... ADD COLUMN``); the old rows hold NULL there.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlite_utils

__all__ = ["ACTIONS", "DB_NAME", "VerdictLog", "read_verdicts", "winning_labels"]

log = logging.getLogger(__name__)

DB_NAME = "phishgate.db"
ACTIONS = ("accept", "tag", "quarantine", "reject", "tempfail", "report")
"""What a verdict row's ``action`` can be."""
BATCH_ROWS = 200
BATCH_SECONDS = 0.2
COLUMNS: dict[str, type] = {
    "id": int, "time": float, "time_iso": str, "front_door": str, "queue_id": str,
    "message_id": str, "client_addr": str, "sender": str, "recipients": str,
    "from_header": str, "subject": str, "size": int, "ham": float, "spam": float,
    "phish": float, "action": str, "reasons": str, "model_version": str,
    "scan_ms": float, "status": str, "fingerprint": str, "features": str,
}  # fmt: skip
INDEXES = (
    ["time"], ["queue_id"], ["message_id"], ["action", "time"], ["fingerprint"],
)  # fmt: skip


def open_db(path: Path) -> sqlite_utils.Database:
    """Open (creating if needed) the database with WAL and the schema."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False)
    # Imported here: scan workers import this module (for DB_NAME, through
    # drift) but never write, and sqlite-utils with its CLI dependencies is
    # some 10 MB per process.
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    db.enable_wal()
    table = db.table("verdicts")
    if "verdicts" not in db.table_names():
        table.create(COLUMNS, pk="id")
    _add_missing_columns(db, path)
    for columns in INDEXES:
        table.create_index(columns, if_not_exists=True)
    return db


def _add_missing_columns(db: sqlite_utils.Database, path: Path) -> None:
    """Bring a table created by an older phishgate up to ``COLUMNS``."""
    table = db.table("verdicts")
    have = set(table.columns_dict)
    for name, kind in COLUMNS.items():
        if name not in have:
            log.info("verdict log %s: adding column %s", path, name)
            table.add_column(name, kind)


class VerdictLog:
    """Batches verdict rows to SQLite from a thread of its own."""

    def __init__(
        self, state_dir: Path, on_drop: Callable[[int], object] | None = None
    ) -> None:
        self.path = state_dir / DB_NAME
        self._on_drop = on_drop  # told how many rows were given up on
        self._pending: deque[dict[str, Any]] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="verdict-log", daemon=True
        )
        self._db = open_db(self.path)
        self.written = 0
        self.failed = 0

    def start(self) -> None:
        self._thread.start()

    def record(self, row: dict[str, Any]) -> None:
        """Queue one row; returns at once (the writer takes it within
        ``BATCH_SECONDS``)."""
        self._pending.append(row)  # deque.append is atomic: no lock, no wake-up

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued, then stop the writer."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        else:  # never started (tests, tools): write here
            self._drain()
        self._db.conn.close()

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(BATCH_SECONDS)
            self._drain()
            if stopping:
                return

    def _drain(self) -> None:
        """Write every queued row, in batches of at most ``BATCH_ROWS``."""
        pending = self._pending
        while pending:
            batch: list[dict[str, Any]] = []
            while pending and len(batch) < BATCH_ROWS:
                batch.append(pending.popleft())
            self._write(batch)

    def _write(self, batch: list[dict[str, Any]]) -> None:
        for attempt in range(5):
            try:
                with self._db.conn:
                    self._db.table("verdicts").insert_all(batch)
                self.written += len(batch)
                return
            except sqlite3.OperationalError as exc:  # locked by a reader/writer
                log.warning("verdict log busy (%s), retry %d", exc, attempt + 1)
                time.sleep(0.2 * (attempt + 1))
            except Exception:  # corrupt file, full disk: the writer carries on
                log.exception("verdict log %s: could not write", self.path)
                break
        self.failed += len(batch)
        log.error("verdict log: dropped %d rows", len(batch))
        if self._on_drop is not None:
            self._on_drop(len(batch))

    def purge(self, retention_days: int) -> int:
        """Delete rows older than the retention period; returns how many."""
        cutoff = time.time() - retention_days * 86400
        with self._db.conn:
            cursor = self._db.conn.execute(
                "DELETE FROM verdicts WHERE time < ?", (cutoff,)
            )
        return cursor.rowcount


def make_row(**values: Any) -> dict[str, Any]:
    """A verdict row with JSON-encoded lists and the time filled in."""
    now = values.pop("time", None) or time.time()
    row = {k: values.get(k) for k in COLUMNS if k not in ("id", "time", "time_iso")}
    row["time"] = now
    row["time_iso"] = dt.datetime.fromtimestamp(now, dt.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    for key in ("recipients", "reasons"):
        value = row.get(key)
        if isinstance(value, list | tuple):
            row[key] = json.dumps(list(value), ensure_ascii=False)
    features = row.get("features")
    if isinstance(features, Mapping):
        row["features"] = encode_features(features)
    if row.get("subject"):
        row["subject"] = str(row["subject"])[:200]
    return row


def encode_features(values: Mapping[str, float]) -> str:
    """The ``features`` column: compact JSON, integers without a fraction."""
    compact = {
        name: int(value) if float(value).is_integer() else round(float(value), 4)
        for name, value in values.items()
    }
    return json.dumps(compact, separators=(",", ":"))


def read_verdicts(
    path: Path, since: float | None = None, action: str | None = None, limit: int = 100
) -> Iterator[dict[str, Any]]:
    """Newest-first rows for ``phishgate log``, lists decoded."""
    if not path.exists():
        return
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
    conn.row_factory = sqlite3.Row
    clauses: list[str] = []
    params: list[float | str] = []
    if since is not None:
        clauses.append("time >= ?")
        params.append(since)
    if action:
        clauses.append("action = ?")
        params.append(action)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    # Only fixed strings go into the SQL text; the values are parameters.
    sql = f"SELECT * FROM verdicts {where} ORDER BY time DESC, id DESC LIMIT ?"
    try:
        labels = _labels_by_message_id(conn)
        for record in conn.execute(sql, [*params, limit]):
            row = dict(record)
            for key in ("recipients", "reasons"):
                row[key] = json.loads(row[key]) if row.get(key) else []
            row["features"] = (
                json.loads(row["features"]) if row.get("features") else None
            )
            row["label"] = labels.get(row.get("message_id") or "")
            yield row
    finally:
        conn.close()


# Admin labels win over user labels; among equals the newest wins.
_LABEL_RANK = {"admin": 2, "admin-release": 2, "user-report": 1}


def _labels_by_message_id(conn: sqlite3.Connection) -> dict[str, str]:
    """The winning label of each Message-ID, if the labels table exists."""
    try:
        rows = conn.execute(
            "SELECT message_id, label, source, time FROM labels WHERE message_id != ''"
        ).fetchall()
    except sqlite3.OperationalError:  # no labels recorded yet
        return {}
    best: dict[str, tuple[int, float, str]] = {}
    for message_id, label, source, when in rows:
        key = (_LABEL_RANK.get(source, 0), when or 0.0, label)
        if message_id not in best or key[:2] >= best[message_id][:2]:
            best[message_id] = key
    return {message_id: key[2] for message_id, key in best.items()}


def winning_labels(conn: sqlite3.Connection) -> dict[str, str]:
    """Message-ID -> label, admin over user reports (for monitoring)."""
    return _labels_by_message_id(conn)
