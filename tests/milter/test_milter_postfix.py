"""The milter library against a real Postfix (a private lab, tests/postfixlab.py)."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Iterator, Sequence
from email.message import EmailMessage

import pytest
from milter_mta import eventually, run
from phishgate.milter import (
    Action,
    AddHeader,
    ChangeHeader,
    Continue,
    Envelope,
    Handler,
    MilterOptions,
    MilterServer,
    Quarantine,
    ReplyCode,
    Session,
)
from postfixlab import LabFactory, PostfixLab

pytestmark = pytest.mark.postfix

LAB_TIMEOUTS = ("2s", "2s", "2s")
"""Postfix milter connect, command and content timeouts in the lab."""

SLOW_SECONDS = 3.0
"""Longer than the lab's content timeout: only SMFIR_PROGRESS saves the message."""

SUBJECTS = ("hello", "HOLD-ME", "REJECT-ME", "SLOW")


class LabHandler(Handler):
    """Tags and retitles every message; holds, rejects or stalls on markers."""

    async def end_of_message(
        self, session: Session, envelope: Envelope
    ) -> Sequence[Action]:
        """Act on the Subject marker."""
        (subject,) = envelope.header_values("Subject")
        if "REJECT-ME" in subject:
            return [ReplyCode(550, "5.7.1", "phishing 100% sure")]
        actions: list[Action] = [
            AddHeader("X-Milter-Queue-Id", envelope.queue_id or "none"),
            ChangeHeader(1, "Subject", "[tag] " + subject.strip()),
        ]
        if "HOLD-ME" in subject:
            actions.append(Quarantine("marker"))
        if "SLOW" in subject:
            await asyncio.sleep(SLOW_SECONDS)  # the slow scan under test
        return [*actions, Continue()]


@pytest.fixture(scope="module")
def milter_lab(make_postfix_lab: LabFactory) -> Iterator[PostfixLab]:
    """A private Postfix whose milter listener has 2-second timeouts."""
    lab = make_postfix_lab(milter_timeouts=LAB_TIMEOUTS)
    yield lab
    lab.purge()


def _send_all(port: int) -> dict[str, str]:
    """Send one message per subject over a single SMTP session."""
    results: dict[str, str] = {}
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        for subject in SUBJECTS:
            message = f"Subject: {subject}\r\nFrom: a@b.test\r\n\r\nbody\r\n"
            try:
                smtp.sendmail("a@b.test", ["bob@example.test"], message)
                results[subject] = "250"
            except smtplib.SMTPResponseException as exc:
                error = exc.smtp_error
                text = error.decode() if isinstance(error, bytes) else error
                results[subject] = f"{exc.smtp_code} {text}"
    return results


def _delivered(lab: PostfixLab) -> list[EmailMessage]:
    return sorted(lab.delivered(), key=lambda message: str(message["Subject"]))


def _held(lab: PostfixLab) -> list[str]:
    entries = lab.postqueue_json()
    return [entry["queue_id"] for entry in entries if entry["queue_name"] == "hold"]


def test_postfix_applies_every_reply(milter_lab: PostfixLab) -> None:
    """Postfix tags, retitles, holds, rejects, and waits out a slow scan."""
    options = MilterOptions(progress_interval=0.5)
    spec = milter_lab.milter_spec
    smtp_port = milter_lab.milter_smtp_port

    async def scenario() -> dict[str, str]:
        async with MilterServer(spec, LabHandler(), options):
            results = await asyncio.to_thread(_send_all, smtp_port)
        await eventually(lambda: len(_delivered(milter_lab)) == 2)
        return results

    results = run(scenario)
    assert results == {
        "hello": "250",
        "HOLD-ME": "250",
        "REJECT-ME": "550 5.7.1 phishing 100% sure",
        "SLOW": "250",
    }
    delivered = _delivered(milter_lab)
    assert [m["Subject"] for m in delivered] == ["[tag] SLOW", "[tag] hello"]
    assert all(m["X-Milter-Queue-Id"] not in (None, "none") for m in delivered)
    assert len(_held(milter_lab)) == 1
