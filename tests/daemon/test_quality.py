"""Live precision and recall from labels joined to the verdict log."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from phishgate.daemon.labels import record_label
from phishgate.daemon.quality import MIN_LABELS, live_quality
from phishgate.daemon.verdictlog import DB_NAME, VerdictLog, make_row

NOW = time.time()
WINDOW = 30 * 86400.0


def _verdicts(state: Path, rows: list[tuple[str, str, float, str]]) -> None:
    """(message_id, action, age in seconds, status) rows into a real log."""
    log = VerdictLog(state)
    log.start()
    for message_id, action, age, status in rows:
        log.record(
            make_row(
                message_id=message_id,
                action=action,
                phish=0.5,
                status=status,
                time=NOW - age,
            )
        )
    log.close()


def _label(state: Path, message_id: str, label: str, source: str = "admin") -> None:
    raw = f"Message-ID: {message_id}\n\n{label} {source}\n".encode()
    record_label(state, raw, label, source, message_id=message_id)


def _crafted(state: Path) -> None:
    """11 flagged phish, 5 flagged not phish, 2 missed phish, 8 accepted ham."""
    rows = []
    for i in range(10):
        rows.append((f"<tp{i}@x>", "quarantine", 60.0, "scanned"))
        _label(state, f"<tp{i}@x>", "phish", "user-report")
    for i in range(2):
        rows.append((f"<fn{i}@x>", "accept", 60.0, "scanned"))
        _label(state, f"<fn{i}@x>", "phish", "user-report")
    for i in range(3):
        rows.append((f"<fp{i}@x>", "quarantine", 60.0, "scanned"))
        _label(state, f"<fp{i}@x>", "ham", "admin-release")
    rows.append(("<spam@x>", "tag", 60.0, "scanned"))
    _label(state, "<spam@x>", "spam")
    for i in range(8):
        rows.append((f"<tn{i}@x>", "accept", 60.0, "scanned"))
        _label(state, f"<tn{i}@x>", "ham")
    # a user says phish, the admin says ham: the admin wins, a false positive
    rows.append(("<disputed@x>", "reject", 60.0, "scanned"))
    _label(state, "<disputed@x>", "ham", "admin")
    _label(state, "<disputed@x>", "phish", "user-report")
    # scanned twice (accepted, then rejected on a second delivery): the newest counts
    rows.append(("<twice@x>", "accept", 120.0, "scanned"))
    rows.append(("<twice@x>", "reject", 60.0, "scanned"))
    _label(state, "<twice@x>", "phish")
    # left out: too old, not scanned, no label
    rows.append(("<old@x>", "quarantine", 40 * 86400.0, "scanned"))
    _label(state, "<old@x>", "phish")
    rows.append(("<big@x>", "accept", 60.0, "skipped-size"))
    _label(state, "<big@x>", "phish")
    rows.append(("<nolabel@x>", "quarantine", 60.0, "scanned"))
    _verdicts(state, rows)


def test_precision_and_recall_from_labels(tmp_path: Path) -> None:
    """Counts follow the winning label and the newest verdict, in the window only."""
    _crafted(tmp_path)
    quality = live_quality(tmp_path / DB_NAME, WINDOW, now=NOW)

    assert quality.labelled == 26
    assert (quality.flagged_phish, quality.flagged_other) == (11, 5)
    assert quality.missed_phish == 2
    assert quality.precision == pytest.approx(11 / 16)
    assert quality.recall == pytest.approx(11 / 13)
    assert "precision 0.688" in quality.sentence()


def test_too_few_labels_give_no_figures(tmp_path: Path) -> None:
    """Below MIN_LABELS labelled messages the figures are None, and it says so."""
    rows = [(f"<m{i}@x>", "quarantine", 60.0, "scanned") for i in range(5)]
    for message_id, *_ in rows:
        _label(tmp_path, message_id, "phish")
    _verdicts(tmp_path, rows)
    quality = live_quality(tmp_path / DB_NAME, WINDOW, now=NOW)

    assert quality.labelled == 5 < MIN_LABELS
    assert quality.precision is None and quality.recall is None
    assert quality.sentence().startswith("Not enough labels")
    assert quality.as_json()["precision"] is None


def test_no_database_no_labels(tmp_path: Path) -> None:
    """A fresh install (no database, or verdicts without labels) counts nothing."""
    assert live_quality(tmp_path / DB_NAME, WINDOW).labelled == 0
    _verdicts(tmp_path, [("<a@x>", "accept", 1.0, "scanned")])
    assert live_quality(tmp_path / DB_NAME, WINDOW).labelled == 0
