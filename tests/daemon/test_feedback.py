"""Reports to the feedback addresses, without Postfix.

Real SQLite files in a temporary state directory: verdict rows written by
the real verdict log, labels read back with plain SQL.
"""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from mailfactory import as_bytes, forward_as_attachment, forward_inline, phish, plain
from phishgate.daemon.config import ConfigError, parse_config
from phishgate.daemon.feedback import ReportDesk, extract_originals, receipt
from phishgate.daemon.message import content_fingerprint, parse_message
from phishgate.daemon.metrics import Metrics
from phishgate.daemon.milterfront import MilterFrontDoor
from phishgate.daemon.model import Model
from phishgate.daemon.pipeline import MessageEnvelope, Pipeline
from phishgate.daemon.scanner import Scanner
from phishgate.daemon.verdictlog import DB_NAME, VerdictLog, make_row
from phishgate.milter import (
    AddRecipient,
    Continue,
    DeleteRecipient,
    Discard,
    Envelope,
    ReplyCode,
)

ORIGINAL = phish(to="ann@example.org", msgid="<kit.42@paypa1-secure.top>")
ORIGINAL_RAW = as_bytes(ORIGINAL)


def feedback_config(state_dir: Path, extra: str = "") -> Any:
    return parse_config(
        f"""
[storage]
state_dir = "{state_dir}"
[feedback]
phish_address = "phish@example.org"
ham_address = "not-phish@example.org"
trusted_networks = ["192.0.2.0/24"]
{extra}
""",
        "test",
    )


def log_verdict(state_dir: Path, raw: bytes, recipients: list[str]) -> int:
    """Write the original's verdict row with the real verdict log; its id."""
    parsed = parse_message(raw)
    verdict_log = VerdictLog(state_dir)
    verdict_log.start()
    verdict_log.record(
        make_row(
            front_door="milter",
            message_id=parsed.message_id,
            recipients=recipients,
            phish=0.97,
            action="quarantine",
            fingerprint=content_fingerprint(parsed),
        )
    )
    verdict_log.close()
    with sqlite3.connect(state_dir / DB_NAME) as conn:
        return int(conn.execute("SELECT max(id) FROM verdicts").fetchone()[0])


def labels(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / DB_NAME
    if not path.exists():
        return []
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM labels ORDER BY id")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def desk(state_dir: Path, extra: str = "") -> ReportDesk:
    config = feedback_config(state_dir, extra)
    return ReportDesk(state_dir, config.feedback, config.policy.subject_tag)


def report(
    state_dir: Path,
    raw: bytes,
    *,
    label: str = "phish",
    mail_from: str = "ann@example.org",
    auth_login: str = "",
    client_addr: str = "203.0.113.9",
    extra: str = "",
) -> Any:
    return desk(state_dir, extra).handle(
        label, raw, mail_from=mail_from, auth_login=auth_login, client_addr=client_addr
    )


# -- Recovering the original ---------------------------------------------------


def test_forwarded_attachment_gives_back_the_original() -> None:
    tagged = ORIGINAL_RAW.replace(b"Subject: ", b"Subject: [PHISH?] ", 1)
    originals = extract_originals(
        as_bytes(forward_as_attachment(tagged)), subject_tag="[PHISH?] "
    )
    assert [o.confidence for o in originals] == ["attachment"]
    parsed = parse_message(originals[0].raw)
    assert parsed.message_id == "<kit.42@paypa1-secure.top>"
    assert parsed.subject == ORIGINAL["Subject"]  # our tag is gone
    assert content_fingerprint(parsed) == content_fingerprint(
        parse_message(ORIGINAL_RAW)
    )


def test_several_attachments_and_an_eml_file_are_all_taken() -> None:
    second = as_bytes(plain(msgid="<two@example.org>"))
    message = forward_as_attachment(ORIGINAL_RAW, second)
    message.add_attachment(
        as_bytes(plain(msgid="<three@example.org>")),
        maintype="application",
        subtype="octet-stream",
        filename="Third.EML",
    )
    ids = [
        parse_message(o.raw).message_id for o in extract_originals(as_bytes(message))
    ]
    assert ids == [
        "<kit.42@paypa1-secure.top>",
        "<two@example.org>",
        "<three@example.org>",
    ]


def test_a_base64_encoded_rfc822_part_is_decoded() -> None:
    encoded = base64.encodebytes(ORIGINAL_RAW).decode()
    raw = (
        "From: ann@example.org\r\nTo: phish@example.org\r\nSubject: Fwd\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        "--b\r\nContent-Type: message/rfc822\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
        f"{encoded}\r\n--b--\r\n"
    ).encode()
    (original,) = extract_originals(raw)
    assert parse_message(original.raw).message_id == "<kit.42@paypa1-secure.top>"


@pytest.mark.parametrize(
    "marker",
    [
        "---------- Forwarded message ---------",
        "-------- Original Message --------",
        "________________________________",
        "Begin forwarded message:",
    ],
)
def test_an_inline_forward_is_rebuilt_as_lower_confidence(marker: str) -> None:
    original = plain(
        "Your mailbox is full. Log in at http://198.51.100.7/owa to keep your mail.",
        subject="Mailbox quota exceeded",
        sender="IT Desk <it@helpdesk-example.top>",
    )
    (found,) = extract_originals(as_bytes(forward_inline(original, marker=marker)))
    assert found.confidence == "inline"
    parsed = parse_message(found.raw)
    assert parsed.subject == "Mailbox quota exceeded"
    assert "it@helpdesk-example.top" in parsed.header("from")
    assert "http://198.51.100.7/owa" in parsed.text


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff garbage \r\n\r\n\x80",
        as_bytes(plain("Please look at this, I think it is phishing.")),
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n"
        b"Content-Type: message/rfc822\r\n\r\njunk without headers\r\n--x--\r\n",
    ],
)
def test_a_report_without_an_original_gives_nothing(raw: bytes) -> None:
    assert extract_originals(raw) == []


# -- Checking the reporter and recording labels --------------------------------


def test_authenticated_recipient_report_is_linked_to_the_verdict(
    tmp_path: Path,
) -> None:
    verdict_id = log_verdict(tmp_path, ORIGINAL_RAW, ["ann@example.org"])
    result = report(
        tmp_path,
        as_bytes(forward_as_attachment(ORIGINAL_RAW)),
        auth_login="ann@example.org",
    )
    assert result.accepted and result.matched_by == ("message-id",)
    (row,) = labels(tmp_path)
    assert row["label"] == "phish" and row["source"] == "user-report"
    assert row["verdict_id"] == verdict_id
    assert row["reporter"] == "ann@example.org"
    assert row["message_id"] == "<kit.42@paypa1-secure.top>"
    stored = parse_message(Path(row["path"]).read_bytes())
    assert stored.message_id == "<kit.42@paypa1-secure.top>"
    assert Path(row["path"]).stat().st_mode & 0o777 == 0o600


def test_an_unauthenticated_outsider_is_refused(tmp_path: Path) -> None:
    log_verdict(tmp_path, ORIGINAL_RAW, ["ann@example.org"])
    result = report(tmp_path, as_bytes(forward_as_attachment(ORIGINAL_RAW)))
    assert result.reason == "unauthenticated"
    assert labels(tmp_path) == []


def test_a_trusted_network_counts_without_a_login(tmp_path: Path) -> None:
    log_verdict(tmp_path, ORIGINAL_RAW, ["ann@example.org"])
    result = report(
        tmp_path,
        as_bytes(forward_as_attachment(ORIGINAL_RAW)),
        client_addr="192.0.2.25",
    )
    assert result.accepted


def test_a_reporter_who_was_not_a_recipient_is_refused(tmp_path: Path) -> None:
    log_verdict(tmp_path, ORIGINAL_RAW, ["ann@example.org"])
    result = report(
        tmp_path,
        as_bytes(forward_as_attachment(ORIGINAL_RAW, reporter="mallory@example.org")),
        mail_from="mallory@example.org",
        auth_login="mallory@example.org",
    )
    assert result.reason == "not-recipient"
    assert labels(tmp_path) == []


def test_without_message_id_the_fingerprint_finds_the_verdict(
    tmp_path: Path,
) -> None:
    no_id = ORIGINAL_RAW.replace(b"Message-ID: <kit.42@paypa1-secure.top>\n", b"")
    assert b"Message-ID" not in no_id
    verdict_id = log_verdict(tmp_path, no_id, ["ann@example.org"])
    result = report(
        tmp_path, as_bytes(forward_as_attachment(no_id)), client_addr="192.0.2.1"
    )
    assert result.matched_by == ("fingerprint",)
    assert labels(tmp_path)[0]["verdict_id"] == verdict_id


def test_unmatched_originals_follow_accept_unmatched(tmp_path: Path) -> None:
    raw = as_bytes(forward_as_attachment(ORIGINAL_RAW))
    assert report(tmp_path, raw, client_addr="192.0.2.1").matched_by == ("none",)
    strict = report(
        tmp_path / "strict",
        raw,
        client_addr="192.0.2.1",
        extra="accept_unmatched = false",
    )
    assert strict.reason == "unmatched"


def test_reports_past_the_hourly_limit_are_refused(tmp_path: Path) -> None:
    extra = "rate_limit_per_hour = 2"
    for n in range(2):
        raw = as_bytes(forward_as_attachment(as_bytes(plain(msgid=f"<m{n}@x.org>"))))
        assert report(tmp_path, raw, client_addr="192.0.2.1", extra=extra).accepted
    third = as_bytes(forward_as_attachment(as_bytes(plain(msgid="<m3@x.org>"))))
    result = report(tmp_path, third, client_addr="192.0.2.1", extra=extra)
    assert result.reason == "rate-limited"
    assert len(labels(tmp_path)) == 2


def test_the_same_report_twice_makes_one_label(tmp_path: Path) -> None:
    raw = as_bytes(forward_as_attachment(ORIGINAL_RAW))
    first = report(tmp_path, raw, client_addr="192.0.2.1")
    second = report(tmp_path, raw, client_addr="192.0.2.1")
    assert first.label_ids == second.label_ids
    assert len(labels(tmp_path)) == 1


def test_the_receipt_names_the_subject_but_carries_no_link(tmp_path: Path) -> None:
    result = report(
        tmp_path,
        as_bytes(forward_as_attachment(ORIGINAL_RAW)),
        client_addr="192.0.2.1",
    )
    text = receipt(result, "phish@example.org", "ann@example.org").decode()
    assert ORIGINAL["Subject"] in text
    assert "http" not in text and "198.51.100.7" not in text
    assert "Auto-Submitted: auto-replied" in text


# -- Configuration ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('phish_address = "not an address"', "feedback.phish_address"),
        (
            'phish_address = "p@x.org"\nham_address = "P@x.org"',
            "feedback.ham_address",
        ),
        ('phish_address = "p@x.org"\nforward_to = "p@x.org"', "feedback.forward_to"),
        ('trusted_networks = ["10.0.0.0/33"]', "feedback.trusted_networks[0]"),
        ("rate_limit_per_hour = 0", "feedback.rate_limit_per_hour"),
        ('send_via = "localhost"', "feedback.send_via"),
    ],
)
def test_bad_feedback_config_names_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_config(f"[feedback]\n{text}\n", "test")


# -- Through the pipeline and the milter front door ----------------------------


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner(Model.load(None))


def milter_envelope(raw: bytes, rcpts: list[str], auth: str = "") -> Envelope:
    head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    envelope = Envelope()
    envelope.mail_from = "ann@example.org"
    envelope.rcpt_to = rcpts
    envelope.macros.update({"auth_authen": auth, "i": "4ZQ1"})
    envelope.client_address = "203.0.113.9"
    for line in head.decode().replace("\n ", " ").replace("\n\t", " ").split("\n"):
        name, _, value = line.partition(":")
        envelope.headers.append((name, value))
    envelope.body = body.replace(b"\n", b"\r\n")
    return envelope


def front_door(
    tmp_path: Path, scanner: Scanner, extra: str = ""
) -> tuple[MilterFrontDoor, Metrics]:
    metrics = Metrics()
    pipeline = Pipeline(feedback_config(tmp_path, extra), scanner, metrics, None)
    return MilterFrontDoor(pipeline, lambda: "hold"), metrics


def end_of_message(door: MilterFrontDoor, envelope: Envelope) -> list[Any]:
    return list(asyncio.run(door.end_of_message(None, envelope)))  # type: ignore[arg-type]


def test_milter_refuses_an_outsiders_report_in_the_session(
    tmp_path: Path, scanner: Scanner
) -> None:
    door, metrics = front_door(tmp_path, scanner)
    raw = as_bytes(forward_as_attachment(ORIGINAL_RAW))
    (reply,) = end_of_message(door, milter_envelope(raw, ["phish@example.org"]))
    assert isinstance(reply, ReplyCode)
    assert (reply.code, reply.xcode) == (550, "5.7.1")
    assert "authenticated" in reply.text
    assert (
        metrics.registry.get_sample_value(
            "phishgate_report_refusals_total", {"reason": "unauthenticated"}
        )
        == 1.0
    )


def test_milter_discards_an_accepted_report_without_forward_to(
    tmp_path: Path, scanner: Scanner
) -> None:
    door, metrics = front_door(tmp_path, scanner)
    raw = as_bytes(forward_as_attachment(ORIGINAL_RAW))
    envelope = milter_envelope(raw, ["phish@example.org"], auth="ann@example.org")
    assert end_of_message(door, envelope) == [Discard()]
    assert labels(tmp_path)[0]["label"] == "phish"
    sample = metrics.registry.get_sample_value
    assert sample("phishgate_reports_total", {"result": "accepted"}) == 1.0
    assert (
        sample("phishgate_labels_total", {"source": "user-report", "label": "phish"})
        == 1.0
    )


def test_milter_redirects_an_accepted_report_to_forward_to(
    tmp_path: Path, scanner: Scanner
) -> None:
    door, _ = front_door(tmp_path, scanner, 'forward_to = "soc@example.org"')
    raw = as_bytes(forward_as_attachment(ORIGINAL_RAW, to="not-phish@example.org"))
    envelope = milter_envelope(raw, ["not-phish@example.org"], auth="ann@example.org")
    actions = end_of_message(door, envelope)
    assert DeleteRecipient("<not-phish@example.org>") in actions
    assert AddRecipient("<soc@example.org>") in actions
    assert actions[-1] == Continue()
    assert labels(tmp_path)[0]["label"] == "ham"


def test_other_recipients_of_a_report_get_it_scanned(
    tmp_path: Path, scanner: Scanner
) -> None:
    door, _ = front_door(tmp_path, scanner)
    raw = as_bytes(forward_as_attachment(ORIGINAL_RAW))
    envelope = milter_envelope(
        raw, ["phish@example.org", "bob@example.org"], auth="ann@example.org"
    )
    actions = end_of_message(door, envelope)
    assert DeleteRecipient("<phish@example.org>") in actions
    assert not any(isinstance(a, AddRecipient | Discard) for a in actions)
    assert any(getattr(a, "name", "") == "X-Phishgate-Verdict" for a in actions)


def test_a_report_is_logged_with_its_outcome(tmp_path: Path, scanner: Scanner) -> None:
    verdict_log = VerdictLog(tmp_path)
    verdict_log.start()
    pipeline = Pipeline(feedback_config(tmp_path), scanner, Metrics(), verdict_log)
    envelope = MessageEnvelope(
        front_door="proxy",
        mail_from="eve@example.net",
        rcpt_to=("phish@example.org",),
        client_addr="203.0.113.9",
    )
    raw = as_bytes(forward_as_attachment(ORIGINAL_RAW))
    decision = asyncio.run(pipeline.inspect(envelope, raw))
    verdict_log.close()
    assert decision.action == "report"
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        action, status = conn.execute("SELECT action, status FROM verdicts").fetchone()
    assert (action, status) == ("report", "report refused (unauthenticated)")


def test_a_report_with_thousands_of_attachments_takes_the_first_ten() -> None:
    part = (
        "--b\r\nContent-Type: message/rfc822\r\n\r\n"
        "From: a@x.org\r\nSubject: s{n}\r\n\r\n"
        "one two three four five six seven eight nine\r\n"
    )
    raw = (
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        + "".join(part.format(n=n) for n in range(5000))
        + "--b--\r\n"
    ).encode()
    originals = extract_originals(raw)
    assert [parse_message(o.raw).subject for o in originals] == [
        f"s{n}" for n in range(10)
    ]
