"""``phishgate serve`` behind a real Postfix: actions, failures, lifecycle.

Every test here drives a private Postfix (tests/postfixlab.py) whose
``smtpd_milters`` points at the real daemon, started as a subprocess with its
own config and state directory (tests/daemon/serve_process.py). Actions are
forced per recipient domain with ``[[policy.domains]]`` thresholds, so no
assertion depends on the exact scores of the bundled model.
"""

from __future__ import annotations

import contextlib
import json
import signal
import smtplib
import socket
import struct
import subprocess
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from email.message import EmailMessage
from typing import Any

import pytest
from mailfactory import as_bytes, phish, plain
from phishgate.daemon import cli
from postfixlab import LabFactory, PostfixLab, wait_for
from serve_process import ServeProcess, message_id, recipient

pytestmark = pytest.mark.postfix

LOW = 1e-9
"""A threshold every real phish probability is above."""
PASS = {"domain": "pass.test", "tag_at": 1.0, "quarantine_at": 1.0, "reject_at": 1.0}
TAG = {"domain": "tag.test", "tag_at": LOW, "quarantine_at": 1.0, "reject_at": 1.0}
HOLD = {"domain": "hold.test", "tag_at": LOW, "quarantine_at": LOW, "reject_at": 1.0}
REJECT = {
    "domain": "reject.test",
    "tag_at": LOW,
    "quarantine_at": LOW,
    "reject_at": LOW,
}
DOMAINS = (PASS, TAG, HOLD, REJECT)
BLOCKED_SENDER = "mallory@blocked.test"
LISTS = {"block_senders": [BLOCKED_SENDER]}

OUR_HEADERS = (
    "X-Phishgate-Verdict",
    "X-Phishgate-Score",
    "X-Phishgate-Reasons",
    "X-Phishgate-Model",
    "X-Phishgate-Status",
)
TRACE = {"return-path", "x-original-to", "delivered-to", "received"}
"""What Postfix and virtual(8) add to every delivered message."""
SLOW_PARTS = 50_000
"""MIME parts in the slow message: about 2.3 MB, over a second to scan."""
LOG_KEYS = {
    "time", "queue_id", "message_id", "action", "phish", "reasons",
    "model_version", "label",
}  # fmt: skip


# ---------------------------------------------------------------- helpers


def send(
    lab: PostfixLab,
    message: EmailMessage | bytes,
    rcpt: str,
    sender: str = "bob@example.org",
) -> str:
    """Send one message through the milter listener; return the queue id.

    Raises ``SMTPResponseException`` (``SMTPDataError`` at end of DATA) when
    Postfix does not answer 250.
    """
    data = message if isinstance(message, bytes) else as_bytes(message)
    with smtplib.SMTP("127.0.0.1", lab.milter_smtp_port, timeout=60) as smtp:
        smtp.ehlo("client.example.test")
        _expect(smtp.mail(sender), 250)
        _expect(smtp.rcpt(rcpt), 250)
        code, reply = smtp.data(data)
    if code != 250:
        raise smtplib.SMTPDataError(code, reply)
    return reply.decode().rsplit(" ", 1)[-1]


def _expect(reply: tuple[int, bytes], code: int) -> None:
    if reply[0] != code:
        raise smtplib.SMTPResponseException(*reply)


def slow_message(msgid: str) -> bytes:
    """A legitimate but large multipart message whose scan takes a while."""
    head = (
        "From: Bob Smith <bob@example.org>\r\nTo: ann@example.org\r\n"
        f"Subject: Scanned notes\r\nMessage-ID: {msgid}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=part\r\n\r\n"
    ).encode()
    part = b"--part\r\nContent-Type: text/plain\r\n\r\nnote %d\r\n"
    return head + b"".join(part % i for i in range(SLOW_PARTS)) + b"--part--\r\n"


def delivered_raw(lab: PostfixLab, rcpt: str, timeout: float = 10.0) -> bytes:
    """The delivered file for ``rcpt``, as virtual(8) wrote it."""
    marker = f"\nDelivered-To: {rcpt}\n".encode()

    def find() -> bytes:
        for path in (lab.maildir / "new").iterdir():
            data = path.read_bytes()
            if marker in data:
                return data
        return b""

    return wait_for(find, timeout, f"delivery to {rcpt}")


def header_fields(block: bytes) -> list[tuple[str, bytes]]:
    """(lower-case name, raw field with continuation lines) of a header block."""
    fields: list[tuple[str, bytes]] = []
    for line in block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            name, raw = fields[-1]
            fields[-1] = (name, raw + line)
        else:
            fields.append((line.split(b":", 1)[0].decode().lower(), line))
    return fields


def held(lab: PostfixLab, queue_id: str) -> bytes:
    """The headers of a message in the hold queue (``postcat -hq``)."""
    lab.wait_queue(lambda e: e["queue_id"] == queue_id and e["queue_name"] == "hold")
    command = ["postcat", "-c", str(lab.config_dir), "-hq", queue_id]
    return subprocess.run(command, capture_output=True, check=True).stdout


def queued_for(lab: PostfixLab, rcpt: str) -> list[dict[str, object]]:
    """Queue entries (any queue) with ``rcpt`` among their recipients."""
    return [
        entry
        for entry in lab.postqueue_json()
        if rcpt in [r["address"] for r in entry["recipients"]]
    ]


def in_flight(daemon: ServeProcess) -> bool:
    """Whether the daemon is scanning a message right now."""
    return daemon.metric("phishgate_in_flight_messages") >= 1


def send_slow(
    pool: ThreadPoolExecutor, lab: PostfixLab, msgid: str, rcpt: str
) -> Future[str]:
    """Start sending the slow message in the background."""
    return pool.submit(send, lab, slow_message(msgid), rcpt)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def lab(make_postfix_lab: LabFactory) -> Iterator[PostfixLab]:
    """A lab with Postfix's default milter_default_action, tempfail."""
    lab = make_postfix_lab()
    yield lab
    lab.purge()


@pytest.fixture(scope="module")
def accept_lab(make_postfix_lab: LabFactory) -> Iterator[PostfixLab]:
    """A lab that fails open: milter_default_action = accept."""
    lab = make_postfix_lab(milter_default_action="accept")
    yield lab
    lab.purge()


@pytest.fixture(scope="module")
def lifecycle_lab(make_postfix_lab: LabFactory) -> Iterator[PostfixLab]:
    """A tempfail lab for tests that signal, stop or kill their own daemon."""
    lab = make_postfix_lab()
    yield lab
    lab.purge()


@pytest.fixture(scope="module")
def served(lab: PostfixLab) -> Iterator[ServeProcess]:
    """One daemon for the tests that only send mail; select by recipient."""
    with ServeProcess(lab.milter_port, domains=DOMAINS, lists=LISTS) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def reloading(lifecycle_lab: PostfixLab) -> Iterator[ServeProcess]:
    """A daemon the SIGHUP tests share; each writes the config it reloads."""
    with own_daemon(lifecycle_lab) as daemon:
        yield daemon


def own_daemon(lab: PostfixLab) -> ServeProcess:
    """A daemon of the test's own on ``lab``, with the shared policy."""
    return ServeProcess(lab.milter_port, domains=DOMAINS, lists=LISTS)


# ---------------------------------------------------------------- actions


def test_ham_delivered_with_headers_and_unchanged(
    lab: PostfixLab, served: ServeProcess
) -> None:
    """Ham arrives as through an unfiltered listener, plus our five headers."""
    rcpt, reference = recipient("pass.test"), recipient("pass.test")
    original = as_bytes(plain(msgid=message_id()))
    send(lab, original, rcpt)
    with smtplib.SMTP("127.0.0.1", lab.smtp_port, timeout=60) as smtp:
        smtp.sendmail("bob@example.org", [reference], original)

    head, _, body = delivered_raw(lab, rcpt).partition(b"\n\n")
    plain_head, _, plain_body = delivered_raw(lab, reference).partition(b"\n\n")
    fields = header_fields(head + b"\n")
    ours = [f for f in fields if f[0].startswith("x-phishgate-")]
    untraced = [f for f in header_fields(plain_head + b"\n") if f[0] not in TRACE]
    assert [f for f in fields if f[0] not in TRACE] == untraced + ours
    assert untraced == header_fields(original.partition(b"\n\n")[0] + b"\n")
    assert [name for name, _ in ours] == [h.lower() for h in OUR_HEADERS]
    assert body == plain_body
    assert b" action=accept\nX-Phishgate-Score: " in head
    assert head.endswith(b"\nX-Phishgate-Status: scanned")


def test_phish_held_with_verdict_headers(lab: PostfixLab, served: ServeProcess) -> None:
    """A phish above quarantine_at waits in Postfix's hold queue with our headers."""
    msgid = message_id()
    queue_id = send(lab, phish(msgid=msgid), recipient("hold.test"))

    headers = held(lab, queue_id).decode()
    (row,) = served.wait_rows(message_id=msgid)
    assert row["action"] == "quarantine" and row["queue_id"] == queue_id
    assert "X-Phishgate-Verdict: " in headers
    assert "action=quarantine\n" in headers
    assert f"X-Phishgate-Score: {row['phish']:.4f}\n" in headers
    assert f"X-Phishgate-Model: {row['model_version']}\n" in headers
    first_reason = json.loads(row["reasons"])[0]
    assert f"X-Phishgate-Reasons: {first_reason}" in headers
    assert "X-Phishgate-Status: scanned\n" in headers
    assert "milter triggers HOLD action" in lab.wait_log(f"{queue_id}: milter-hold")


def test_reject_above_reject_at(lab: PostfixLab, served: ServeProcess) -> None:
    """A phish above reject_at gets 550 5.7.1 with its first reason at end of DATA."""
    msgid, rcpt = message_id(), recipient("reject.test")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(lab, phish(msgid=msgid), rcpt)

    (row,) = served.wait_rows(message_id=msgid)
    text = refused.value.smtp_error.decode()
    assert refused.value.smtp_code == 550
    assert text.startswith("5.7.1 ")
    assert json.loads(row["reasons"])[0] in text
    assert row["action"] == "reject"
    assert queued_for(lab, rcpt) == []


def test_block_list_rejects(lab: PostfixLab, served: ServeProcess) -> None:
    """A sender on the block list is refused with 550 5.7.1 naming the list."""
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(lab, plain(msgid=message_id()), recipient("pass.test"), BLOCKED_SENDER)

    assert refused.value.smtp_code == 550
    assert b"5.7.1" in refused.value.smtp_error
    assert b"block list" in refused.value.smtp_error


def test_spoofed_verdict_headers_removed(lab: PostfixLab, served: ServeProcess) -> None:
    """Incoming X-Phishgate-Verdict/Score headers, any case, are replaced by ours."""
    rcpt, msgid = recipient("pass.test"), message_id()
    message = plain(msgid=msgid)
    message["X-Phishgate-Verdict"] = "clean"
    message["X-Phishgate-Score"] = "0.0000"
    message["x-phishgate-verdict"] = "clean action=accept"
    send(lab, message, rcpt)

    fields = header_fields(delivered_raw(lab, rcpt).partition(b"\n\n")[0] + b"\n")
    (row,) = served.wait_rows(message_id=msgid)
    verdicts = [raw for name, raw in fields if name == "x-phishgate-verdict"]
    scores = [raw for name, raw in fields if name == "x-phishgate-score"]
    assert len(verdicts) == 1 and b"clean" not in verdicts[0]
    assert scores == [f"X-Phishgate-Score: {row['phish']:.4f}\n".encode()]


# ---------------------------------------------------------------- log and metrics


def test_every_message_logged_once_and_counted(
    lab: PostfixLab, served: ServeProcess
) -> None:
    """Accepted, held and rejected mail: one verdict row each, and the metrics move."""
    before = served.metrics()
    sent = {"accept": message_id(), "quarantine": message_id(), "reject": message_id()}
    rcpt = recipient("pass.test")
    queue_id = send(lab, plain(msgid=sent["accept"]), rcpt)
    send(lab, phish(msgid=sent["quarantine"]), recipient("hold.test"))
    with pytest.raises(smtplib.SMTPDataError):
        send(lab, phish(msgid=sent["reject"]), recipient("reject.test"))

    rows = {action: served.wait_rows(message_id=m) for action, m in sent.items()}
    after = served.metrics()
    assert {action: [r["action"] for r in found] for action, found in rows.items()} == {
        action: [action] for action in sent
    }
    (accepted,) = rows["accept"]
    assert accepted["queue_id"] == queue_id and accepted["front_door"] == "milter"
    assert json.loads(accepted["recipients"]) == [rcpt]
    assert accepted["sender"] == "bob@example.org"
    assert accepted["status"] == "scanned" and accepted["size"] > 0

    def delta(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    for action in sent:
        assert (
            delta("phishgate_messages_total", front_door="milter", action=action) == 1
        )
    assert delta("phishgate_scan_duration_seconds_count", stage="total") == 3
    assert delta("phishgate_phish_score_count") == 3
    assert delta("phishgate_verdict_log_rows_total") == 3
    version = accepted["model_version"]
    assert after[("phishgate_model_info", frozenset({("version", version)}))] == 1


def log_json(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    """Run ``phishgate log --json ARGS`` in-process; its records."""
    capsys.readouterr()
    assert cli.main(["log", "--json", "--limit", "1000", *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_log_json_contract(
    lab: PostfixLab, served: ServeProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    """``phishgate log --json``: one object per line with the documented keys."""
    msgid = message_id()
    send(lab, phish(msgid=msgid), recipient("hold.test"))
    served.wait_rows(message_id=msgid)

    records = log_json(capsys, "--config", str(served.config_path))
    held_only = log_json(
        capsys, "--config", str(served.config_path), "--action", "quarantine"
    )

    (record,) = [r for r in records if r["message_id"] == msgid]
    assert set(record) >= LOG_KEYS
    assert record["action"] == "quarantine" and record["label"] is None
    assert isinstance(record["time"], float) and isinstance(record["queue_id"], str)
    assert 0.0 <= record["phish"] <= 1.0 and record["model_version"]
    assert record["reasons"] and all(isinstance(r, str) for r in record["reasons"])
    assert {r["action"] for r in held_only} == {"quarantine"}


# ---------------------------------------------------------------- hostile input


def answer_before_hangup(payload: bytes, port: int) -> bytes:
    """Send ``payload`` on a fresh connection; what came back before the close.

    Fails with a timeout if the daemon keeps the connection open.
    """
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(4096):
                received += chunk
    return received


def open_connections(daemon: ServeProcess) -> float:
    """Milter connections the daemon has open now."""
    return daemon.metric("phishgate_milter_connections")


def test_garbage_does_not_disturb_postfix(
    lab: PostfixLab, served: ServeProcess
) -> None:
    """Garbage and a 2 GB length field close only their own connections."""
    rcpt, msgid = recipient("pass.test"), message_id()
    payloads = (
        b"GET /metrics HTTP/1.1\r\n\r\n",
        b"\x00\x00\x00\x04Zzzz",
        b"\x00\x00\x00\x00",
        struct.pack("!I", 2**31) + b"B" + b"x" * 1024,
    )
    with smtplib.SMTP("127.0.0.1", lab.milter_smtp_port, timeout=60) as smtp:
        smtp.ehlo("client.example.test")  # Postfix's milter session is open now
        _expect(smtp.mail("bob@example.org"), 250)
        _expect(smtp.rcpt(rcpt), 250)
        for payload in payloads:
            assert answer_before_hangup(payload, lab.milter_port) == b""
        wait_for(lambda: open_connections(served) == 1, 10, "only Postfix's left")
        code, reply = smtp.data(as_bytes(plain(msgid=msgid)))

    assert code == 250, reply
    assert b"X-Phishgate-Status: scanned\n" in delivered_raw(lab, rcpt)
    assert served.wait_rows(message_id=msgid)[0]["status"] == "scanned"
    assert served.log_text().count("protocol error") >= len(payloads)


# ---------------------------------------------------------------- daemon down


def test_daemon_down_accept_delivers_unscanned(accept_lab: PostfixLab) -> None:
    """No daemon and milter_default_action = accept: mail flows, without our headers."""
    rcpt = recipient("pass.test")
    send(accept_lab, plain(msgid=message_id()), rcpt)

    assert b"X-Phishgate-" not in delivered_raw(accept_lab, rcpt)


def test_daemon_down_tempfail_defers_to_sender(lifecycle_lab: PostfixLab) -> None:
    """No daemon, milter_default_action = tempfail: 451, the sender keeps the mail."""
    rcpt = recipient("pass.test")
    with pytest.raises(smtplib.SMTPResponseException) as refused:
        send(lifecycle_lab, plain(msgid=message_id()), rcpt)

    assert refused.value.smtp_code == 451
    assert queued_for(lifecycle_lab, rcpt) == []


def test_killed_mid_scan_tempfail(lifecycle_lab: PostfixLab) -> None:
    """Hung, then SIGKILLed mid-scan, tempfail: the client gets 451 and will retry."""
    msgid, rcpt = message_id(), recipient("pass.test")
    with own_daemon(lifecycle_lab) as daemon, ThreadPoolExecutor(1) as pool:
        sending = send_slow(pool, lifecycle_lab, msgid, rcpt)
        wait_for(lambda: in_flight(daemon), 20, "slow message in flight")
        daemon.send_signal(signal.SIGSTOP)  # a hung daemon
        daemon.send_signal(signal.SIGKILL)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            sending.result(60)
        assert daemon.wait_exit() == -signal.SIGKILL

    assert refused.value.smtp_code == 451
    assert queued_for(lifecycle_lab, rcpt) == []
    # Proof that Postfix had the whole message out and was waiting for a verdict:
    lifecycle_lab.wait_log("can't read SMFIC_BODYEOB reply packet header")
    log = lifecycle_lab.wait_log(f"to=<{rcpt}>").splitlines()
    (line,) = [line for line in log if f"to=<{rcpt}>" in line]
    assert "milter-reject: END-OF-MESSAGE" in line and " 4.7.1 " in line


def test_killed_mid_scan_accept(accept_lab: PostfixLab) -> None:
    """Hung then SIGKILLed mid-scan, accept: Postfix delivers the message unscanned."""
    msgid, rcpt = message_id(), recipient("pass.test")
    with own_daemon(accept_lab) as daemon, ThreadPoolExecutor(1) as pool:
        sending = send_slow(pool, accept_lab, msgid, rcpt)
        wait_for(lambda: in_flight(daemon), 20, "slow message in flight")
        daemon.send_signal(signal.SIGSTOP)
        daemon.send_signal(signal.SIGKILL)
        sending.result(60)

    delivered = delivered_raw(accept_lab, rcpt)
    assert msgid.encode() in delivered
    assert b"X-Phishgate-" not in delivered


# ---------------------------------------------------------------- signals


def test_sigterm_finishes_in_flight_message(lifecycle_lab: PostfixLab) -> None:
    """SIGTERM during a scan: that message is scanned and delivered, then exit 0."""
    msgid, rcpt = message_id(), recipient("pass.test")
    with own_daemon(lifecycle_lab) as daemon, ThreadPoolExecutor(1) as pool:
        sending = send_slow(pool, lifecycle_lab, msgid, rcpt)
        wait_for(lambda: in_flight(daemon), 20, "slow message in flight")
        daemon.send_signal(signal.SIGTERM)
        queue_id = sending.result(60)
        assert daemon.wait_exit() == 0
        log = daemon.log_text()
        rows = daemon.rows(message_id=msgid)

    assert log.index("shutting down") < log.index(f"message_id={msgid}")
    assert log.rstrip().endswith("stopped")
    assert [(r["queue_id"], r["status"]) for r in rows] == [(queue_id, "scanned")]
    assert b"X-Phishgate-Status: scanned\n" in delivered_raw(lifecycle_lab, rcpt)


def test_sighup_broken_config_keeps_old(
    lifecycle_lab: PostfixLab, reloading: ServeProcess
) -> None:
    """SIGHUP with a broken config: "reload refused", mail still scanned the old way."""
    msgid, daemon = message_id(), reloading
    refusals = daemon.log_text().count("reload refused")
    daemon.write_config(policy={"reject_at": 7}, domains=DOMAINS, lists=LISTS)
    daemon.send_signal(signal.SIGHUP)
    log = daemon.wait_log("reload refused", count=refusals + 1)
    queue_id = send(lifecycle_lab, phish(msgid=msgid), recipient("hold.test"))
    (row,) = daemon.wait_rows(message_id=msgid)

    refusal = log.split("reload refused")[refusals + 1].splitlines()[0]
    assert "policy.reject_at" in refusal
    assert daemon.metric("phishgate_config_reloads_total", result="refused") >= 1
    assert row["action"] == "quarantine"
    assert b"action=quarantine" in held(lifecycle_lab, queue_id)


def test_sighup_restart_only_change_refused(reloading: ServeProcess) -> None:
    """SIGHUP that changes a [milter] setting is refused, naming the key."""
    refusals = reloading.log_text().count("reload refused")
    milter = reloading.config_text().replace(
        "[milter]\n", "[milter]\nmax_body_bytes = 1\n"
    )
    reloading.write_config_text(milter)
    reloading.send_signal(signal.SIGHUP)
    log = reloading.wait_log("reload refused", count=refusals + 1)

    refusal = log.split("reload refused")[refusals + 1].splitlines()[0]
    assert "milter.max_body_bytes changed: restart phishgate to apply" in refusal


def test_sighup_good_config_applies(
    lifecycle_lab: PostfixLab, reloading: ServeProcess
) -> None:
    """SIGHUP with a good config: the new subject tag is used for the next message."""
    before, after, daemon = recipient("tag.test"), recipient("tag.test"), reloading
    send(lifecycle_lab, phish(), before)
    reloads = daemon.metric("phishgate_config_reloads_total", result="ok")
    daemon.write_config(
        policy={"subject_tag": "[SUSPICIOUS] "}, domains=DOMAINS, lists=LISTS
    )
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_log("reloaded ", count=daemon.log_text().count("reloaded ") + 1)
    send(lifecycle_lab, phish(), after)

    assert daemon.metric("phishgate_config_reloads_total", result="ok") == reloads + 1
    subject = b"Subject: %s Urgent: verify your PayPal account\n"
    assert subject % b"[PHISH?]" in delivered_raw(lifecycle_lab, before)
    assert subject % b"[SUSPICIOUS]" in delivered_raw(lifecycle_lab, after)
    assert b"action=tag" in delivered_raw(lifecycle_lab, after)
