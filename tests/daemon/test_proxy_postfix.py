"""The content-filter proxy and the quarantine behind a real Postfix.

Postfix's ``filter_smtp_port`` listener has ``content_filter`` pointing at the
proxy of a real ``phishgate serve`` (tests/daemon/serve_process.py), which
re-injects into the lab's ``reinject_port`` smtpd, as in Postfix's
FILTER_README. Two labs: one relays all final delivery to a recording SMTP
sink (tests/smtpsink.py), so the envelope can be checked as the next hop sees
it; the other delivers to its Maildir, for the tests that stop, break or kill
their daemon. Actions are forced per recipient domain with
``[[policy.domains]]`` thresholds, so no assertion depends on model scores.
Quarantine operations run the real ``phishgate quarantine`` command.
"""

from __future__ import annotations

import collections
import contextlib
import email.parser
import email.policy
import json
import signal
import smtplib
import sqlite3
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from mailfactory import as_bytes, phish, plain
from postfixlab import LabFactory, PostfixLab, QueueEntry, free_ports, wait_for
from serve_process import ServeProcess, message_id, recipient
from smtpsink import Received, Sink

pytestmark = pytest.mark.postfix

LOW = 1e-9
"""A threshold every real phish probability is above."""
PASS = {"domain": "pass.test", "tag_at": 1.0, "quarantine_at": 1.0, "reject_at": 1.0}
HOLD = {"domain": "hold.test", "tag_at": LOW, "quarantine_at": LOW, "reject_at": 1.0}
REJECT = {
    "domain": "reject.test",
    "tag_at": LOW,
    "quarantine_at": LOW,
    "reject_at": LOW,
}
TAG = {"domain": "tag.test", "tag_at": LOW, "quarantine_at": 1.0, "reject_at": 1.0}
DOMAINS = (PASS, HOLD, REJECT, TAG)
SENDER = "bob@example.org"
LIST_KEYS = {"id", "time", "recipients", "phish", "reasons", "where"}
IN_FLIGHT = 50
"""Messages in flight when the daemon is killed."""
CLIENTS = 5
"""SMTP clients sending them at once."""


# ---------------------------------------------------------------- helpers


def send(
    port: int,
    data: bytes,
    rcpts: Sequence[str],
    sender: str = SENDER,
    mail_options: Sequence[str] = (),
    rcpt_options: Sequence[str] = (),
) -> str:
    """Send one message to a Postfix listener; return its queue id."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
        smtp.ehlo("client.example.test")
        return transaction(smtp, data, rcpts, sender, mail_options, rcpt_options)


def transaction(
    smtp: smtplib.SMTP,
    data: bytes,
    rcpts: Sequence[str],
    sender: str = SENDER,
    mail_options: Sequence[str] = (),
    rcpt_options: Sequence[str] = (),
) -> str:
    """One MAIL/RCPT/DATA on an open session; the queue id from the 250 reply."""
    _expect(smtp.mail(sender, list(mail_options)), 250)
    for rcpt in rcpts:
        _expect(smtp.rcpt(rcpt, list(rcpt_options)), 250)
    code, reply = smtp.data(data)
    if code != 250:
        raise smtplib.SMTPDataError(code, reply)
    return reply.decode().rsplit(" ", 1)[-1]


def _expect(reply: tuple[int, bytes], code: int) -> None:
    if reply[0] != code:
        raise smtplib.SMTPResponseException(*reply)


def filter_attempts(lab: PostfixLab, queue_id: str, count: int = 1) -> list[str]:
    """Postfix's log lines for handing ``queue_id`` to the proxy (wait for count)."""

    def attempts() -> list[str]:
        lines = [
            line
            for line in lab.log_text().splitlines()
            if f" {queue_id}: to=<" in line and " status=" in line
        ]
        return lines if len(lines) >= count else []

    return wait_for(attempts, 20, f"{count} delivery attempts of {queue_id}")


def queued_for(lab: PostfixLab, rcpts: Iterable[str]) -> list[QueueEntry]:
    """Queue entries (any queue) with one of ``rcpts`` among their recipients."""
    wanted = set(rcpts)
    return [
        entry
        for entry in lab.postqueue_json()
        if wanted & {r["address"] for r in entry["recipients"]}
    ]


def delivered_raw(lab: PostfixLab, rcpt: str, timeout: float = 10.0) -> bytes:
    """The Maildir file for ``rcpt``, as virtual(8) wrote it."""
    return wait_for(lambda: maildir_files(lab, rcpt)[:1], timeout, f"mail to {rcpt}")[0]


def maildir_files(lab: PostfixLab, rcpt: str) -> list[bytes]:
    """Every Maildir file delivered to ``rcpt``."""
    marker = f"\nDelivered-To: {rcpt}\n".encode()
    found = []
    for path in (lab.maildir / "new").iterdir():
        with contextlib.suppress(FileNotFoundError):
            data = path.read_bytes()
            if marker in data:
                found.append(data)
    return found


def at_sink(sink: Sink, rcpt: str) -> list[Received]:
    """Transactions the sink received for ``rcpt``."""
    return [m for m in list(sink.messages) if rcpt in m.rcpt_tos]


def wait_sink(sink: Sink, rcpt: str, timeout: float = 10.0) -> Received:
    """The first transaction the sink receives for ``rcpt``."""
    return wait_for(lambda: at_sink(sink, rcpt)[:1], timeout, f"{rcpt} at sink")[0]


def header(data: bytes, name: str) -> str:
    """One header's value (unfolded) from raw message bytes."""
    parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
    value = parser.parsebytes(data)[name]
    return " ".join(str(value).split()) if value is not None else ""


def db_rows(daemon: ServeProcess, sql: str, *params: Any) -> list[dict[str, Any]]:
    """Rows of a read-only query on the daemon's SQLite database."""
    path = daemon.state_dir / "phishgate.db"
    with contextlib.closing(
        sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    ) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(sql, params)]


def stored(daemon: ServeProcess, queue_id: str) -> dict[str, Any]:
    """The quarantine row of the message Postfix queued as ``queue_id``."""
    sql = "SELECT * FROM quarantine WHERE queue_id = ?"
    return wait_for(lambda: db_rows(daemon, sql, queue_id), 10, "quarantine row")[0]


def quarantine_list(daemon: ServeProcess) -> list[dict[str, Any]]:
    """``phishgate quarantine list --json``, one dict per line."""
    out = daemon.run_cli("quarantine", "list", "--json").stdout
    return [json.loads(line) for line in out.splitlines()]


def proxy_daemon(lab: PostfixLab, reinject_port: int, **options: Any) -> ServeProcess:
    """A daemon whose proxy serves ``lab``'s content filter."""
    proxy = {
        "listen": f"127.0.0.1:{lab.filter_port}",
        "reinject": f"127.0.0.1:{reinject_port}",
        "timeout_s": 10.0,
    }
    quarantine = {"postfix_config_dir": str(lab.config_dir)}
    return ServeProcess(
        lab.milter_port, domains=DOMAINS, proxy=proxy, quarantine=quarantine, **options
    )


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    """The next hop after Postfix: records envelopes with their parameters."""
    sink = Sink().start()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
def sink_lab(make_postfix_lab: LabFactory, sink: Sink) -> Iterator[PostfixLab]:
    """A lab that feeds the proxy over LMTP and relays final delivery to the sink."""
    lab = make_postfix_lab(sink_port=sink.port, filter_transport="lmtp")
    yield lab
    lab.purge()


@pytest.fixture(scope="module")
def served(sink_lab: PostfixLab) -> Iterator[ServeProcess]:
    """One daemon (quarantine = "store") on both front doors of the sink lab."""
    daemon = proxy_daemon(
        sink_lab, sink_lab.reinject_port, policy={"quarantine": "store"}
    )
    with daemon:
        yield daemon


@pytest.fixture(scope="module")
def lab(make_postfix_lab: LabFactory) -> Iterator[PostfixLab]:
    """A Maildir lab (the plain SMTP wiring) for tests that stop, break or kill."""
    lab = make_postfix_lab()
    yield lab
    lab.purge()


@pytest.fixture(scope="module")
def lifecycle(lab: PostfixLab) -> Iterator[ServeProcess]:
    """A daemon on ``lab`` (quarantine = "hold"), not started: tests start it."""
    daemon = proxy_daemon(lab, lab.reinject_port)
    yield daemon
    daemon.close()


def running(daemon: ServeProcess) -> ServeProcess:
    """``daemon``, started unless it is running already."""
    if daemon.proc is None or daemon.proc.poll() is not None:
        daemon.start()
    return daemon


# ---------------------------------------------------------------- phish and ham


def test_phish_stored_and_listed_not_delivered(
    sink_lab: PostfixLab, sink: Sink, served: ServeProcess
) -> None:
    """A phish is stored by the proxy, listed with where=store, and never delivered."""
    msgid, rcpt = message_id(), recipient("hold.test")
    queue_id = send(sink_lab.filter_smtp_port, as_bytes(phish(msgid=msgid)), [rcpt])

    (attempt,) = filter_attempts(sink_lab, queue_id)
    (row,) = served.wait_rows(message_id=msgid)
    (entry,) = [e for e in quarantine_list(served) if e.get("queue_id") == queue_id]
    assert "status=sent (250 2.0.0 Ok: quarantined " in attempt
    assert set(entry) >= LIST_KEYS and entry["where"] == "store"
    assert entry["recipients"] == [rcpt] and entry["phish"] == row["phish"]
    assert entry["reasons"] == json.loads(row["reasons"]) != []
    assert entry["time"].endswith("Z") and entry["id"] in attempt
    assert row["front_door"] == "proxy" and row["action"] == "quarantine"
    assert (
        served.metric(
            "phishgate_messages_total", front_door="proxy", action="quarantine"
        )
        >= 1
    )
    assert at_sink(sink, rcpt) == [] and queued_for(sink_lab, [rcpt]) == []


def test_ham_delivered_with_envelope_intact(
    sink_lab: PostfixLab, sink: Sink, served: ServeProcess
) -> None:
    """SIZE, SMTPUTF8, BODY, RET/ENVID, NOTIFY/ORCPT survive client to sink."""
    msgid, rcpt, sender = message_id(), recipient("pass.test"), "björn@example.org"
    data = (
        f"From: Björn <{sender}>\r\nTo: {rcpt}\r\nSubject: Grüße aus Köln\r\n"
        f"Message-ID: {msgid}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\nBis Dienstag, ça va.\r\n"
    ).encode()
    mail_options = ["SMTPUTF8", "BODY=8BITMIME", "RET=HDRS", "ENVID=pg+2Bid7"]
    rcpt_options = ["NOTIFY=SUCCESS,DELAY", f"ORCPT=rfc822;{rcpt}"]
    send(
        sink_lab.filter_smtp_port,
        data,
        [rcpt],
        sender,
        [f"SIZE={len(data)}", *mail_options],
        rcpt_options,
    )

    got = wait_sink(sink, rcpt)
    (row,) = served.wait_rows(message_id=msgid)
    head, _, body = got.data.partition(b"\r\n\r\n")
    size = [int(p[5:]) for p in got.mail_params if p.upper().startswith("SIZE=")]
    assert (got.mail_from, got.rcpt_tos) == (sender, [rcpt])
    assert set(mail_options) <= set(got.mail_params)
    assert len(size) == 1 and size[0] >= len(data)
    assert [set(p) for p in got.rcpt_params] == [set(rcpt_options)]
    assert body == data.partition(b"\r\n\r\n")[2]
    assert header(head, "X-Phishgate-Verdict").endswith(" action=accept")
    assert header(head, "X-Phishgate-Score") == f"{row['phish']:.4f}"
    assert header(head, "X-Phishgate-Status") == "scanned"
    assert row["front_door"] == "proxy" and row["sender"] == sender


def test_null_sender_passes(
    sink_lab: PostfixLab, sink: Sink, served: ServeProcess
) -> None:
    """A bounce (MAIL FROM:<>) is scanned and re-injected with its null sender."""
    msgid, rcpt = message_id(), recipient("pass.test")
    send(sink_lab.filter_smtp_port, as_bytes(plain(msgid=msgid)), [rcpt], "")

    got = wait_sink(sink, rcpt)
    (row,) = served.wait_rows(message_id=msgid)
    assert got.mail_from == "<>" and row["sender"] == ""
    assert header(got.data, "X-Phishgate-Status") == "scanned"


def test_above_reject_at_stored_not_bounced(
    sink_lab: PostfixLab, sink: Sink, served: ServeProcess
) -> None:
    """A phish above reject_at is quarantined after the queue; no NDR to the sender."""
    msgid, rcpt, sender = message_id(), recipient("reject.test"), recipient("org.test")
    queue_id = send(
        sink_lab.filter_smtp_port, as_bytes(phish(msgid=msgid)), [rcpt], sender
    )

    (attempt,) = filter_attempts(sink_lab, queue_id)
    log = sink_lab.wait_log(f"{queue_id}: removed")
    (row,) = served.wait_rows(message_id=msgid)
    assert "status=sent (250 2.0.0 Ok: quarantined " in attempt
    entry = stored(served, queue_id)
    verdict = header(Path(entry["path"]).read_bytes(), "X-Phishgate-Verdict")
    assert row["action"] == "reject" and entry["state"] == "held"
    assert verdict.endswith(" action=quarantine")
    assert f"{queue_id}: sender non-delivery notification" not in log
    assert at_sink(sink, sender) == [] and at_sink(sink, rcpt) == []


def test_same_verdict_through_both_front_doors(
    sink_lab: PostfixLab, served: ServeProcess
) -> None:
    """One message through the milter and through the proxy: the same phish score."""
    for make in (phish, plain):
        msgid = message_id()
        data = as_bytes(make(msgid=msgid))
        send(sink_lab.milter_smtp_port, data, [recipient("pass.test")])
        send(sink_lab.filter_smtp_port, data, [recipient("pass.test")])

        rows = served.wait_rows(2, message_id=msgid)
        scores = {r["front_door"]: f"{r['phish']:.4f}" for r in rows}
        assert set(scores) == {"milter", "proxy"}
        assert scores["milter"] == scores["proxy"], make.__name__


def test_lmtp_split_replies_per_recipient(
    sink_lab: PostfixLab, sink: Sink, served: ServeProcess
) -> None:
    """LMTP: one phish to two domains; Postfix logs each recipient's own reply."""
    msgid, passed, held = message_id(), recipient("pass.test"), recipient("hold.test")
    data = as_bytes(phish(msgid=msgid))
    queue_id = send(sink_lab.filter_smtp_port, data, [passed, held])

    attempts = filter_attempts(sink_lab, queue_id, 2)
    got = wait_sink(sink, passed)
    (to_passed,) = [line for line in attempts if f"to=<{passed}>" in line]
    (to_held,) = [line for line in attempts if f"to=<{held}>" in line]
    assert "/lmtp[" in to_passed and "status=sent" in to_passed
    assert "(250 2.0.0 Ok: accept)" in to_passed
    assert f"(250 2.0.0 Ok: quarantined {stored(served, queue_id)['id']})" in to_held
    assert got.rcpt_tos == [passed] and at_sink(sink, held) == []
    assert header(got.data, "X-Phishgate-Verdict").endswith(" action=accept")


# ---------------------------------------------------------------- quarantine CLI


def test_release_delivers_and_labels_ham(
    sink_lab: PostfixLab, sink: Sink, served: ServeProcess
) -> None:
    """``quarantine release`` delivers to the original recipients; a ham label lands."""
    msgid = message_id()
    rcpts = [recipient("hold.test"), recipient("hold.test")]
    data = as_bytes(phish(msgid=msgid))
    entry = stored(served, send(sink_lab.filter_smtp_port, data, rcpts))
    assert at_sink(sink, rcpts[0]) == []

    out = served.run_cli("quarantine", "release", entry["id"]).stdout
    got = wait_sink(sink, rcpts[0])
    labels = db_rows(served, "SELECT * FROM labels WHERE message_id = ?", msgid)
    after = stored(served, entry["queue_id"])
    assert out == f"released {entry['id']}\n"
    assert (got.mail_from, sorted(got.rcpt_tos)) == (SENDER, sorted(rcpts))
    assert header(got.data, "Message-ID") == msgid
    assert header(got.data, "X-Phishgate-Status") == "scanned"
    assert [(r["label"], r["source"]) for r in labels] == [("ham", "admin-release")]
    assert Path(labels[0]["path"]).is_file()
    assert after["state"] == "released" and not Path(after["path"]).exists()


def test_delete_and_purge_remove_file_and_row_state(
    sink_lab: PostfixLab, served: ServeProcess
) -> None:
    """``delete``, and ``purge`` of an expired entry, remove file and listing."""
    doomed, expired = [
        stored(served, send(sink_lab.filter_smtp_port, data, [recipient("hold.test")]))
        for data in (as_bytes(phish()), as_bytes(phish()))
    ]
    db = served.state_dir / "phishgate.db"
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn, conn:
        conn.execute("UPDATE quarantine SET time = 1 WHERE id = ?", (expired["id"],))

    deleted = served.run_cli("quarantine", "delete", doomed["id"]).stdout
    purged = served.run_cli("quarantine", "purge").stdout
    listed = {e["id"] for e in quarantine_list(served)}
    assert deleted == f"deleted {doomed['id']}\n"
    assert purged == "purged 1 expired entries\n"
    for entry in (doomed, expired):
        assert stored(served, entry["queue_id"])["state"] == "deleted"
        assert not Path(entry["path"]).exists() and entry["id"] not in listed


# ---------------------------------------------------------------- milter front door


def test_milter_store_mode_keeps_phish_out_of_postfix(
    sink_lab: PostfixLab, sink: Sink, served: ServeProcess
) -> None:
    """quarantine = "store" at the milter: stored by us, discarded by Postfix."""
    msgid, rcpt = message_id(), recipient("hold.test")
    queue_id = send(sink_lab.milter_smtp_port, as_bytes(phish(msgid=msgid)), [rcpt])

    log = sink_lab.wait_log(f"{queue_id}: milter-discard")
    entry = stored(served, queue_id)
    assert "milter triggers DISCARD action" in log
    assert entry["front_door"] == "milter" and json.loads(entry["recipients"]) == [rcpt]
    assert Path(entry["path"]).read_bytes().count(b"X-Phishgate-Verdict: ") == 1
    assert queued_for(sink_lab, [rcpt]) == [] and at_sink(sink, rcpt) == []


# ---------------------------------------------------------------- Maildir lab
# In this order: the first test starts the shared lifecycle daemon (hold
# mode), the last one replaces it with one that cannot re-inject.


def test_daemon_stopped_mail_deferred_then_scanned(
    lab: PostfixLab, lifecycle: ServeProcess
) -> None:
    """Daemon down: Postfix defers (refused); started and flushed: scanned."""
    lifecycle.stop()
    msgid, rcpt = message_id(), recipient("pass.test")
    queue_id = send(lab.filter_smtp_port, as_bytes(plain(msgid=msgid)), [rcpt])
    (entry,) = lab.wait_queue(
        lambda e: e["queue_id"] == queue_id and e["queue_name"] == "deferred"
    )

    running(lifecycle)
    lab.flush()
    delivered = delivered_raw(lab, rcpt)
    (row,) = lifecycle.wait_rows(message_id=msgid)
    refused = f"connect to 127.0.0.1[127.0.0.1]:{lab.filter_port}: Connection refused"
    assert entry["recipients"][0]["delay_reason"] == refused
    assert header(delivered, "X-Phishgate-Status") == "scanned"
    assert header(delivered, "X-Phishgate-Score") == f"{row['phish']:.4f}"
    assert (row["queue_id"], row["front_door"]) == (queue_id, "proxy")


def test_postfix_restart_between_messages(
    lab: PostfixLab, lifecycle: ServeProcess
) -> None:
    """Postfix restarted: the cached re-injection session is replaced, no deferral."""
    daemon, first, second = running(lifecycle), message_id(), message_id()
    rcpt = recipient("pass.test")
    send(lab.filter_smtp_port, as_bytes(plain(msgid=first)), [rcpt])
    wait_for(lambda: len(maildir_files(lab, rcpt)) == 1, 10, "first delivered")
    lab.stop()  # closes the re-injection session the proxy keeps for reuse
    lab.start()
    queue_id = send(lab.filter_smtp_port, as_bytes(plain(msgid=second)), [rcpt])

    (attempt,) = filter_attempts(lab, queue_id)
    wait_for(lambda: len(maildir_files(lab, rcpt)) == 2, 10, "second delivered")
    assert "status=sent (250 2.0.0 Ok: accept 1)" in attempt
    assert len(daemon.wait_rows(message_id=second)) == 1


def test_milter_hold_listed_and_released(
    lab: PostfixLab, lifecycle: ServeProcess
) -> None:
    """quarantine = "hold": the held message is listed (where=hold), shown
    with its verdict and headers, and released."""
    daemon, msgid, rcpt = running(lifecycle), message_id(), recipient("hold.test")
    queue_id = send(lab.milter_smtp_port, as_bytes(phish(msgid=msgid)), [rcpt])
    lab.wait_queue(lambda e: e["queue_id"] == queue_id and e["queue_name"] == "hold")
    (row,) = daemon.wait_rows(message_id=msgid)

    (entry,) = [e for e in quarantine_list(daemon) if e["id"] == queue_id]
    shown = daemon.run_cli("quarantine", "show", queue_id).stdout
    raw = daemon.run_cli("quarantine", "show", "--raw", queue_id).stdout
    out = daemon.run_cli("quarantine", "release", queue_id).stdout
    delivered = delivered_raw(lab, rcpt)
    labels = db_rows(daemon, "SELECT * FROM labels WHERE message_id = ?", msgid)
    assert set(entry) >= LIST_KEYS and entry["where"] == "hold"
    assert entry["recipients"] == [rcpt] and entry["phish"] == row["phish"]
    assert entry["reasons"] == json.loads(row["reasons"])
    assert '"where": "hold"' in shown and f"Message-ID: {msgid}" in shown
    assert f'"phish": {row["phish"]}' in shown
    assert header(raw.encode(), "X-Phishgate-Verdict").endswith(" action=quarantine")
    assert out == f"released {queue_id}\n"
    assert header(delivered, "X-Phishgate-Verdict").endswith(" action=quarantine")
    assert [(r["label"], r["source"]) for r in labels] == [("ham", "admin-release")]
    assert queued_for(lab, [rcpt]) == []


def outcomes(
    lab: PostfixLab, rcpt: str, sent: Sequence[str]
) -> tuple[set[str], int, set[str]]:
    """(Message-IDs delivered, extra copies delivered, Message-IDs still queued).

    How the kill -9 test counts: every Maildir file whose Delivered-To is the
    test's one recipient is read and its Message-ID taken; a Counter gives the
    distinct ids and the duplicates (copies beyond the first). Every Postfix
    queue entry (any queue) for that recipient is read with ``postcat -h`` for
    its Message-ID. A message is lost when its id is in neither set.
    """
    copies = collections.Counter(
        header(data, "Message-ID") for data in maildir_files(lab, rcpt)
    )
    queued = {queued_message_id(lab, e["queue_id"]) for e in queued_for(lab, [rcpt])}
    assert set(copies) | queued <= set(sent)
    return set(copies), sum(copies.values()) - len(copies), queued


def queued_message_id(lab: PostfixLab, queue_id: str) -> str:
    """The Message-ID of a queued message (``postcat -h``)."""
    command = ["postcat", "-c", str(lab.config_dir), "-hq", queue_id]
    return header(subprocess.run(command, capture_output=True).stdout, "Message-ID")


def send_many(lab: PostfixLab, rcpt: str, msgids: list[str]) -> None:
    """Send one small message per Message-ID, CLIENTS sessions at once."""

    def session(share: list[str]) -> None:
        with smtplib.SMTP("127.0.0.1", lab.filter_smtp_port, timeout=60) as smtp:
            smtp.ehlo("client.example.test")
            for msgid in share:
                transaction(smtp, as_bytes(plain(msgid=msgid)), [rcpt])

    with ThreadPoolExecutor(CLIENTS) as pool:
        for done in [pool.submit(session, msgids[i::CLIENTS]) for i in range(CLIENTS)]:
            done.result()


def settled(lab: PostfixLab, rcpt: str) -> bool:
    """No message for ``rcpt`` is being handed on right now (all done or deferred)."""
    moving = ("incoming", "active")
    return not any(e["queue_name"] in moving for e in queued_for(lab, [rcpt]))


def all_delivered(lab: PostfixLab, rcpt: str, msgids: list[str]) -> bool:
    """Every Message-ID delivered and nothing left in the queue for ``rcpt``."""
    found = {header(data, "Message-ID") for data in maildir_files(lab, rcpt)}
    return found == set(msgids) and not queued_for(lab, [rcpt])


def test_kill_9_with_50_in_flight_loses_nothing(
    lab: PostfixLab, lifecycle: ServeProcess
) -> None:
    """SIGKILL with 50 in flight, restart, flush: none lost (counted by outcomes)."""
    kill_9_in_flight(lab, running(lifecycle))


def kill_9_in_flight(lab: PostfixLab, daemon: ServeProcess) -> None:
    """Kill -9 the daemon with IN_FLIGHT messages on their way; check none lost."""
    rcpt = recipient("pass.test")
    msgids = [message_id() for _ in range(IN_FLIGHT)]
    scanned = len(daemon.rows(front_door="proxy"))
    with ThreadPoolExecutor(1) as pool:
        sending = pool.submit(send_many, lab, rcpt, msgids)
        wait_for(
            lambda: (
                daemon.metric("phishgate_in_flight_messages") > 0
                or len(daemon.rows(front_door="proxy")) >= scanned + 3
            ),
            20,
            "messages in flight",
        )
        daemon.send_signal(signal.SIGKILL)
        assert daemon.wait_exit() == -signal.SIGKILL
        sending.result(60)
    wait_for(lambda: settled(lab, rcpt), 20, "every attempt on the dead proxy ended")
    deferred = len(queued_for(lab, [rcpt]))

    daemon.start()
    lab.flush()
    with contextlib.suppress(TimeoutError):  # what is still queued is counted below
        wait_for(lambda: all_delivered(lab, rcpt, msgids), 30, "all delivered")
    delivered, duplicates, queued = outcomes(lab, rcpt, msgids)
    print(
        f"kill -9: {IN_FLIGHT} sent, {deferred} deferred by the kill; after restart "
        f"and flush: {len(delivered)} delivered, {duplicates} duplicate copies, "
        f"{len(queued - delivered)} only in the queue"
    )
    assert len(delivered | queued) == IN_FLIGHT and deferred > 0


def test_reinjection_down_defers_until_it_is_back(
    lab: PostfixLab, lifecycle: ServeProcess
) -> None:
    """Re-injection port closed: 451 and Postfix defers; port back, flush: passed on."""
    lifecycle.stop()  # this test's daemon takes the lab's filter port
    (closed,) = free_ports(1)
    msgid, rcpt = message_id(), recipient("pass.test")
    with proxy_daemon(lab, closed) as daemon:
        queue_id = send(lab.filter_smtp_port, as_bytes(plain(msgid=msgid)), [rcpt])
        (entry,) = lab.wait_queue(
            lambda e: e["queue_id"] == queue_id and e["queue_name"] == "deferred"
        )
        (row,) = daemon.wait_rows(message_id=msgid)
        reinjection = Sink(closed).start()  # Postfix's smtpd on 10026 is back
        try:
            lab.flush()
            got = wait_sink(reinjection, rcpt)
        finally:
            reinjection.stop()

    reason = entry["recipients"][0]["delay_reason"]
    assert "said: 451 4.3.0 Error: re-injection failed, try again later" in reason
    assert (got.mail_from, got.rcpt_tos) == (SENDER, [rcpt])
    assert got.xforward["IDENT"] == queue_id
    assert header(got.data, "Message-ID") == msgid
    assert header(got.data, "X-Phishgate-Status") == "scanned"
    assert row["action"] == "accept"


# ---------------------------------------------------------------- LMTP split delivery


@pytest.fixture(scope="module")
def lmtp_lab(make_postfix_lab: LabFactory) -> Iterator[PostfixLab]:
    """A lab whose content filter transport is lmtp(8), as the README wires it."""
    lab = make_postfix_lab(filter_transport="lmtp")
    yield lab
    lab.purge()


def test_lmtp_failed_later_group_retried_alone(lmtp_lab: PostfixLab) -> None:
    """Second group's re-injection fails: only it is deferred; one copy each after."""
    msgid, passed, tagged = message_id(), recipient("pass.test"), recipient("tag.test")
    reinjection = Sink().start()  # plays Postfix's smtpd on 10026
    reinjection.handler.data_replies[tagged] = "451 4.3.0 not now"
    try:
        with proxy_daemon(lmtp_lab, reinjection.port) as daemon:
            data = as_bytes(phish(msgid=msgid))
            queue_id = send(lmtp_lab.filter_smtp_port, data, [passed, tagged])
            (entry,) = lmtp_lab.wait_queue(
                lambda e: e["queue_id"] == queue_id and e["queue_name"] == "deferred"
            )
            first = filter_attempts(lmtp_lab, queue_id, 2)
            del reinjection.handler.data_replies[tagged]
            lmtp_lab.flush()
            wait_sink(reinjection, tagged)
            wait_for(lambda: not queued_for(lmtp_lab, [tagged]), 10, "queue empty")
            rows = daemon.wait_rows(2, message_id=msgid)
    finally:
        reinjection.stop()

    assert [r["address"] for r in entry["recipients"]] == [tagged]
    assert (
        "451 4.3.0 Error: re-injection failed"
        in (entry["recipients"][0]["delay_reason"])
    )
    (to_passed_log,) = [line for line in first if f"to=<{passed}>" in line]
    assert "/lmtp[" in to_passed_log and "status=sent" in to_passed_log
    (to_passed,) = at_sink(reinjection, passed)
    (to_tagged,) = at_sink(reinjection, tagged)
    assert to_passed.rcpt_tos == [passed] and to_tagged.rcpt_tos == [tagged]
    assert header(to_passed.data, "X-Phishgate-Verdict").endswith(" action=accept")
    assert header(to_tagged.data, "X-Phishgate-Verdict").endswith(" action=tag")
    assert [r["front_door"] for r in rows] == ["proxy", "proxy"]


def test_lmtp_kill_9_with_50_in_flight_loses_nothing(lmtp_lab: PostfixLab) -> None:
    """The LMTP wiring: SIGKILL with 50 in flight, restart, flush: none lost."""
    with proxy_daemon(lmtp_lab, lmtp_lab.reinject_port) as daemon:
        kill_9_in_flight(lmtp_lab, daemon)
