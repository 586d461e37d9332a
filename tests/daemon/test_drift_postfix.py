"""Drift through a real Postfix: a shifted stream moves the daemon's gauges.

The same check as test_drift_serve.py, but the mail comes through a private
Postfix (tests/postfixlab.py) and the milter, as it would on a mail server.
"""

from __future__ import annotations

import math
import smtplib
from collections.abc import Iterable, Iterator

import pytest
from mailfactory import as_bytes, phish, plain
from phishgate.daemon.drift import DRIFT_FEATURE_NAMES
from postfixlab import LabFactory, PostfixLab, wait_for
from serve_process import ServeProcess, drift_psi, toml_table

pytestmark = pytest.mark.postfix

STREAM = 120
"""Messages per stream: above the 100 a PSI needs."""
TIMEOUT = 60.0
PASS_ALL = {
    "domain": "drift.test",
    "tag_at": 1.0,
    "quarantine_at": 1.0,
    "reject_at": 1.0,
}
"""Every message delivered, so the phish stream is not refused at DATA."""


@pytest.fixture(scope="module")
def lab(make_postfix_lab: LabFactory) -> Iterator[PostfixLab]:
    lab = make_postfix_lab()
    yield lab
    lab.purge()


@pytest.fixture
def daemon(lab: PostfixLab) -> Iterator[ServeProcess]:
    serve = ServeProcess(lab.milter_port, domains=[PASS_ALL])
    drift = {"interval_s": 0.2, "window_hours": 1.0}
    serve.write_config_text(
        serve.config_text(domains=[PASS_ALL]) + toml_table("drift", drift)
    )
    with serve:
        yield serve


def _send(lab: PostfixLab, messages: Iterable[bytes]) -> None:
    """One SMTP session into Postfix, one transaction per message."""
    with smtplib.SMTP("127.0.0.1", lab.milter_smtp_port, timeout=60) as smtp:
        for raw in messages:
            smtp.sendmail("bob@example.org", ["ann@drift.test"], raw)


def test_drift_gauges_move_when_postfix_feeds_a_shifted_stream(
    lab: PostfixLab, daemon: ServeProcess
) -> None:
    """Ham through Postfix and a baseline: stable; then phish: past 0.25."""
    ham = (
        as_bytes(plain(f"Hi Ann,\n\nitem {i} is done.\n", subject=f"Item {i}"))
        for i in range(STREAM)
    )
    _send(lab, ham)
    daemon.wait_rows(STREAM, timeout=TIMEOUT)
    daemon.run_cli("drift", "--baseline")
    wait_for(
        lambda: all(not math.isnan(v) and v < 0.1 for v in drift_psi(daemon).values()),
        TIMEOUT,
        "stable against the baseline",
    )

    _send(
        lab, (as_bytes(phish(msgid=f"<p{i}@bulk.example.ru>")) for i in range(STREAM))
    )
    daemon.wait_rows(2 * STREAM, timeout=TIMEOUT)

    def shifted() -> dict[str, float]:
        values = drift_psi(daemon)
        moved = ("score", "html_present", "html_forms")
        return values if all(values[name] > 0.25 for name in moved) else {}

    values = wait_for(shifted, TIMEOUT, "drift gauges past 0.25")
    assert set(values) == {"score", *DRIFT_FEATURE_NAMES}
    assert values["att_count"] < 0.1  # neither stream has attachments
    daemon.wait_log("drift: PSI above 0.25 for")
