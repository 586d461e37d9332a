"""End to end: a real ``phishgate serve``, a shifted stream through its proxy, /metrics.

smtplib plays Postfix's content-filter transport, a sink plays the
re-injection smtpd. The monitoring refresh runs every 0.2 s here
(``[drift] interval_s``), so the test waits on the gauges, not on a clock.
"""

from __future__ import annotations

import math
import smtplib
import sqlite3
import time
from collections.abc import Iterable, Iterator

import pytest
from mailfactory import as_bytes, phish, plain
from phishgate.daemon.drift import DRIFT_FEATURE_NAMES
from phishgate.daemon.quarantine import QuarantineStore
from postfixlab import free_ports, wait_for
from serve_process import ServeProcess, drift_psi, toml_table
from smtpsink import Sink

STREAM = 120
"""Messages per stream: above the 100 a PSI needs."""
GAUGE_TIMEOUT = 30.0


@pytest.fixture
def daemon() -> Iterator[ServeProcess]:
    sink = Sink().start()
    milter_port, proxy_port = free_ports(2)
    serve = ServeProcess(
        milter_port,
        proxy={
            "listen": f"127.0.0.1:{proxy_port}",
            "reinject": f"127.0.0.1:{sink.port}",
        },
    )
    drift = {"interval_s": 0.2, "window_hours": 1.0, "retrain": True}
    serve.write_config_text(serve.config_text() + toml_table("drift", drift))
    with serve:
        yield serve
    sink.stop()


def _ham(i: int) -> bytes:
    body = f"Hi Ann,\n\nitem {i} is done, notes at https://wiki.example.org/{i}\n"
    if i % 2:
        body += "\nOn Monday Ann wrote:\n> is item done?\n"
    return as_bytes(plain(body, subject=f"Item {i}", msgid=f"<h{i}@example.org>"))


def _phish(i: int) -> bytes:
    return as_bytes(phish(msgid=f"<p{i}@mailer.bulk-sender.ru>"))


def _send(serve: ServeProcess, messages: Iterable[bytes]) -> None:
    """One SMTP session, one transaction per message, as Postfix would reuse it."""
    port = int(str(serve.proxy["listen"]).rpartition(":")[2])
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        for raw in messages:
            wire = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            smtp.sendmail("bob@example.org", ["ann@example.org"], wire)


def _all_stable(serve: ServeProcess) -> bool:
    values = drift_psi(serve)
    return len(values) == 1 + len(DRIFT_FEATURE_NAMES) and all(
        not math.isnan(v) and v < 0.1 for v in values.values()
    )


def test_drift_gauges_move_when_a_shifted_stream_is_fed(daemon: ServeProcess) -> None:
    """Ham and a baseline: stable. Then phish: past 0.25, a warning, a retrain."""
    _send(daemon, (_ham(i) for i in range(STREAM)))
    daemon.wait_rows(STREAM)
    daemon.run_cli("drift", "--baseline")
    wait_for(lambda: _all_stable(daemon), GAUGE_TIMEOUT, "stable against baseline")

    _send(daemon, (_phish(i) for i in range(STREAM)))
    daemon.wait_rows(2 * STREAM)

    def shifted() -> dict[str, float]:
        values = drift_psi(daemon)
        moved = ("score", "html_present", "html_forms", "reply_to_mismatch")
        return values if all(values[name] > 0.25 for name in moved) else {}

    values = wait_for(shifted, GAUGE_TIMEOUT, "drift gauges past 0.25")
    assert values["att_count"] < 0.1  # neither stream has attachments
    log = daemon.wait_log("drift: PSI above 0.25 for")
    # one warning each time the set of shifted values grows while rows arrive
    warning = [line for line in log.splitlines() if "PSI above" in line][-1]
    assert "WARNING" in warning and "html_forms" in warning
    daemon.wait_log("drift: phishgate retrain exited with status 4", timeout=120)
    wait_for(
        lambda: daemon.metric("phishgate_quarantine_messages") == STREAM,
        GAUGE_TIMEOUT,
        "every phish counted as held",
    )
    assert daemon.metric("phishgate_model_created_timestamp_seconds") > 0
    assert daemon.metric("phishgate_live_labelled_messages") == 0


def test_expired_quarantine_entries_are_removed_by_the_daemon(
    daemon: ServeProcess,
) -> None:
    """Retention is enforced without anyone running ``quarantine purge``: an
    entry past its expiry goes (file and listing), a fresh one stays, and
    the removal is counted."""
    store = QuarantineStore(daemon.state_dir)
    old, fresh = (store.put(as_bytes(phish()), queue_id=q) for q in ("OLD", "NEW"))
    with sqlite3.connect(daemon.state_dir / "phishgate.db") as conn:
        month_ago = time.time() - 31 * 86400
        conn.execute("UPDATE quarantine SET time = ? WHERE id = ?", (month_ago, old))
    old_path = store.path_for(old)
    wait_for(lambda: not old_path.exists(), GAUGE_TIMEOUT, "expired entry removed")
    assert [e.id for e in store.entries()] == [fresh]
    wait_for(
        lambda: (
            daemon.metric(
                "phishgate_quarantine_operations_total", operation="purge", result="ok"
            )
            == 1
        ),
        GAUGE_TIMEOUT,
        "purge counted",
    )
