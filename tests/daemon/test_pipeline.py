"""The pipeline, header edits and policy, without Postfix.

The pipeline runs with a real Scanner and the bundled model; only the
timeout and error paths replace ``Scanner.scan``, to block or to raise.
Policy tests build verdicts by hand, so no test depends on model scores.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailfactory import as_bytes, phish, plain
from phishgate.daemon.config import Config, parse_config
from phishgate.daemon.metrics import Metrics
from phishgate.daemon.milterfront import remove_our_headers
from phishgate.daemon.model import Model, Thresholds, Verdict
from phishgate.daemon.pipeline import (
    HEADER_PREFIX,
    Decision,
    MessageEnvelope,
    Pipeline,
    fold,
)
from phishgate.daemon.policy import Policy
from phishgate.daemon.scanner import Scanner, ScanResult
from phishgate.daemon.verdictlog import VerdictLog, read_verdicts
from phishgate.milter import ChangeHeader

ENVELOPE = MessageEnvelope(
    front_door="milter",
    queue_id="4Z1abc2DEF",
    mail_from="bob@example.org",
    rcpt_to=("ann@example.org",),
)
HEADER_NAMES = [
    HEADER_PREFIX + name for name in ("Verdict", "Score", "Reasons", "Model", "Status")
]
MODEL_THRESHOLDS = Thresholds(tag=0.5, quarantine=0.8, reject=0.95)
RELEASE_TIMEOUT = 10.0
"""Seconds a blocked fake scan waits before giving up on its own."""


def config(text: str = "") -> Config:
    """A validated config from TOML text."""
    return parse_config(text, "test")


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    """The bundled model behind a real Scanner, loaded once."""
    return Scanner(Model.load(None))


def inspect(pipeline: Pipeline, raw: bytes) -> Decision:
    """Run one ``inspect`` on a fresh event loop."""
    return asyncio.run(pipeline.inspect(ENVELOPE, raw))


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    """One sample's value from the pipeline's registry (0 when absent)."""
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
def blocked_scan(
    scanner: Scanner, monkeypatch: pytest.MonkeyPatch
) -> Iterator[threading.Event]:
    """``scanner.scan`` blocks until the returned event is set (at teardown)."""
    release = threading.Event()

    def scan(raw: bytes, envelope_from: str = "") -> ScanResult:
        release.wait(RELEASE_TIMEOUT)
        raise RuntimeError("released")

    monkeypatch.setattr(scanner, "scan", scan)
    yield release
    release.set()


# ---------------------------------------------------------------- pipeline


def test_scanned_message_gets_five_headers(scanner: Scanner) -> None:
    """A scanned message carries Verdict, Score, Reasons, Model and Status."""
    pipeline = Pipeline(config(), scanner, Metrics(), None)
    decision = inspect(pipeline, as_bytes(plain()))

    assert decision.status == "scanned" and decision.verdict is not None
    assert [name for name, _ in decision.headers] == HEADER_NAMES
    values = dict(decision.headers)
    assert values[HEADER_PREFIX + "Score"] == f"{decision.verdict.phish:.4f}"
    assert values[HEADER_PREFIX + "Model"] == scanner.model.version
    assert values[HEADER_PREFIX + "Verdict"].endswith(f" action={decision.action}")


def test_timeout_fails_open(scanner: Scanner, blocked_scan: threading.Event) -> None:
    """A scan over scan_timeout_s with on_error=accept: accept + Status: timeout."""
    metrics = Metrics()
    pipeline = Pipeline(
        config("[policy]\nscan_timeout_s = 0.05"), scanner, metrics, None
    )
    decision = inspect(pipeline, as_bytes(plain()))

    assert (decision.action, decision.status) == ("accept", "timeout")
    assert decision.headers == ((HEADER_PREFIX + "Status", "timeout"),)
    assert metric(metrics, "phishgate_errors_total", reason="timeout") == 1
    assert metric(metrics, "phishgate_fail_open_total") == 1
    assert metric(metrics, "phishgate_in_flight_messages") == 0


def test_timeout_tempfails(scanner: Scanner, blocked_scan: threading.Event) -> None:
    """A scan over scan_timeout_s with on_error=tempfail: tempfail, no headers."""
    metrics = Metrics()
    text = '[policy]\nscan_timeout_s = 0.05\non_error = "tempfail"'
    decision = inspect(Pipeline(config(text), scanner, metrics, None), b"x")

    assert (decision.action, decision.status, decision.headers) == (
        "tempfail",
        "timeout",
        (),
    )
    assert metric(metrics, "phishgate_fail_open_total") == 0
    labels = {"front_door": "milter", "action": "tempfail"}
    assert metric(metrics, "phishgate_messages_total", **labels) == 1


def test_scan_error_fails_open_with_queue_id(
    scanner: Scanner,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A scan that raises: accept + Status: error; traceback logged with queue id."""

    def scan(raw: bytes, envelope_from: str = "") -> ScanResult:
        raise ValueError("broken parser")

    monkeypatch.setattr(scanner, "scan", scan)
    with caplog.at_level(logging.ERROR, logger="phishgate.daemon.pipeline"):
        decision = inspect(Pipeline(config(), scanner, Metrics(), None), b"x")

    assert (decision.action, decision.status) == ("accept", "error")
    assert decision.headers == ((HEADER_PREFIX + "Status", "error"),)
    (record,) = caplog.records
    assert "queue_id=4Z1abc2DEF" in record.getMessage() and record.exc_info


def test_oversized_message_skipped(scanner: Scanner) -> None:
    """A message over max_scan_bytes is accepted unscanned with Status: skipped-size."""
    metrics = Metrics()
    pipeline = Pipeline(
        config("[policy]\nmax_scan_bytes = 100"), scanner, metrics, None
    )
    decision = inspect(pipeline, as_bytes(plain()))

    assert (decision.action, decision.status, decision.verdict) == (
        "accept",
        "skipped-size",
        None,
    )
    assert decision.headers == ((HEADER_PREFIX + "Status", "skipped-size"),)
    assert metric(metrics, "phishgate_errors_total", reason="size") == 1
    assert metric(metrics, "phishgate_scan_duration_seconds_count", stage="total") == 0


def test_reject_reply_names_first_reason(scanner: Scanner) -> None:
    """A reject carries the verdict's first reason in its SMTP reply text."""
    text = "[policy]\ntag_at = 1e-9\nquarantine_at = 1e-9\nreject_at = 1e-9"
    decision = inspect(
        Pipeline(config(text), scanner, Metrics(), None), as_bytes(phish())
    )

    assert decision.action == "reject" and decision.verdict is not None
    assert decision.verdict.reasons[0] in decision.reply_text


def test_tag_sets_subject_tag(scanner: Scanner) -> None:
    """A tag decision carries the configured subject tag; others carry none."""
    text = "[policy]\ntag_at = 1e-9\nquarantine_at = 1.0\nreject_at = 1.0\n"
    text += 'subject_tag = "[X] "'
    tagged = inspect(
        Pipeline(config(text), scanner, Metrics(), None), as_bytes(phish())
    )
    plain_config = config("[policy]\ntag_at = 1.0")
    accepted = inspect(
        Pipeline(plain_config, scanner, Metrics(), None), as_bytes(plain())
    )

    assert (tagged.action, tagged.subject_tag) == ("tag", "[X] ")
    assert (accepted.action, accepted.subject_tag) == ("accept", "")


def test_decision_carries_per_recipient_actions(scanner: Scanner) -> None:
    """The decision keeps each recipient's action for front doors that split."""
    text = (
        '[[policy.domains]]\ndomain = "held.test"\n'
        "tag_at = 1e-9\nquarantine_at = 1e-9\nreject_at = 1.0\n"
        '[[policy.domains]]\ndomain = "open.test"\nscan = false\n'
    )
    pipeline = Pipeline(config(text), scanner, Metrics(), None)
    two = MessageEnvelope("proxy", rcpt_to=("a@held.test", "b@open.test"))
    decision = asyncio.run(pipeline.inspect(two, as_bytes(phish())))

    assert decision.action == "quarantine"
    assert decision.per_recipient == (
        ("a@held.test", "quarantine"),
        ("b@open.test", "accept"),
    )


def test_every_decision_logged(scanner: Scanner, tmp_path: Path) -> None:
    """Scanned and skipped messages both leave one verdict row."""
    verdict_log = VerdictLog(tmp_path)
    verdict_log.start()
    text = "[policy]\nmax_scan_bytes = 2000"
    pipeline = Pipeline(config(text), scanner, Metrics(), verdict_log)
    inspect(pipeline, as_bytes(plain()))
    inspect(pipeline, as_bytes(plain("x" * 3000 + "\n")))
    verdict_log.close()

    rows = list(read_verdicts(tmp_path / "phishgate.db"))
    assert sorted(row["status"] for row in rows) == ["scanned", "skipped-size"]
    assert {row["queue_id"] for row in rows} == {"4Z1abc2DEF"}
    skipped = next(row for row in rows if row["status"] == "skipped-size")
    assert skipped["phish"] is None and skipped["reasons"] == []


# ---------------------------------------------------------------- header edits


def test_remove_our_headers_indexes() -> None:
    """Each X-Phishgate-* header is deleted by its per-name index, last first."""
    headers = [
        ("X-Phishgate-Verdict", "clean"),
        ("Subject", "hello"),
        ("x-phishgate-verdict", "clean too"),
        ("X-Phishgate-Score", "0.0"),
        ("X-Phishgate", "not ours: no dash"),
        ("X-PhishgateScore", "not ours either"),
    ]
    assert remove_our_headers(headers) == [
        ChangeHeader(1, "X-Phishgate-Score", ""),
        ChangeHeader(2, "x-phishgate-verdict", ""),
        ChangeHeader(1, "X-Phishgate-Verdict", ""),
    ]


def test_remove_our_headers_none() -> None:
    """A message without our headers needs no deletions."""
    assert remove_our_headers([("Subject", "x"), ("From", "a@b.test")]) == []


def test_fold_short_value_unchanged() -> None:
    """A value that fits stays on one line."""
    assert fold("a; b; c") == "a; b; c"


def test_fold_long_value_at_separators() -> None:
    """A long value folds after '; ' with a tab, and unfolds to the original."""
    reasons = "; ".join(f"reason number {i} with some words" for i in range(6))
    folded = fold(reasons, width=60)

    lines = folded.split("\n\t")
    assert len(lines) > 1
    assert all(len(line) <= 60 for line in lines)
    assert all(line.endswith(";") for line in lines[:-1])
    assert folded.replace(";\n\t", "; ") == reasons


def test_fold_strips_control_characters() -> None:
    """CR, LF and other control characters cannot inject a header."""
    folded = fold("evil\r\nBcc: victim@example.org\x00")
    assert folded == "evil  Bcc: victim@example.org "


# ---------------------------------------------------------------- policy


def result(phish: float, from_header: str = "Bob <bob@example.org>") -> ScanResult:
    """A hand-made scan result with one phish probability."""
    rest = (1.0 - phish) / 2
    verdict = Verdict(rest, rest, phish, "test-model", ())
    return ScanResult(
        verdict=verdict,
        action=MODEL_THRESHOLDS.action(phish),
        message_id="<m@example.org>",
        subject="s",
        from_header=from_header,
        limits_hit=frozenset(),
        thresholds=MODEL_THRESHOLDS,
        parse_s=0.0,
        features_s=0.0,
        model_s=0.0,
    )


def envelope(*rcpt: str, sender: str = "bob@example.org") -> MessageEnvelope:
    """An envelope with these recipients."""
    return MessageEnvelope("milter", mail_from=sender, rcpt_to=rcpt)


DOMAIN_POLICY = config(
    """
[policy]
tag_at = 0.6
[[policy.domains]]
domain = "strict.test"
tag_at = 0.1
quarantine_at = 0.2
reject_at = 0.3
[[policy.domains]]
domain = "lenient.test"
scan = false
"""
)


def test_policy_model_thresholds_by_default() -> None:
    """Unset [policy] thresholds come from the model; set ones win."""
    policy = Policy(DOMAIN_POLICY)
    decide = policy.decide
    assert decide(envelope("a@other.test"), result(0.55)).action == "accept"
    assert decide(envelope("a@other.test"), result(0.65)).action == "tag"
    assert decide(envelope("a@other.test"), result(0.85)).action == "quarantine"
    assert decide(envelope("a@other.test"), result(0.96)).action == "reject"


def test_policy_domain_thresholds_cover_subdomains() -> None:
    """[[policy.domains]] applies to the domain and its subdomains, nothing else."""
    decide = Policy(DOMAIN_POLICY).decide
    assert decide(envelope("a@strict.test"), result(0.25)).action == "quarantine"
    assert decide(envelope("a@mx.strict.test"), result(0.35)).action == "reject"
    assert decide(envelope("a@notstrict.test"), result(0.35)).action == "accept"


def test_policy_domain_without_scan_accepts() -> None:
    """scan = false accepts even a certain phish for that domain."""
    decide = Policy(DOMAIN_POLICY).decide
    assert decide(envelope("a@lenient.test"), result(0.99)).action == "accept"


def test_policy_most_protective_over_recipients() -> None:
    """The milter cannot split a message: the strictest recipient's action wins."""
    outcome = Policy(DOMAIN_POLICY).decide(
        envelope("a@lenient.test", "b@strict.test", "c@other.test"), result(0.25)
    )
    assert outcome.action == "quarantine"
    assert outcome.per_recipient == (
        ("a@lenient.test", "accept"),
        ("b@strict.test", "quarantine"),
        ("c@other.test", "accept"),
    )


LISTS = config(
    """
[lists]
allow_senders = ["boss@example.org"]
allow_domains = [".partner.test"]
block_senders = ["Mallory@Evil.test"]
block_domains = ["spam.test", ".bad.test"]
"""
)


@pytest.mark.parametrize(
    ("sender", "from_header", "action"),
    [
        ("mallory@evil.test", "x@example.org", "reject"),
        ("bob@example.org", "Mallory <MALLORY@evil.test>", "reject"),
        ("a@spam.test", "a@example.org", "reject"),
        ("a@mx.spam.test", "a@example.org", "tag"),
        ("a@mx.bad.test", "a@example.org", "reject"),
        ("a@bad.test", "a@example.org", "tag"),
        ("boss@example.org", "boss@example.org", "accept"),
        ("a@mx.partner.test", "a@example.org", "accept"),
        ("a@partner.test", "a@example.org", "tag"),
        ("boss@example.org", "x@mx.bad.test", "reject"),
    ],
)
def test_policy_lists(sender: str, from_header: str, action: str) -> None:
    """Block beats allow; plain entries are exact, dotted ones match subdomains."""
    outcome = Policy(LISTS).decide(
        envelope("a@example.org", sender=sender), result(0.6, from_header)
    )
    assert outcome.action == action


class GatedEngine:
    """A real scanner behind a gate the test opens; records its close."""

    def __init__(self, scanner: Scanner, version: str) -> None:
        self.scanner = scanner
        self.model_version = version
        self.queued = 0
        self.gate = asyncio.Event()
        self.closed = False

    async def scan(self, raw: bytes, mail_from: str) -> ScanResult:
        if self.closed:
            raise RuntimeError("scan on a closed engine")
        await self.gate.wait()
        return self.scanner.scan(raw, mail_from)

    def close(self) -> None:
        self.closed = True


def test_a_replaced_engine_closes_after_its_last_scan(scanner: Scanner) -> None:
    """A model swap never closes the engine under a scan that is using it."""
    old, new = GatedEngine(scanner, "old"), GatedEngine(scanner, "new")
    new.gate.set()
    pipeline = Pipeline(config(), old, Metrics(), None)

    async def swap_during_scan() -> Decision:
        scan = asyncio.ensure_future(pipeline.inspect(ENVELOPE, as_bytes(plain())))
        await asyncio.sleep(0)  # the scan is waiting inside the old engine
        pipeline.reconfigure(config(), new)
        assert not old.closed
        old.gate.set()
        return await scan

    decision = asyncio.run(swap_during_scan())
    assert decision.status == "scanned"
    assert old.closed and not new.closed
    assert inspect(pipeline, as_bytes(plain())).status == "scanned"
