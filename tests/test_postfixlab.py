"""The private Postfix lab itself, with no phishgate code in the mail path."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

import pytest
from postfixlab import OFF, LabFactory, PostfixLab, QueueEntry

pytestmark = pytest.mark.postfix


def _send(port: int, recipient: str, subject: str) -> None:
    message = EmailMessage()
    message["From"] = "alice@sender.test"
    message["To"] = recipient
    message["Subject"] = subject
    message.set_content("body\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.send_message(message)


def test_plain_listener_delivers_to_maildir(postfix_lab: PostfixLab) -> None:
    """A message to the plain listener lands in the Maildir for its recipient."""
    _send(postfix_lab.smtp_port, "plain@example.test", "plain")

    (message,) = postfix_lab.wait_delivered(recipient="plain@example.test")
    assert message["Subject"] == "plain"
    assert message["X-Original-To"] == "plain@example.test"


def test_filter_listener_defers_without_proxy(postfix_lab: PostfixLab) -> None:
    """With nothing on filter_port, content-filtered mail waits in the queue."""
    recipient = "filtered@example.test"

    def deferred_for_recipient(entry: QueueEntry) -> bool:
        addresses = [rcpt["address"] for rcpt in entry["recipients"]]
        return entry["queue_name"] == "deferred" and recipient in addresses

    _send(postfix_lab.filter_smtp_port, recipient, "filtered")

    (entry,) = postfix_lab.wait_queue(deferred_for_recipient)
    (rcpt,) = entry["recipients"]
    refused = f"127.0.0.1[127.0.0.1]:{postfix_lab.filter_port}: Connection refused"
    assert rcpt["delay_reason"] == f"connect to {refused}"
    assert postfix_lab.delivered(recipient) == []


def test_two_labs_run_side_by_side(
    postfix_lab: PostfixLab, make_postfix_lab: LabFactory
) -> None:
    """A second lab runs beside the first; each delivers only its own mail."""
    second = make_postfix_lab(milter_smtp_port=OFF, filter_smtp_port=OFF)
    assert second.root != postfix_lab.root
    assert not set(second.listener_ports()) & set(postfix_lab.listener_ports())

    _send(postfix_lab.smtp_port, "first@example.test", "first")
    _send(second.smtp_port, "second@example.test", "second")

    second.wait_delivered(recipient="second@example.test")
    postfix_lab.wait_delivered(recipient="first@example.test")
    assert second.delivered("first@example.test") == []
    assert postfix_lab.delivered("second@example.test") == []
    second.purge()
    assert postfix_lab.running() and not second.running()
