"""The report addresses end to end, through a real Postfix.

A user's mail client forwards a delivered message as an attachment to the
report address; the daemon (a real ``phishgate serve``) records the label
against the original's verdict row, sends the report on to the security
team and a receipt to the reporter. Postfix's XCLIENT stands in for the
client's address and SASL login (``{auth_authen}`` reaches the milter as it
would after AUTH), so the tests need no SASL server.
"""

from __future__ import annotations

import contextlib
import json
import random
import smtplib
import sqlite3
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from mailfactory import (
    as_bytes,
    crafted_ham,
    crafted_phish,
    forward_as_attachment,
    phish,
    plain,
)
from postfixlab import LabFactory, PostfixLab, free_ports, wait_for
from serve_process import ServeProcess, message_id, recipient, toml_table

pytestmark = pytest.mark.postfix

REPORTS = "phish@reports.test"
SOC = "soc@security.test"
TRUSTED_NET = "192.0.2.0/24"
OUTSIDE = "203.0.113.9"
PASS = {"domain": "pass.test", "tag_at": 1.0, "quarantine_at": 1.0, "reject_at": 1.0}


def send(
    port: int,
    message: EmailMessage | bytes,
    rcpt: str,
    sender: str,
    *,
    xclient: str = "",
) -> tuple[int, bytes]:
    """One SMTP transaction; XCLIENT first if given. Returns the DATA reply."""
    data = message if isinstance(message, bytes) else as_bytes(message)
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
        smtp.ehlo("client.example.test")
        if xclient:
            code, reply = smtp.docmd("XCLIENT", xclient)
            assert code == 220, reply
            smtp.ehlo("client.example.test")
        assert smtp.mail(sender)[0] == 250
        assert smtp.rcpt(rcpt)[0] == 250
        return smtp.data(data)


def delivered_to(lab: PostfixLab, rcpt: str) -> list[bytes]:
    marker = f"\nDelivered-To: {rcpt}\n".encode()
    folder = lab.maildir / "new"
    if not folder.exists():
        return []
    return [d for p in folder.iterdir() if marker in (d := p.read_bytes())]


def wait_delivered(lab: PostfixLab, rcpt: str, containing: bytes = b"") -> bytes:
    """The first message delivered to ``rcpt`` that contains ``containing``."""

    def found() -> list[bytes]:
        return [d for d in delivered_to(lab, rcpt) if containing in d]

    return wait_for(found, 20, f"delivery to {rcpt}")[0]


def db_rows(state_dir: Path, sql: str, *params: Any) -> list[dict[str, Any]]:
    path = state_dir / "phishgate.db"
    if not path.exists():
        return []
    with contextlib.closing(
        sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    ) as conn:
        conn.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in conn.execute(sql, params)]
        except sqlite3.OperationalError:  # table not created yet
            return []


def verdict_id(daemon: ServeProcess, msgid: str) -> int:
    sql = "SELECT id FROM verdicts WHERE message_id = ?"
    rows = wait_for(lambda: db_rows(daemon.state_dir, sql, msgid), 10, "verdict row")
    return int(rows[0]["id"])


def label_rows(daemon: ServeProcess, msgid: str) -> list[dict[str, Any]]:
    sql = "SELECT * FROM labels WHERE message_id = ?"
    return db_rows(daemon.state_dir, sql, msgid)


def feedback_daemon(
    lab: PostfixLab, milter_port: int, proxy: dict[str, Any] | None = None
) -> ServeProcess:
    daemon = ServeProcess(milter_port, proxy=proxy)
    feedback = {
        "phish_address": REPORTS,
        "trusted_networks": [TRUSTED_NET],
        "forward_to": SOC,
        "acknowledge": True,
        "send_via": f"127.0.0.1:{lab.smtp_port}",
    }
    retrain = {"rounds": 15, "min_new_labels": 50}
    daemon.write_config_text(
        "\n".join(
            [
                daemon.config_text(domains=(PASS,)),
                toml_table("feedback", feedback),
                toml_table("retrain", retrain),
            ]
        )
    )
    return daemon


@pytest.fixture(scope="module")
def lab(make_postfix_lab: LabFactory) -> Iterator[PostfixLab]:
    lab = make_postfix_lab(
        extra_main_cf={"smtpd_authorized_xclient_hosts": "127.0.0.0/8"}
    )
    yield lab
    lab.purge()


@pytest.fixture(scope="module")
def milter_daemon(lab: PostfixLab) -> Iterator[ServeProcess]:
    with feedback_daemon(lab, lab.milter_port) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def proxy_daemon(lab: PostfixLab) -> Iterator[ServeProcess]:
    proxy = {
        "listen": f"127.0.0.1:{lab.filter_port}",
        "reinject": f"127.0.0.1:{lab.reinject_port}",
        "timeout_s": 10.0,
    }
    with feedback_daemon(lab, free_ports(1)[0], proxy) as daemon:
        yield daemon


def deliver_original(lab: PostfixLab, port: int) -> tuple[str, str, bytes]:
    """A phish delivered to a fresh user: (user, Message-ID, delivered copy)."""
    user, msgid = recipient("pass.test"), message_id()
    code, _ = send(port, phish(to=user, msgid=msgid), user, "x@paypa1-secure.top")
    assert code == 250
    return user, msgid, wait_delivered(lab, user)


def test_authenticated_user_reports_a_delivered_phish_through_the_milter(
    lab: PostfixLab, milter_daemon: ServeProcess
) -> None:
    user, msgid, copy = deliver_original(lab, lab.milter_smtp_port)
    assert b"X-Phishgate-Verdict" in copy
    original_row = verdict_id(milter_daemon, msgid)  # users report what they read
    report = forward_as_attachment(copy, reporter=user, to=REPORTS)
    code, reply = send(
        lab.milter_smtp_port,
        report,
        REPORTS,
        user,
        xclient=f"ADDR={OUTSIDE} LOGIN={user}",
    )
    assert code == 250, reply
    rows = wait_for(lambda: label_rows(milter_daemon, msgid), 10, "label row")
    assert [(r["label"], r["source"], r["reporter"]) for r in rows] == [
        ("phish", "user-report", user)
    ]
    assert rows[0]["verdict_id"] == original_row
    assert rows[0]["matched_by"] == "message-id"
    forwarded = wait_delivered(lab, SOC, msgid.encode())
    assert b"X-Phishgate-Report: accepted label=phish" in forwarded
    receipt = wait_delivered(lab, user, b"Report received (phishing)")
    assert b"Return-Path: <>" in receipt
    assert delivered_to(lab, REPORTS) == []


def test_an_outsiders_report_is_refused_in_the_smtp_session(
    lab: PostfixLab, milter_daemon: ServeProcess
) -> None:
    user, msgid, copy = deliver_original(lab, lab.milter_smtp_port)
    report = forward_as_attachment(copy, reporter=user, to=REPORTS)
    code, reply = send(
        lab.milter_smtp_port, report, REPORTS, user, xclient=f"ADDR={OUTSIDE}"
    )
    assert code == 550 and b"5.7.1" in reply and b"authenticated" in reply
    assert label_rows(milter_daemon, msgid) == []
    refused = "phishgate_report_refusals_total"
    assert milter_daemon.metric(refused, reason="unauthenticated") >= 1


def test_a_trusted_network_report_through_the_content_filter(
    lab: PostfixLab, proxy_daemon: ServeProcess
) -> None:
    user, msgid, copy = deliver_original(lab, lab.filter_smtp_port)
    original_row = verdict_id(proxy_daemon, msgid)
    report = forward_as_attachment(copy, reporter=user, to=REPORTS)
    code, _ = send(
        lab.filter_smtp_port, report, REPORTS, user, xclient="ADDR=192.0.2.77"
    )
    assert code == 250
    rows = wait_for(lambda: label_rows(proxy_daemon, msgid), 20, "label row")
    assert rows[0]["verdict_id"] == original_row
    forwarded = wait_delivered(lab, SOC, msgid.encode())
    assert b"X-Phishgate-Report: accepted" in forwarded


def test_an_outsiders_report_through_the_content_filter_is_dropped(
    lab: PostfixLab, proxy_daemon: ServeProcess
) -> None:
    user, msgid, copy = deliver_original(lab, lab.filter_smtp_port)
    report = forward_as_attachment(copy, reporter=user, to=REPORTS)
    code, _ = send(
        lab.filter_smtp_port, report, REPORTS, user, xclient=f"ADDR={OUTSIDE}"
    )
    assert code == 250  # queued: after the queue nobody can be told
    wait_for(
        lambda: "refused (unauthenticated)" in proxy_daemon.log_text(),
        20,
        "refusal logged",
    )
    assert label_rows(proxy_daemon, msgid) == []
    assert delivered_to(lab, REPORTS) == []


def test_reports_and_admin_labels_retrain_the_model_the_daemon_then_serves(
    lab: PostfixLab, milter_daemon: ServeProcess, tmp_path: Path
) -> None:
    """The whole loop, no restart: report, label, retrain, publish, hot reload."""
    rng = random.Random(11)
    user = recipient("pass.test")
    for i in range(5):
        original = crafted_phish(rng, i).replace(
            b"To: ann@example.org", f"To: {user}".encode()
        )
        assert (
            send(lab.milter_smtp_port, original, user, "x@example-login.top")[0] == 250
        )
    copies = wait_for(
        lambda: (found := delivered_to(lab, user))[4:] and found, 20, "five deliveries"
    )
    wait_for(
        lambda: len(db_rows(milter_daemon.state_dir, "SELECT id FROM verdicts")) >= 5,
        10,
        "their verdict rows",
    )
    report = forward_as_attachment(*copies[:5], reporter=user, to=REPORTS)
    code, _ = send(
        lab.milter_smtp_port,
        report,
        REPORTS,
        user,
        xclient=f"ADDR={OUTSIDE} LOGIN={user}",
    )
    assert code == 250
    for label, make in (("ham", crafted_ham), ("phish", crafted_phish)):
        folder = tmp_path / label
        folder.mkdir()
        for i in range(40):
            (folder / f"{i}.eml").write_bytes(make(rng, 100 + i))
        milter_daemon.run_cli("report", "--label", label, str(folder))
    user_labels = "SELECT * FROM labels WHERE source = 'user-report' AND reporter = ?"
    assert len(db_rows(milter_daemon.state_dir, user_labels, user)) == 5

    milter_daemon.run_cli("retrain")
    listed = milter_daemon.run_cli("model", "list", "--json").stdout.splitlines()
    (active,) = [row for row in map(json.loads, listed) if row["active"]]
    version = active["version"]
    wait_for(
        lambda: milter_daemon.metric("phishgate_model_info", version=version) == 1,
        30,
        "the new model served",
    )
    ham_to = recipient("pass.test")
    assert (
        send(
            lab.milter_smtp_port,
            plain(to=ham_to, msgid=message_id()),
            ham_to,
            "bob@example.org",
        )[0]
        == 250
    )
    copy = wait_delivered(lab, ham_to)
    assert f"X-Phishgate-Model: {version}".encode() in copy
