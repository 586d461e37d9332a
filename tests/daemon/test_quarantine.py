"""The quarantine store (files, index, expiry) and the proxy's header edits."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest
from mailfactory import as_bytes, phish, plain
from phishgate.daemon.headers import rewrite_headers
from phishgate.daemon.labels import record_label
from phishgate.daemon.proxy import _split_params
from phishgate.daemon.quarantine import QuarantineStore


def test_put_writes_a_private_file_and_an_index_row(tmp_path: Path) -> None:
    """A stored message is on disk (0600, fanned out) and listed."""
    store = QuarantineStore(tmp_path)
    raw = as_bytes(phish())
    entry_id = store.put(
        raw, queue_id="ABC", recipients=["ann@example.org"], phish=0.99
    )
    (entry,) = list(store.entries())
    assert entry.id == entry_id and entry.queue_id == "ABC"
    assert entry.recipients == ("ann@example.org",)
    assert store.raw(entry) == raw
    assert stat.S_IMODE(entry.path.stat().st_mode) == 0o600
    assert entry.path.parent.parent.parent == tmp_path / "quarantine"


def test_put_flushes_the_file_and_its_directory_before_returning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The message is fsync'd before its row exists; the directory before put ends.

    A failed directory fsync fails the put, so the front door answers 4xx,
    and leaves neither a row nor a file behind: the sender still has the
    message, and a half-stored copy must not be listed or released.
    """
    store = QuarantineStore(tmp_path)
    synced: list[tuple[str, bool]] = []  # (what, row already indexed)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if store.root in target.parents:
            kind = "dir" if target.is_dir() else "file"
            with sqlite3.connect(store.db_path) as conn:
                rows = conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
            synced.append((kind, rows > 0))
            if kind == "dir" and fail_dir:
                raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    fail_dir = False
    store.put(as_bytes(phish()), recipients=["ann@example.org"])
    assert ("file", False) in synced
    assert [kind for kind, _ in synced].count("dir") == 1
    fail_dir = True
    with pytest.raises(OSError, match="Input/output"):
        store.put(as_bytes(phish()), recipients=["ann@example.org"])
    assert len(list(store.entries())) == 1
    files = [p for p in store.root.rglob("*") if p.is_file()]
    assert len(files) == 1
    store.close()


def test_put_that_cannot_write_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write failing part way (disk full) removes its temporary file."""
    store = QuarantineStore(tmp_path)

    def write(fd: int, data: bytes | memoryview) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(OSError, match="No space"):
        store.put(as_bytes(phish()), recipients=["ann@example.org"])
    monkeypatch.undo()
    assert list(store.entries()) == []
    assert [p for p in store.root.rglob("*") if p.is_file()] == []


def test_delete_keeps_the_row_and_removes_the_file(tmp_path: Path) -> None:
    """Deleting keeps the row (state deleted) and removes the file."""
    store = QuarantineStore(tmp_path)
    entry_id = store.put(b"Subject: x\r\n\r\nbody")
    path = store.path_for(entry_id)
    assert store.claim(entry_id, "deleted")
    store.finish(store.get(entry_id))  # type: ignore[arg-type]
    assert not path.exists()
    assert list(store.entries()) == []
    assert store.get(entry_id) is not None


def test_purge_removes_only_expired(tmp_path: Path) -> None:
    """Purge deletes entries held longer than the retention it is given (a
    raised retention keeps them), leaves fresh ones, and never turns a
    released entry into a deleted one."""
    store = QuarantineStore(tmp_path, retention_days=1)
    old = store.put(b"Subject: old\r\n\r\n")
    fresh = store.put(b"Subject: new\r\n\r\n")
    released = store.put(b"Subject: released\r\n\r\n")
    assert store.claim(released, "released")
    with sqlite3.connect(tmp_path / "phishgate.db") as conn:
        conn.execute(
            "UPDATE quarantine SET time = ? WHERE id IN (?, ?)",
            (time.time() - 2 * 86400, old, released),
        )
    assert store.purge(retention_days=3) == []
    assert store.purge() == [old]
    assert not store.path_for(old).exists()
    assert [e.id for e in store.entries()] == [fresh]
    assert store.get(released) is not None
    assert store.get(released).state == "released"  # type: ignore[union-attr]


def test_labels_are_stored_with_their_source(tmp_path: Path) -> None:
    """An admin label keeps the raw message and its source."""
    raw = as_bytes(plain())
    record_label(tmp_path, raw, "ham", "admin-release", message_id="<m@x>")
    with sqlite3.connect(tmp_path / "phishgate.db") as conn:
        row = conn.execute("SELECT label, source, path FROM labels").fetchone()
    assert row[0] == "ham" and row[1] == "admin-release"
    assert Path(row[2]).read_bytes() == raw


def test_rewrite_headers_drops_forged_verdicts_and_tags() -> None:
    """Incoming X-Phishgate-* lines go, ours are prepended, Subject tagged once."""
    raw = (
        b"X-Phishgate-Verdict: ham action=accept\r\n\tcontinued\r\n"
        b"Subject: Hello\r\nFrom: a@example.org\r\n\r\n"
        b"X-Phishgate-Score: body stays\r\n"
    )
    out = rewrite_headers(raw, (("X-Phishgate-Score", "0.9"),), "[PHISH?] ")
    head, body = out.split(b"\r\n\r\n", 1)
    assert head.count(b"X-Phishgate-") == 1
    assert b"continued" not in head
    assert b"Subject: [PHISH?] Hello" in head
    assert body == b"X-Phishgate-Score: body stays\r\n"
    again = rewrite_headers(out, (), "[PHISH?] ")
    assert again.count(b"[PHISH?]") == 1


def test_esmtp_parameters_keep_their_case() -> None:
    """DSN parameters (xtext, case-sensitive) pass through unchanged."""
    head, params = _split_params("FROM:<a@b.example> SIZE=10 RET=HDRS ENVID=QQ+2Bx")
    assert head == "FROM:<a@b.example>"
    assert params == ["SIZE=10", "RET=HDRS", "ENVID=QQ+2Bx"]
    head, params = _split_params(
        "TO:<c@d.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@d.example"
    )
    assert params[1] == "ORCPT=rfc822;c@d.example"


def test_put_whose_row_cannot_be_written_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A locked or full database fails the put and takes the file back out."""
    store = QuarantineStore(tmp_path)

    def index(*args: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(store, "_index", index)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store.put(as_bytes(phish()), recipients=["ann@example.org"])
    assert [p for p in store.root.rglob("*") if p.is_file()] == []


def test_put_after_close_is_still_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put that comes after close (a proxy session finishing during
    shutdown) syncs the directory itself and is indexed."""
    import phishgate.daemon.quarantine as quarantine

    synced: list[Path] = []
    real_sync = quarantine._sync_dir
    monkeypatch.setattr(
        quarantine, "_sync_dir", lambda d: (synced.append(d), real_sync(d))[1]
    )
    store = QuarantineStore(tmp_path)
    store.close()
    entry_id = store.put(as_bytes(phish()), recipients=["ann@example.org"])
    (entry,) = list(store.entries())
    assert entry.id == entry_id and entry.path.is_file()
    assert synced == [entry.path.parent]
    assert store._dir_sync is None  # no new threads after close


def test_show_of_an_entry_no_longer_held_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An id from an old digest, released or purged since: a plain answer."""
    from phishgate.daemon.config import parse_config
    from phishgate.daemon.quarantine_cli import cmd_show

    store = QuarantineStore(tmp_path)
    entry_id = store.put(as_bytes(phish()), recipients=["ann@example.org"])
    assert store.claim(entry_id, "released")
    config = parse_config(f'[storage]\nstate_dir = "{tmp_path}"\n', "t")
    assert cmd_show(config, entry_id, raw=False) == 1
    assert f"{entry_id} was released" in capsys.readouterr().err


def test_an_entry_is_claimed_once(tmp_path: Path) -> None:
    """Two releases (or a release and a purge) of one entry: only the first
    claims it; a failed release puts it back on hold."""
    store = QuarantineStore(tmp_path)
    entry_id = store.put(as_bytes(phish()))
    assert store.claim(entry_id, "released")
    assert not store.claim(entry_id, "released")
    assert store.purge(retention_days=0, now=time.time() + 1) == []
    store.unclaim(entry_id)
    assert [e.id for e in store.entries()] == [entry_id]
