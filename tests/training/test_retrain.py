"""``phishgate retrain``: labels in, a gated model out, the pointer switched.

Labels are crafted messages (generated from word pools with a fixed seed)
recorded the way ``phishgate report`` records them. Rounds are kept small
through ``[retrain] rounds`` so each run takes a few seconds.
"""

from __future__ import annotations

import fcntl
import json
import logging
import random
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mailfactory import crafted_ham, crafted_phish
from phishgate.daemon import models_dir
from phishgate.daemon.cli import main
from phishgate.daemon.labels import LabelInfo, record_label
from phishgate.daemon.model import Model
from phishgate.daemon.models_dir import BUNDLED
from phishgate.training import retrain as retrain_module
from phishgate.training.retrain import LabelRow, judge, resolve_labels, retrain_lock


def _label(state: Path, n: int, *, flip: bool = False, seed: int = 7) -> None:
    """Record *n* ham and *n* phish admin labels (swapped when *flip*)."""
    rng = random.Random(seed)
    for i in range(n):
        for make, label in ((crafted_ham, "ham"), (crafted_phish, "phish")):
            if flip:
                label = "phish" if label == "ham" else "ham"
            record_label(state, make(rng, i), label, "admin", f"<{seed}.{i}.{label}>")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def _write_config(path: Path, state: Path, rounds: int) -> str:
    path.write_text(
        f'[storage]\nstate_dir = "{state}"\n\n'
        f"[retrain]\nrounds = {rounds}\nmin_new_labels = 50\n"
    )
    return str(path)


@pytest.fixture
def config(tmp_path: Path, state: Path) -> str:
    return _write_config(tmp_path / "phishgate.toml", state, rounds=15)


def _list(config: str, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    capsys.readouterr()
    assert main(["model", "list", "--json", "--config", config]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _decisions(state: Path) -> list[str]:
    conn = sqlite3.connect(state / "phishgate.db")
    try:
        return [r[0] for r in conn.execute("SELECT decision FROM models ORDER BY id")]
    finally:
        conn.close()


def test_too_few_labels_publish_nothing(state: Path, config: str) -> None:
    """Ten new labels where fifty are needed: exit 4, still the bundled model."""
    _label(state, 5)
    assert main(["retrain", "--config", config]) == 4
    assert models_dir.active_version(state) == BUNDLED
    assert not any(p.is_dir() for p in (state / "models").glob("*"))


def test_enough_labels_publish_a_new_active_version(
    state: Path,
    config: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A good candidate is published, activated, listed with its gate figures."""
    _label(state, 40)
    with caplog.at_level(logging.INFO, logger="phishgate"):
        assert main(["retrain", "--config", config]) == 0

    version = models_dir.active_version(state)
    assert version != BUNDLED
    model = Model.load(models_dir.active_path(state))
    assert model.version == version
    assert model.meta["parent"] == BUNDLED
    assert model.meta["thresholds"] == Model.load().meta["thresholds"]
    bundled_features = Model.load().meta["reference"]["features"]
    assert model.meta["reference"]["features"] == bundled_features  # inherited
    assert any(f"published {version}" in r.getMessage() for r in caplog.records)
    assert _decisions(state) == ["published"]

    listed = {row["version"]: row for row in _list(config, capsys)}
    gate = listed[version]["gate"]
    assert listed[version]["active"] is True
    assert isinstance(gate, dict)
    assert gate["decision"] == "published"
    assert gate["canary"]["n_phish"] >= 8
    assert gate["holdback"]["candidate"]["phish_recall"] is not None

    assert main(["retrain", "--config", config]) == 4  # nothing new: idempotent


def test_flipped_labels_are_refused_and_rollback_works(
    state: Path, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Poisoned labels: the canary refuses the candidate (exit 3); rollback works."""
    _label(state, 40)
    assert main(["retrain", "--config", config]) == 0
    published = models_dir.active_version(state)

    # Later admin labels win: every label swapped. The poisoned labels poison
    # the hold-back too, so only the canary set can catch this candidate;
    # more rounds make sure it learnt enough of them to be measurably worse.
    _label(state, 40, flip=True)
    _write_config(Path(config), state, rounds=80)
    assert main(["retrain", "--config", config]) == 3

    assert models_dir.active_version(state) == published
    assert _decisions(state) == ["published", "refused"]
    refused = [r for r in _list(config, capsys) if r["decision"] == "refused"]
    assert len(refused) == 1 and refused[0]["active"] is False
    gate = refused[0]["gate"]
    assert isinstance(gate, dict)
    assert any(reason.startswith("canary:") for reason in gate["reasons"])

    assert main(["model", "rollback", "--config", config]) == 0
    assert models_dir.active_version(state) == BUNDLED


def test_report_records_admin_labels(state: Path, config: str, tmp_path: Path) -> None:
    """``phishgate report`` stores the file and its Message-ID as an admin label."""
    eml = tmp_path / "phish.eml"
    eml.write_bytes(crafted_phish(random.Random(1), 0))
    assert main(["report", "--label", "phish", "--config", config, str(eml)]) == 0
    conn = sqlite3.connect(state / "phishgate.db")
    rows = conn.execute("SELECT label, source, message_id FROM labels").fetchall()
    conn.close()
    assert rows == [("phish", "admin", rows[0][2])]
    assert rows[0][2].startswith("<p0.")


def _row(id: int, label: str, source: str, msgid: str = "<a@x>") -> LabelRow:
    return LabelRow(id, float(id), msgid, label, source, f"/l/{id}", f"sha{id}")


def test_admin_labels_win_over_user_reports() -> None:
    """Per message: an admin label beats a later user report; later beats earlier."""
    rows = [
        _row(1, "ham", "admin-release"),
        _row(2, "phish", "user-report"),
        _row(3, "spam", "user-report", "<b@x>"),
        _row(4, "phish", "user-report", "<b@x>"),
    ]
    assert [(r.message_id, r.label) for r in resolve_labels(rows)] == [
        ("<a@x>", "ham"),
        ("<b@x>", "phish"),
    ]


def test_gate_tolerates_small_losses_only() -> None:
    """Within tolerance passes; a larger drop in recall or rise in FPR refuses."""

    def figures(recall: float, fpr: float) -> dict[str, dict[str, Any]]:
        return {
            "holdback": {
                "current": {"phish_recall": 0.9, "ham_fpr": 0.01},
                "candidate": {"phish_recall": recall, "ham_fpr": fpr},
            }
        }

    assert judge(figures(0.89, 0.02), 0.01) == []
    assert len(judge(figures(0.85, 0.01), 0.01)) == 1
    assert len(judge(figures(0.95, 0.05), 0.01)) == 1


def test_retrain_lock_excludes_a_second_run(state: Path) -> None:
    """While one retrain holds the lock, another cannot take it."""
    with (
        retrain_lock(state),
        (state / "retrain.lock").open("a") as other,
        pytest.raises(BlockingIOError),
    ):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_inline_forward_labels_weigh_half(
    state: Path, config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Labels rebuilt from inline forwards train with half the weight."""
    rng = random.Random(3)
    inline = LabelInfo(reporter="ann@example.org", confidence="inline")
    for i in range(10):
        record_label(
            state,
            crafted_phish(rng, 500 + i),
            "phish",
            "user-report",
            f"<i{i}>",
            inline,
        )
    _label(state, 30)  # newer: the hold-back takes from these
    seen: list[np.ndarray] = []

    real = retrain_module.continue_training

    def spy(parent: Any, X: Any, y: Any, rounds: int, trust: Any = None) -> Any:
        seen.append(np.asarray(trust))
        return real(parent, X, y, rounds, trust)

    monkeypatch.setattr(retrain_module, "continue_training", spy)
    status = main(["retrain", "--config", config])
    assert status in (0, 3), status
    (trust,) = seen
    halves = int(np.sum(trust == 0.5))
    assert halves == 10
    assert set(np.unique(trust)) == {0.5, 1.0}
