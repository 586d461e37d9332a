"""``[daemon] workers = 2`` behind a real Postfix: scans in two processes.

The daemon keeps the milter, the verdict log and the metrics in its main
process and scans in two worker processes. Its debug log says which worker
scanned each message (by Message-ID); the tests check that both workers did
work, that the main process wrote every verdict row and counted every
message, and that a new model reaches the workers without a restart.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path

import pytest
from mailfactory import phish, plain
from postfixlab import LabFactory, PostfixLab, wait_for
from serve_process import (
    ServeProcess,
    message_id,
    publish_model_copy,
    recipient,
    served_version,
    toml_table,
)
from test_serve_postfix import (
    DOMAINS,
    delivered_raw,
    held,
    in_flight,
    send,
    send_slow,
    slow_message,
)

pytestmark = pytest.mark.postfix

WORKERS = {"workers": 2}
POLICY = {"scan_timeout_s": 120.0}
"""The slow message takes seconds on a loaded machine; it must be scanned."""
NEW_VERSION = "2099-01-01T00-00-00Z-workers1"
RELOAD_TIMEOUT = 90.0
"""Seconds for a reload: the canary check, then two new workers load the model."""
SCANNED_BY = re.compile(r"message_id=(\S+) scanned by worker (\d+) ")
READY_PIDS = re.compile(r"scan worker processes ready \(pids ([\d ]+)\)")


def parent_pid(pid: int) -> int:
    """The PPid of a running process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def workers_by_message(daemon: ServeProcess) -> dict[str, int]:
    """Message-ID -> pid of the worker that scanned it, from the debug log."""
    return {m[1]: int(m[2]) for m in SCANNED_BY.finditer(daemon.log_text())}


def start_workers_daemon(lab: PostfixLab) -> ServeProcess:
    """A daemon with two scan workers and debug logging (it names the worker)."""
    daemon = ServeProcess(
        lab.milter_port, policy=POLICY, domains=DOMAINS, daemon=WORKERS
    )
    debug = toml_table("logging", {"level": "debug"})
    text = daemon.config_text(policy=POLICY, domains=DOMAINS)
    daemon.write_config_text(text + debug)
    return daemon.start()


@pytest.fixture(scope="module")
def lab(make_postfix_lab: LabFactory) -> Iterator[PostfixLab]:
    lab = make_postfix_lab()
    yield lab
    lab.purge()


@pytest.fixture(scope="module")
def lifecycle_lab(make_postfix_lab: LabFactory) -> Iterator[PostfixLab]:
    """A lab for the test that starts and stops its own daemon."""
    lab = make_postfix_lab()
    yield lab
    lab.purge()


@pytest.fixture(scope="module")
def served(lab: PostfixLab) -> Iterator[ServeProcess]:
    daemon = start_workers_daemon(lab)
    yield daemon
    daemon.close()


def test_two_workers_share_the_mail_and_nothing_is_lost(
    lab: PostfixLab, served: ServeProcess
) -> None:
    """Mail sent at once is scanned by both workers; one row and count each."""
    before = served.metric("phishgate_verdict_log_rows_total")
    ids = [message_id() for _ in range(8)]
    messages: list[tuple[EmailMessage | bytes, str]] = [
        (slow_message(ids[0]), recipient("pass.test")),  # two long scans at
        (slow_message(ids[1]), recipient("pass.test")),  # once: two workers
        *((plain(msgid=m), recipient("pass.test")) for m in ids[2:5]),
        *((phish(msgid=m), recipient("hold.test")) for m in ids[5:]),
    ]
    with ThreadPoolExecutor(len(messages)) as pool:
        sending = [pool.submit(send, lab, m, rcpt) for m, rcpt in messages]
        queue_ids = [future.result(120) for future in sending]

    rows = [served.wait_rows(message_id=m, timeout=30) for m in ids]
    scanned_by = workers_by_message(served)
    pids = {scanned_by[m] for m in ids}
    assert [len(found) for found in rows] == [1] * len(ids)
    assert [found[0]["queue_id"] for found in rows] == queue_ids
    assert [found[0]["status"] for found in rows] == ["scanned"] * len(ids)
    assert len(pids) == 2 and served.pid not in pids
    assert {parent_pid(pid) for pid in pids} == {served.pid}
    after = served.metric("phishgate_verdict_log_rows_total")
    assert after - before == len(ids)
    for _, rcpt in messages[:5]:
        assert b"X-Phishgate-Status: scanned" in delivered_raw(lab, rcpt)
    for queue_id in queue_ids[5:]:
        assert b"action=quarantine" in held(lab, queue_id)


def test_new_model_reaches_the_workers(lab: PostfixLab, served: ServeProcess) -> None:
    """`model activate`: the same workers switch to the new model in place."""
    started = READY_PIDS.search(served.log_text())
    assert started is not None, "no 'scan worker processes ready' line"
    old_pids = {int(pid) for pid in started[1].split()}
    publish_model_copy(served.state_dir, NEW_VERSION)
    served.run_cli("model", "activate", NEW_VERSION)
    wait_for(
        lambda: served_version(served) == NEW_VERSION,
        RELOAD_TIMEOUT,
        "new model served",
    )
    msgid, rcpt = message_id(), recipient("pass.test")
    send(lab, plain(msgid=msgid), rcpt)

    (row,) = served.wait_rows(message_id=msgid)
    assert row["model_version"] == NEW_VERSION
    assert f"X-Phishgate-Model: {NEW_VERSION}".encode() in delivered_raw(lab, rcpt)
    assert workers_by_message(served)[msgid] in old_pids  # no new processes


def test_sigterm_finishes_the_scan_in_a_worker(lifecycle_lab: PostfixLab) -> None:
    """SIGTERM while a worker scans: the message is delivered, workers exit, exit 0."""
    msgid, rcpt = message_id(), recipient("pass.test")
    with ThreadPoolExecutor(1) as pool:
        daemon = start_workers_daemon(lifecycle_lab)
        try:
            match = READY_PIDS.search(daemon.log_text())
            assert match is not None, "no 'scan worker processes ready' line"
            pids = [int(pid) for pid in match[1].split()]
            sending = send_slow(pool, lifecycle_lab, msgid, rcpt)
            wait_for(lambda: in_flight(daemon), 20, "slow message in flight")
            daemon.send_signal(signal.SIGTERM)
            queue_id = sending.result(60)
            status = daemon.wait_exit()
            rows = daemon.rows(message_id=msgid)
        finally:
            daemon.close()

    assert status == 0
    assert not any(running(pid) for pid in pids)
    assert [(r["queue_id"], r["status"]) for r in rows] == [(queue_id, "scanned")]
    assert b"X-Phishgate-Status: scanned\n" in delivered_raw(lifecycle_lab, rcpt)
