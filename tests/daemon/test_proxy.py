"""The SMTP proxy with the real pipeline and model, a real sink, real sockets.

No Postfix here: smtplib plays Postfix's ``scan`` transport and a sink plays
the re-injection smtpd. The Postfix wiring itself is tested in
``test_proxy_postfix.py``.
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mailfactory import as_bytes, phish, plain
from phishgate.daemon.config import parse_config
from phishgate.daemon.metrics import Metrics
from phishgate.daemon.model import Model
from phishgate.daemon.pipeline import Pipeline
from phishgate.daemon.proxy import ProxyHandler, ProxyServer
from phishgate.daemon.quarantine import QuarantineStore
from phishgate.daemon.scanner import Scanner
from postfixlab import free_ports
from smtpsink import Sink

MODEL = Model.load()


@dataclass
class Rig:
    port: int
    sink: Sink
    store: QuarantineStore
    metrics: Metrics


def _config(state: Path, reinject_port: int, extra: str = "") -> str:
    return (
        f'[storage]\nstate_dir = "{state}"\n'
        f'[proxy]\nreinject = "127.0.0.1:{reinject_port}"\ntimeout_s = 5\n'
        # fixed thresholds: the test is about the proxy, not the model's calibration
        "[policy]\ntag_at = 0.5\nquarantine_at = 0.9\nreject_at = 0.99\n" + extra
    )


@pytest.fixture
def rig(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    extra = getattr(request, "param", "")
    sink = Sink().start()
    config = parse_config(_config(tmp_path, sink.port, extra), "test")
    metrics = Metrics()
    store = QuarantineStore(tmp_path)
    pipeline = Pipeline(config, Scanner(MODEL), metrics, None)
    handler = ProxyHandler(
        lambda: pipeline, ("127.0.0.1", sink.port), lambda: store, 5.0
    )
    (port,) = free_ports(1)
    server = ProxyServer(f"127.0.0.1:{port}", handler)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    yield Rig(port, sink, store, metrics)

    async def close() -> None:  # on the server's own loop: asyncio is not thread-safe
        server.close()

    asyncio.run_coroutine_threadsafe(close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    pipeline.close()
    sink.stop()


def _send(
    port: int, raw: bytes, rcpts: list[str], **kwargs: list[str]
) -> dict[str, tuple[int, bytes]]:
    raw = raw.replace(b"\r\n", b"\n").replace(
        b"\n", b"\r\n"
    )  # on the wire, as Postfix sends it
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("postfix.example.test")
        smtp.docmd(
            "XFORWARD",
            "ADDR=192.0.2.7 HELO=client.example.test IDENT=4ABC123 PROTO=ESMTP",
        )
        return smtp.sendmail("bob@example.org", rcpts, raw, **kwargs)  # type: ignore[arg-type]


def test_ham_passes_with_envelope_intact(rig: Rig) -> None:
    """SIZE, BODY, SMTPUTF8, RET/ENVID and NOTIFY/ORCPT reach the re-injection."""
    raw = as_bytes(plain(extra={"X-Phishgate-Verdict": "ham action=accept"}))
    _send(
        rig.port,
        raw,
        ["ann@example.org", "joe@example.org"],
        mail_options=["BODY=8BITMIME", "SMTPUTF8", "RET=HDRS", "ENVID=Ab+2Bc"],
        rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;ann@example.org"],
    )
    (got,) = rig.sink.messages
    assert got.mail_from == "bob@example.org"
    assert got.rcpt_tos == ["ann@example.org", "joe@example.org"]
    assert {"BODY=8BITMIME", "SMTPUTF8", "RET=HDRS", "ENVID=Ab+2Bc"} <= set(
        got.mail_params
    )
    assert any(p.upper().startswith("SIZE=") for p in got.mail_params)
    assert got.rcpt_params[0] == [
        "NOTIFY=SUCCESS,FAILURE",
        "ORCPT=rfc822;ann@example.org",
    ]
    assert got.xforward["ADDR"] == "192.0.2.7" and got.xforward["IDENT"] == "4ABC123"
    head = got.data.split(b"\r\n\r\n", 1)[0]
    assert head.count(b"X-Phishgate-Verdict") == 1
    assert b"X-Phishgate-Status: scanned" in head
    body = raw.split(b"\n\n", 1)[1].replace(b"\n", b"\r\n")
    assert got.data.endswith(b"\r\n\r\n" + body)


def test_phish_is_quarantined_not_delivered(rig: Rig) -> None:
    """A phish above quarantine_at is stored and Postfix gets 250, nothing delivered."""
    replies = _send(rig.port, as_bytes(phish()), ["ann@example.org"])
    assert replies == {}
    assert rig.sink.messages == []
    (entry,) = list(rig.store.entries())
    assert entry.recipients == ("ann@example.org",)
    assert b"X-Phishgate-Score" in rig.store.raw(entry)


@pytest.mark.parametrize(
    "rig",
    ['[[policy.domains]]\ndomain = "open.example"\nscan = false\n'],
    indirect=True,
)
def test_recipients_with_different_actions_are_split(rig: Rig) -> None:
    """One recipient's domain is not scanned: it gets the message, the other is held."""
    _send(rig.port, as_bytes(phish()), ["ann@example.org", "zed@open.example"])
    (got,) = rig.sink.messages
    assert got.rcpt_tos == ["zed@open.example"]
    (entry,) = list(rig.store.entries())
    assert entry.recipients == ("ann@example.org",)


def test_reinjection_down_answers_4xx(rig: Rig) -> None:
    """If re-injection fails, the proxy answers 451 so Postfix keeps the message."""
    rig.sink.stop()
    with pytest.raises(smtplib.SMTPDataError) as caught:
        _send(rig.port, as_bytes(plain()), ["ann@example.org"])
    assert caught.value.smtp_code == 451


def test_reinjection_refusal_answers_4xx(rig: Rig) -> None:
    """A 5xx from the re-injection smtpd still becomes 451 here, never a bounce."""
    rig.sink.handler.reply = "554 5.7.1 no thanks"
    with pytest.raises(smtplib.SMTPDataError) as caught:
        _send(rig.port, as_bytes(plain()), ["ann@example.org"])
    assert caught.value.smtp_code == 451


SPLIT = "".join(
    f'[[policy.domains]]\ndomain = "{domain}"\n'
    f"tag_at = {tag_at}\nquarantine_at = 1.0\nreject_at = 1.0\n"
    for domain, tag_at in (("pass.example", 1.0), ("tag.example", 1e-9))
)
"""pass.example accepts every message, tag.example tags every one."""
SPLIT_RCPTS = ["al@pass.example", "bo@tag.example"]


def _lmtp(port: int, raw: bytes, rcpts: list[str]) -> list[tuple[int, bytes]]:
    """One LMTP transaction as Postfix's lmtp(8) runs it; the reply per recipient."""
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    with smtplib.LMTP("127.0.0.1", port) as lmtp:
        assert lmtp.ehlo("postfix.example.test")[0] == 250  # sends LHLO
        lmtp.docmd("XFORWARD", "ADDR=192.0.2.7 IDENT=4ABC123 PROTO=ESMTP")
        assert lmtp.mail("bob@example.org")[0] == 250
        for rcpt in rcpts:
            assert lmtp.rcpt(rcpt)[0] == 250
        replies = [lmtp.data(raw)]
        replies += [lmtp.getreply() for _ in rcpts[1:]]
        assert lmtp.noop()[0] == 250  # no reply left over: the session is in step
        return replies


@pytest.mark.parametrize("rig", [SPLIT], indirect=True)
def test_lmtp_later_group_fails_only_its_recipients_retried(rig: Rig) -> None:
    """LMTP: 250 for the done group, 451 for the failed one; its retry sends once."""
    rig.sink.handler.data_replies["bo@tag.example"] = "451 4.3.0 not now"
    first = _lmtp(rig.port, as_bytes(phish()), SPLIT_RCPTS)
    del rig.sink.handler.data_replies["bo@tag.example"]
    retry = _lmtp(rig.port, as_bytes(phish()), ["bo@tag.example"])

    assert [code for code, _ in first] == [250, 451] and retry[0][0] == 250
    assert first[0][1] == b"2.0.0 Ok: accept"
    assert first[1][1] == b"4.3.0 Error: re-injection failed, try again later"
    delivered = [got.rcpt_tos for got in rig.sink.messages]
    assert delivered == [["al@pass.example"], ["bo@tag.example"]]
    assert b"action=tag" in rig.sink.messages[1].data


@pytest.mark.parametrize("rig", [SPLIT], indirect=True)
def test_smtp_later_group_fails_whole_message_451(rig: Rig) -> None:
    """SMTP (one reply): a failed later group makes it 451 for all (README limit)."""
    rig.sink.handler.data_replies["bo@tag.example"] = "451 4.3.0 not now"
    with pytest.raises(smtplib.SMTPDataError) as caught:
        _send(rig.port, as_bytes(phish()), SPLIT_RCPTS)
    assert caught.value.smtp_code == 451
    (got,) = rig.sink.messages  # the earlier group: Postfix will send it again
    assert got.rcpt_tos == ["al@pass.example"]


def test_lmtp_recipient_refused_by_reinjection_is_retried_alone(rig: Rig) -> None:
    """LMTP: a recipient the re-injection smtpd refuses gets 451, the rest 250."""
    rig.sink.handler.rcpt_replies["cy@example.org"] = "450 4.2.0 mailbox busy"
    replies = _lmtp(rig.port, as_bytes(plain()), ["al@example.org", "cy@example.org"])

    assert [code for code, _ in replies] == [250, 451]
    assert b"re-injection: 450 4.2.0 mailbox busy" in replies[1][1]
    (got,) = rig.sink.messages
    assert got.rcpt_tos == ["al@example.org"]


def test_smtp_recipient_refused_by_reinjection_sends_nothing(rig: Rig) -> None:
    """SMTP: one refused recipient means no DATA at all, and 451 for the message."""
    rig.sink.handler.rcpt_replies["cy@example.org"] = "450 4.2.0 mailbox busy"
    with pytest.raises(smtplib.SMTPDataError) as caught:
        _send(rig.port, as_bytes(plain()), ["al@example.org", "cy@example.org"])
    assert caught.value.smtp_code == 451 and rig.sink.messages == []


def test_lmtp_reinjection_down_answers_451_per_recipient(rig: Rig) -> None:
    """LMTP with re-injection down: one 451 per recipient, the session stays usable."""
    rig.sink.stop()
    replies = _lmtp(rig.port, as_bytes(plain()), ["al@example.org", "cy@example.org"])
    assert [code for code, _ in replies] == [451, 451]


@pytest.mark.parametrize(
    "rig",
    ['[[policy.domains]]\ndomain = "open.example"\nscan = false\n'],
    indirect=True,
)
def test_smtp_store_failure_reinjects_nothing(rig: Rig) -> None:
    """SMTP: the held group is stored first; its failure re-injects nothing."""
    rig.store.root.rmdir()  # no quarantine folder
    rig.store.root.write_bytes(b"")  # ... and no way to make one
    with pytest.raises(smtplib.SMTPDataError) as caught:
        _send(rig.port, as_bytes(phish()), ["zed@open.example", "ann@example.org"])
    assert caught.value.smtp_code == 451 and rig.sink.messages == []
