"""phishgate's own quarantine store: raw messages on disk, an index in SQLite.

A message is durable before a front door says so: the file is written
under a temporary name, fsync'd and renamed into place; then its directory
is fsync'd while the index row is committed (each waits on the disk, so the
two run side by side: about two disk flushes of latency instead of three).
A put that fails at any step takes its row and file back out, so the
front door's 4xx leaves the message with the sender and nothing here.
Files are mode 0600 and fan out over two levels of 256 directories
(``ab/cd/<id>.eml``), which keeps every directory small at millions of
entries.

Schema (table ``quarantine``, same database as the verdict log)::

    id TEXT PRIMARY KEY   time REAL   time_iso TEXT   front_door TEXT
    queue_id TEXT   message_id TEXT   sender TEXT   recipients TEXT (JSON)
    phish REAL   reasons TEXT (JSON)   model_version TEXT   path TEXT
    expires REAL (retention at store time; purge uses the one in force)
    state TEXT (held | released | deleted)

and how many of the admin's operations on it and on the hold queue ended
how (``quarantine_op_counts``; the CLI adds to them, the daemon exports
them; what each operation was is in the CLI's log)::

    operation TEXT (release | delete | purge | digest)
    result TEXT (ok | failed)   count INTEGER
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .verdictlog import DB_NAME

if TYPE_CHECKING:
    from .pipeline import Decision, MessageEnvelope

__all__ = [
    "OPERATIONS",
    "QuarantineEntry",
    "QuarantineStore",
    "held_count",
    "operation_counts",
]

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
    id TEXT PRIMARY KEY, time REAL, time_iso TEXT, front_door TEXT,
    queue_id TEXT, message_id TEXT, sender TEXT, recipients TEXT,
    phish REAL, reasons TEXT, model_version TEXT, path TEXT,
    expires REAL, state TEXT
);
CREATE INDEX IF NOT EXISTS quarantine_state_time ON quarantine (state, time);
DROP INDEX IF EXISTS quarantine_expires;
CREATE TABLE IF NOT EXISTS quarantine_op_counts (
    operation TEXT, result TEXT, count INTEGER NOT NULL,
    PRIMARY KEY (operation, result)
);
"""
OPERATIONS = ("release", "delete", "purge", "digest")
"""What ``phishgate quarantine`` does to held mail, each counted in
``quarantine_op_counts`` (per entry, or per digest mailed) and exported by
the daemon as ``phishgate_quarantine_operations_total``."""


@dataclass(frozen=True)
class QuarantineEntry:
    """One held message, as the index describes it."""

    id: str
    time: float
    queue_id: str
    message_id: str
    sender: str
    recipients: tuple[str, ...]
    phish: float | None
    reasons: tuple[str, ...]
    model_version: str
    path: Path
    expires: float
    state: str

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": dt.datetime.fromtimestamp(self.time, dt.UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "queue_id": self.queue_id,
            "message_id": self.message_id,
            "sender": self.sender,
            "recipients": list(self.recipients),
            "phish": self.phish,
            "reasons": list(self.reasons),
            "model_version": self.model_version,
            "state": self.state,
            "where": "store",
        }


def new_id() -> str:
    """Sortable by time, unguessable: ``20261203T154500-3f9a0c1b2d4e``."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{secrets.token_hex(6)}"


class QuarantineStore:
    """Put, list, read and remove quarantined messages."""

    def __init__(self, state_dir: Path, retention_days: int = 30) -> None:
        self.root = state_dir / "quarantine"
        self.db_path = state_dir / DB_NAME
        self.retention_s = retention_days * 86400
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._local = threading.local()
        self._dir_sync: ThreadPoolExecutor | None = None
        self._dir_sync_lock = threading.Lock()
        self._closed = False
        with self._connect() as conn:
            conn.executescript(SCHEMA)

    def close(self) -> None:
        """Stop the directory-fsync threads; a later put syncs in its own thread."""
        with self._dir_sync_lock:
            self._closed = True
            pool, self._dir_sync = self._dir_sync, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _sync_dir_aside(self, directory: Path) -> Future[None] | None:
        """Start fsyncing *directory* in a helper thread; None once closed."""
        with self._dir_sync_lock:
            if self._closed:
                return None
            if self._dir_sync is None:
                self._dir_sync = ThreadPoolExecutor(
                    2, thread_name_prefix="quarantine-fsync"
                )
            return self._dir_sync.submit(_sync_dir, directory)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.db_path), timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.row_factory = sqlite3.Row
        return conn

    def _thread_connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def path_for(self, entry_id: str) -> Path:
        digest = hashlib.sha1(entry_id.encode()).hexdigest()
        return self.root / digest[:2] / digest[2:4] / f"{entry_id}.eml"

    def put(self, raw: bytes, **fields: Any) -> str:
        """Store *raw* durably and index it; returns the entry id."""
        entry_id = new_id()
        path = self.path_for(entry_id)
        _write_file(path, raw)
        dir_synced: Future[None] | None = None
        indexed = False
        try:
            dir_synced = self._sync_dir_aside(path.parent)
            self._index(entry_id, path, fields)
            indexed = True
            if dir_synced is None:
                _sync_dir(path.parent)
            else:
                dir_synced.result()  # raises the fsync's OSError, if any
        except BaseException:
            # The caller answers 4xx and the sender's MTA keeps the message:
            # no half-stored entry may stay behind to be listed or released.
            if dir_synced is not None and not indexed:
                dir_synced.exception()  # wait; its error, if any, is moot
            self._forget(entry_id, path, indexed, fields.get("queue_id", ""))
            raise
        return entry_id

    def _forget(self, entry_id: str, path: Path, indexed: bool, queue_id: str) -> None:
        """Undo a failed put: its row, then its file; best effort."""
        try:
            if indexed:
                with self._thread_connection() as conn:
                    conn.execute("DELETE FROM quarantine WHERE id = ?", (entry_id,))
            path.unlink(missing_ok=True)
        except (OSError, sqlite3.Error) as exc:
            log.error(
                "queue_id=%s: quarantine: could not undo the failed put of %s: %s",
                queue_id or "-",
                entry_id,
                exc,
            )

    def _index(self, entry_id: str, path: Path, fields: dict[str, Any]) -> None:
        now = time.time()
        row = {
            "id": entry_id,
            "time": now,
            "time_iso": dt.datetime.fromtimestamp(now, dt.UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "front_door": fields.get("front_door", ""),
            "queue_id": fields.get("queue_id", ""),
            "message_id": fields.get("message_id", ""),
            "sender": fields.get("sender", ""),
            "recipients": json.dumps(list(fields.get("recipients", ()))),
            "phish": fields.get("phish"),
            "reasons": json.dumps(list(fields.get("reasons", ()))),
            "model_version": fields.get("model_version", ""),
            "path": str(path),
            "expires": now + self.retention_s,
            "state": "held",
        }
        with self._thread_connection() as conn:
            conn.execute(
                f"INSERT INTO quarantine ({', '.join(row)}) "  # fixed column names
                f"VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            )

    def entries(self, state: str | None = "held") -> Iterator[QuarantineEntry]:
        sql = "SELECT * FROM quarantine"
        params: list[str] = []
        if state:
            sql += " WHERE state = ?"
            params.append(state)
        with self._connect() as conn:
            rows = conn.execute(sql + " ORDER BY time DESC", params).fetchall()
        for row in rows:
            yield _entry(row)

    def get(self, entry_id: str) -> QuarantineEntry | None:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT * FROM quarantine WHERE id = ?", (entry_id,)
            ).fetchone()
        return _entry(row) if row else None

    def raw(self, entry: QuarantineEntry) -> bytes:
        return entry.path.read_bytes()

    def claim(self, entry_id: str, state: str) -> bool:
        """Move a held entry to *state* unless someone else moved it first.

        Whoever claims an entry owns its release or deletion, so two admins
        releasing the same entry deliver it once. Its file stays until the
        caller :meth:`finish` es (or :meth:`unclaim` s on failure).
        """
        with contextlib.closing(self._connect()) as conn, conn:
            moved = conn.execute(
                "UPDATE quarantine SET state = ? WHERE id = ? AND state = 'held'",
                (state, entry_id),
            ).rowcount
        return moved == 1

    def unclaim(self, entry_id: str) -> None:
        """Hold a claimed entry again (its release failed)."""
        with contextlib.closing(self._connect()) as conn, conn:
            conn.execute(
                "UPDATE quarantine SET state = 'held' WHERE id = ?", (entry_id,)
            )

    def finish(self, entry: QuarantineEntry) -> None:
        """Remove a claimed entry's file."""
        entry.path.unlink(missing_ok=True)

    def count(self, operation: str, ok: bool, times: int = 1) -> None:
        """Count an admin operation for the daemon's metrics; never raises."""
        result = "ok" if ok else "failed"
        try:
            with contextlib.closing(self._connect()) as conn, conn:
                conn.execute(
                    "INSERT INTO quarantine_op_counts VALUES (?, ?, ?) ON CONFLICT "
                    "(operation, result) DO UPDATE SET count = count + excluded.count",
                    (operation, result, times),
                )
        except sqlite3.Error as exc:  # the operation itself is done or reported
            log.warning("quarantine: %s (%s) not counted: %s", operation, result, exc)

    def purge(
        self, retention_days: float | None = None, now: float | None = None
    ) -> list[str]:
        """Delete entries held longer than *retention_days* (the store's own
        setting when None), in one transaction; returns their ids.

        The age counts from when each was stored, so a retention raised
        since then keeps older entries too. An entry released or deleted
        meanwhile is left as it is. The files go after the commit; one that
        cannot be removed is logged and counted as a failed purge (its row
        says deleted; remove the file by hand).
        """
        now = time.time() if now is None else now
        days = self.retention_s / 86400 if retention_days is None else retention_days
        # One write transaction from the SELECT on (BEGIN IMMEDIATE), so the
        # UPDATE changes exactly the rows selected; no UPDATE ... RETURNING,
        # which needs SQLite 3.35.
        expired = "WHERE state = 'held' AND time < ?"
        cutoff = (now - days * 86400,)
        conn = self._connect()
        conn.isolation_level = None
        try:
            conn.execute("BEGIN IMMEDIATE")
            rows = conn.execute(
                f"SELECT id, path, queue_id FROM quarantine {expired}", cutoff
            ).fetchall()
            conn.execute(f"UPDATE quarantine SET state = 'deleted' {expired}", cutoff)
            conn.execute("COMMIT")
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.count("purge", ok=False)
            raise
        finally:
            conn.close()
        removed, stuck = [], 0
        for row in rows:
            try:
                Path(row["path"]).unlink(missing_ok=True)
            except OSError as exc:
                stuck += 1
                log.error(
                    "queue_id=%s: quarantine: purged %s, but its file stays: %s",
                    row["queue_id"] or "-",
                    row["id"],
                    exc,
                )
            removed.append(row["id"])
        if len(removed) > stuck:
            self.count("purge", ok=True, times=len(removed) - stuck)
        if stuck:
            self.count("purge", ok=False, times=stuck)
        return removed


def _entry(row: sqlite3.Row) -> QuarantineEntry:
    return QuarantineEntry(
        id=row["id"],
        time=row["time"],
        queue_id=row["queue_id"] or "",
        message_id=row["message_id"] or "",
        sender=row["sender"] or "",
        recipients=tuple(json.loads(row["recipients"] or "[]")),
        phish=row["phish"],
        reasons=tuple(json.loads(row["reasons"] or "[]")),
        model_version=row["model_version"] or "",
        path=Path(row["path"]),
        expires=row["expires"],
        state=row["state"],
    )


def _write_file(path: Path, data: bytes) -> None:
    """Write *path* under a temporary name, fsync it and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a disk-full write leaves no stray file
        raise


def _sync_dir(directory: Path) -> None:
    """Make the names in *directory* durable (the rename of a new entry)."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def store_decision(
    store: QuarantineStore,
    envelope: MessageEnvelope,
    raw: bytes,
    decision: Decision,
    recipients: tuple[str, ...] | None = None,
) -> str:
    """Quarantine *raw* with our verdict headers; blocking (disk and fsync)."""
    from .headers import rewrite_headers

    verdict = decision.verdict
    return store.put(
        rewrite_headers(raw, decision.headers),
        front_door=envelope.front_door,
        queue_id=envelope.queue_id,
        message_id=decision.message_id,
        sender=envelope.mail_from,
        recipients=recipients if recipients is not None else envelope.rcpt_to,
        phish=verdict.phish if verdict else None,
        reasons=verdict.reasons if verdict else (),
        model_version=verdict.model_version if verdict else "",
    )


def held_count(db_path: Path) -> int:
    """Entries held in the store now (0 before anything was quarantined)."""
    if not db_path.exists():
        return 0
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10.0)
    try:
        row = conn.execute(
            "SELECT COUNT(*) FROM quarantine WHERE state = 'held'"
        ).fetchone()
    except sqlite3.OperationalError:  # no quarantine table yet
        return 0
    finally:
        conn.close()
    return int(row[0])


def operation_counts(db_path: Path) -> dict[tuple[str, str], int]:
    """Counted admin operations by (operation, result); empty before any."""
    if not db_path.exists():
        return {}
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10.0)
    try:
        rows = conn.execute(
            "SELECT operation, result, count FROM quarantine_op_counts"
        ).fetchall()
    except sqlite3.OperationalError:  # no table yet
        return {}
    finally:
        conn.close()
    return {(op, result): int(n) for op, result, n in rows}
