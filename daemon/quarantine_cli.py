"""``phishgate quarantine``: one view of phishgate's store and Postfix's hold queue.

Entries in the store have ids like ``20261203T154500-3f9a0c1b2d4e``; entries in
Postfix's hold queue are shown by their queue id with ``where = hold``, their
score and reasons taken from the verdict log row of that queue id.
Releasing re-injects a stored message into Postfix's re-injection smtpd
(``[proxy] reinject``, which has no filters) for its original recipients,
or runs ``postsuper -H`` for a held one, and records a ``ham`` label from
the admin (a wrong quarantine is the best training example there is).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import smtplib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

from .config import Config
from .digest import digest_message, group_by_recipient
from .labels import record_label
from .quarantine import QuarantineEntry, QuarantineStore
from .verdictlog import DB_NAME

__all__ = ["hold_entries", "quarantine_command"]

log = logging.getLogger(__name__)

POSTFIX_TIMEOUT_S = 30
"""Seconds for one postqueue/postsuper/postcat run."""
SQL_VARIABLES = 500
"""Queue ids per verdict-log query (SQLite limits bound parameters)."""


def _postfix_env(config: Config) -> list[str]:
    directory = config.quarantine.postfix_config_dir
    return ["-c", directory] if directory else []


def _postfix(config: Config, program: str, *args: str) -> bytes:
    """Run a Postfix command on the configured instance; its stdout."""
    path = shutil.which(program) or f"/usr/sbin/{program}"
    return subprocess.run(
        [path, *_postfix_env(config), *args],
        check=True,
        capture_output=True,
        timeout=POSTFIX_TIMEOUT_S,
    ).stdout


def hold_entries(config: Config) -> Iterator[dict[str, Any]]:
    """Messages in Postfix's hold queue, from ``postqueue -j``."""
    postqueue = shutil.which("postqueue") or "/usr/sbin/postqueue"
    try:
        out = subprocess.run(
            [postqueue, *_postfix_env(config), "-j"],
            capture_output=True,
            timeout=30,
            check=True,
            text=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("postqueue unavailable: %s", exc)
        return
    for line in out.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if item.get("queue_name") == "hold":
            yield {
                "id": item["queue_id"],
                "time": time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime(item.get("arrival_time", 0))
                ),
                "sender": item.get("sender", ""),
                "recipients": [
                    r.get("address", "") for r in item.get("recipients", [])
                ],
                "queue_id": item["queue_id"],
                "message_id": "",
                "phish": None,
                "reasons": [],
                "where": "hold",
            }


def with_verdicts(config: Config, held: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill in message id, score and reasons of hold entries from the verdict log."""
    path = config.state_dir / DB_NAME
    if not held or not path.exists():
        return held
    found: dict[str, dict[str, Any]] = {}
    ids = [entry["id"] for entry in held]
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
        ) as conn:
            for start in range(0, len(ids), SQL_VARIABLES):
                chunk = ids[start : start + SQL_VARIABLES]
                marks = ", ".join("?" * len(chunk))
                sql = (  # only "?" marks go into the text; the ids are parameters
                    "SELECT queue_id, message_id, phish, reasons, from_header,"
                    f" subject FROM verdicts WHERE queue_id IN ({marks}) ORDER BY id"
                )
                for row in conn.execute(sql, chunk):
                    queue_id, message_id, phish, reasons, from_header, subject = row
                    found[queue_id] = {
                        "message_id": message_id or "",
                        "phish": phish,
                        "reasons": json.loads(reasons or "[]"),
                        "from_header": from_header or "",
                        "subject": subject or "",
                    }
    except sqlite3.Error as exc:
        log.warning("verdict log unreadable, hold entries without scores: %s", exc)
    return [entry | found.get(entry["id"], {}) for entry in held]


def _store(config: Config) -> QuarantineStore:
    return QuarantineStore(config.state_dir, config.quarantine.retention_days)


def cmd_list(config: Config, as_json: bool) -> int:
    rows = [e.as_json() for e in _store(config).entries()]
    rows += with_verdicts(config, list(hold_entries(config)))
    for row in rows:
        if as_json:
            print(json.dumps(row, ensure_ascii=False))
        else:
            phish = "-" if row["phish"] is None else f"{row['phish']:.3f}"
            print(
                f"{row['id']:<32} {row['where']:<5} {row['time']} phish={phish} "
                f"{','.join(row['recipients'])} {'; '.join(row['reasons'][:2])}"
            )
    if not rows and not as_json:  # say so, on stderr: stdout stays parseable
        print(
            f"phishgate: quarantine is empty (store in {config.state_dir}, "
            "and Postfix's hold queue)",
            file=sys.stderr,
        )
    return 0


def cmd_show(config: Config, entry_id: str, raw: bool) -> int:
    """An entry's verdict and headers (the whole message with *raw*), from the
    store or from Postfix's hold queue."""
    entry = _store(config).get(entry_id)
    row: dict[str, Any]
    if entry is not None and entry.state != "held":
        print(f"phishgate: quarantine: {entry_id} was {entry.state}", file=sys.stderr)
        return 1
    if entry is not None:
        row, data = entry.as_json(), entry.path.read_bytes()
    else:
        held = [h for h in hold_entries(config) if h["id"] == entry_id]
        if not held:
            print(f"phishgate: quarantine: no entry {entry_id}", file=sys.stderr)
            return 1
        try:
            data = _postfix(config, "postcat", "-bh", "-q", entry_id)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"phishgate: quarantine: show {entry_id}: {exc}", file=sys.stderr)
            return 1
        (row,) = with_verdicts(config, held)
    if raw:
        sys.stdout.buffer.write(data)
        return 0
    print(json.dumps(row, indent=1, ensure_ascii=False))
    headers = BytesHeaderParser(policy=compat32).parsebytes(data)
    for key, value in headers.items():
        print(f"{key}: {value}")
    return 0


def _reinject(config: Config, entry: QuarantineEntry, data: bytes) -> None:
    host, _, port = config.proxy.reinject.rpartition(":")
    envelope = [entry.sender, *entry.recipients]
    # RFC 6531: a UTF-8 address may only be sent under SMTPUTF8.
    options = [] if all(a.isascii() for a in envelope) else ["SMTPUTF8"]
    with smtplib.SMTP(host.strip("[]"), int(port), timeout=60) as smtp:
        smtp.sendmail(entry.sender, list(entry.recipients), data, mail_options=options)


def cmd_release(config: Config, ids: list[str]) -> int:
    store, failed = _store(config), 0
    held = {h["id"]: h for h in hold_entries(config)}
    for entry_id in ids:
        try:
            _release_one(config, store, held, entry_id)
        except KeyError:
            print(
                f"phishgate: quarantine: release {entry_id}: no such held message",
                file=sys.stderr,
            )
            failed += 1  # a mistyped id: nothing was tried, nothing to count
        except (
            OSError,
            sqlite3.Error,
            smtplib.SMTPException,
            subprocess.SubprocessError,
        ) as exc:
            print(f"phishgate: quarantine: release {entry_id}: {exc}", file=sys.stderr)
            store.count("release", ok=False)
            failed += 1
        else:
            store.count("release", ok=True)
    return 1 if failed else 0


def _release_one(
    config: Config, store: QuarantineStore, held: dict[str, Any], entry_id: str
) -> None:
    entry = store.get(entry_id)
    if entry is not None and entry.state == "held":
        data = entry.path.read_bytes()
        # Claimed before sending: a second release (or a purge) finds it
        # gone, so the message is delivered once; back to held if it fails.
        if not store.claim(entry_id, "released"):
            raise KeyError("no such held message")
        try:
            _reinject(config, entry, data)
        except BaseException:
            store.unclaim(entry_id)
            raise
        store.finish(entry)
        try:
            record_label(
                config.state_dir,
                data,
                "ham",
                "admin-release",
                message_id=entry.message_id,
            )
        except (OSError, sqlite3.Error) as exc:
            log.warning(
                "released %s, but its ham label was not recorded: %s", entry_id, exc
            )
    elif entry_id in held:
        data = _postfix(config, "postcat", "-bh", "-q", entry_id)
        _postfix(config, "postsuper", "-H", entry_id)
        # -H moves the message to the deferred queue, which Postfix scans only
        # every queue_run_delay (300 s by default): ask for delivery now.
        try:
            _postfix(config, "postqueue", "-i", entry_id)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning(
                "released %s; delivery at the next queue run: %s", entry_id, exc
            )
        message_id = BytesHeaderParser(policy=compat32).parsebytes(data)["Message-ID"]
        record_label(
            config.state_dir,
            data,
            "ham",
            "admin-release",
            message_id=" ".join(str(message_id or "").split()),
        )
    else:
        raise KeyError("no such held message")
    log.info("quarantine: released %s", entry_id)
    print(f"released {entry_id}")


def cmd_delete(config: Config, ids: list[str]) -> int:
    store, failed = _store(config), 0
    held = {h["id"] for h in hold_entries(config)}
    for entry_id in ids:
        try:
            _delete_one(config, store, held, entry_id)
        except KeyError:
            print(
                f"phishgate: quarantine: delete {entry_id}: no such held message",
                file=sys.stderr,
            )
            failed += 1  # a mistyped id: nothing was tried, nothing to count
        except (OSError, sqlite3.Error, subprocess.SubprocessError) as exc:
            print(f"phishgate: quarantine: delete {entry_id}: {exc}", file=sys.stderr)
            store.count("delete", ok=False)
            failed += 1
        else:
            store.count("delete", ok=True)
    return 1 if failed else 0


def _delete_one(
    config: Config, store: QuarantineStore, held: set[str], entry_id: str
) -> None:
    entry = store.get(entry_id)
    if entry is not None and entry.state == "held":
        if not store.claim(entry_id, "deleted"):
            raise KeyError("no such held message")
        store.finish(entry)
    elif entry_id in held:
        _postfix(config, "postsuper", "-d", entry_id)
    else:
        raise KeyError("no such held message")
    log.info("quarantine: deleted %s", entry_id)
    print(f"deleted {entry_id}")


def cmd_digest(config: Config, since: float, dry_run: bool) -> int:
    """Mail each recipient the list of what was held for them since *since*."""
    sender = config.quarantine.digest_from
    if not sender and not dry_run:
        print(
            "phishgate: quarantine digest: set [quarantine] digest_from first",
            file=sys.stderr,
        )
        return 2
    cutoff = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
    store = _store(config)
    entries = [
        row | _stored_headers(entry)
        for entry in store.entries()
        if (row := entry.as_json())["time"] >= cutoff
    ]
    entries += [
        row
        for row in with_verdicts(config, list(hold_entries(config)))
        if row["time"] >= cutoff
    ]
    failed = 0
    days = config.quarantine.retention_days
    for rcpt, items in group_by_recipient(entries).items():
        message = digest_message(rcpt, items, sender or "postmaster@localhost", days)
        if dry_run:
            sys.stdout.buffer.write(message + b"\n")
            continue
        try:
            _send_digest(config, sender, rcpt, message)
        except (OSError, smtplib.SMTPException) as exc:
            print(f"phishgate: quarantine digest to {rcpt}: {exc}", file=sys.stderr)
            store.count("digest", ok=False)
            failed += 1
            continue
        store.count("digest", ok=True)
        log.info("quarantine: digest of %d entries sent to %s", len(items), rcpt)
    return 1 if failed else 0


def _stored_headers(entry: QuarantineEntry) -> dict[str, str]:
    with entry.path.open("rb") as file:
        headers = BytesHeaderParser(policy=compat32).parse(file)
    return {
        "from_header": str(headers["From"] or ""),
        "subject": str(headers["Subject"] or ""),
    }


def _send_digest(config: Config, sender: str, rcpt: str, message: bytes) -> None:
    host, _, port = (config.quarantine.digest_via or config.proxy.reinject).rpartition(
        ":"
    )
    options = [] if rcpt.isascii() else ["SMTPUTF8"]
    with smtplib.SMTP(host.strip("[]"), int(port), timeout=60) as smtp:
        smtp.sendmail(sender, [rcpt], message, mail_options=options)


def cmd_purge(config: Config) -> int:
    try:
        removed = _store(config).purge()
    except sqlite3.Error as exc:
        print(f"phishgate: quarantine: purge: {exc}", file=sys.stderr)
        return 1
    print(f"purged {len(removed)} expired entries")
    return 0


def quarantine_command(config: Config, args: Any) -> int:
    """Dispatch ``phishgate quarantine ACTION``."""
    if args.action == "list":
        return cmd_list(config, args.json)
    if args.action == "show":
        return cmd_show(config, args.ids[0], args.raw)
    if args.action == "release":
        return cmd_release(config, args.ids)
    if args.action == "delete":
        return cmd_delete(config, args.ids)
    if args.action == "digest":
        return cmd_digest(config, args.since, args.dry_run)
    return cmd_purge(config)
