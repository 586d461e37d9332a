"""Quarantine digests: one plain mail per recipient, nothing clickable."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailfactory import as_bytes, phish
from phishgate.daemon.cli import main
from phishgate.daemon.digest import defang, digest_message, group_by_recipient
from phishgate.daemon.quarantine import QuarantineStore
from smtpsink import Sink


@pytest.mark.parametrize(
    ("text", "unwanted"),
    [
        ("Log in at https://paypa1-secure.top/verify now", "https://"),
        ("http://198.51.100.7/x", "http://"),
        ("PayPal <service@paypa1-secure.top>", "@"),
        ("see www.example.com today", "example.com"),
        ("javascript:alert(1)", "javascript:"),
    ],
)
def test_defang_leaves_nothing_a_mail_client_links(text: str, unwanted: str) -> None:
    assert unwanted not in defang(text)


def test_entries_are_grouped_per_recipient_oldest_first() -> None:
    rows = [
        {"id": "b", "time": "2026-12-03T10:00:00Z", "recipients": ["Ann@x.org"]},
        {
            "id": "a",
            "time": "2026-12-03T09:00:00Z",
            "recipients": ["ann@x.org", "bob@x.org"],
        },
    ]
    groups = group_by_recipient(rows)
    assert [i.id for i in groups["ann@x.org"]] == ["a", "b"]
    assert [i.id for i in groups["bob@x.org"]] == ["a"]


def test_the_digest_is_plain_text_without_links() -> None:
    (items,) = group_by_recipient(
        [
            {
                "id": "20261203T100000-abc",
                "time": "2026-12-03T10:00:00Z",
                "recipients": ["ann@x.org"],
                "from_header": "PayPal <service@paypa1-secure.top>",
                "subject": "Verify at http://paypa1-secure.top/login",
                "phish": 0.991,
            }
        ]
    ).values()
    raw = digest_message("ann@x.org", items, "postmaster@x.org", 30)
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message.get_content_type() == "text/plain"
    assert message["Auto-Submitted"] == "auto-generated"
    body = message.get_content()
    assert "20261203T100000-abc" in body and "0.99" in body
    assert "http://" not in body and "paypa1-secure.top" not in body
    assert "paypa1-secure[.]top" in body


@pytest.fixture
def sink() -> Iterator[Sink]:
    sink = Sink().start()
    yield sink
    sink.stop()


def test_digest_command_mails_each_recipient_once(tmp_path: Path, sink: Sink) -> None:
    state = tmp_path / "state"
    store = QuarantineStore(state)
    for n, rcpts in enumerate((["ann@x.org"], ["ann@x.org", "bob@x.org"])):
        store.put(
            as_bytes(phish(msgid=f"<p{n}@kit.top>")),
            recipients=rcpts,
            sender="x@kit.top",
            phish=0.98,
        )
    config = tmp_path / "phishgate.toml"
    config.write_text(
        f'[storage]\nstate_dir = "{state}"\n[quarantine]\n'
        f'digest_from = "postmaster@x.org"\ndigest_via = "127.0.0.1:{sink.port}"\n'
        '[proxy]\nlisten = ""\n'
    )
    assert main(["quarantine", "digest", "--config", str(config)]) == 0
    sent = {tuple(m.rcpt_tos): m for m in sink.handler.messages}
    assert set(sent) == {("ann@x.org",), ("bob@x.org",)}
    assert sent[("ann@x.org",)].mail_from == "postmaster@x.org"
    assert b"2 message(s) held for you" in sent[("ann@x.org",)].data
    assert b"1 message(s) held for you" in sent[("bob@x.org",)].data


def test_digest_needs_a_sender(tmp_path: Path) -> None:
    config = tmp_path / "phishgate.toml"
    config.write_text(f'[storage]\nstate_dir = "{tmp_path}"\n')
    assert main(["quarantine", "digest", "--config", str(config)]) == 2
