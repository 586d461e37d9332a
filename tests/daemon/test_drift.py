"""Drift: PSI of live scores and features against the model or a site baseline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
from mailfactory import as_bytes, phish, plain
from phishgate.daemon.config import parse_config
from phishgate.daemon.drift import (
    BASELINE_FILE,
    DRIFT_FEATURE_NAMES,
    DriftReport,
    drift_reports,
    psi,
    reading,
    references_for,
    take_baseline,
)
from phishgate.daemon.metrics import Metrics
from phishgate.daemon.model import Model, default_model_dir
from phishgate.daemon.pipeline import MessageEnvelope, Pipeline
from phishgate.daemon.scanner import Scanner
from phishgate.daemon.verdictlog import DB_NAME, VerdictLog, make_row
from postfixlab import wait_for

META = json.loads((default_model_dir() / "meta.json").read_text())
REFERENCE = META["reference"]["score"]
HOUR = 3600.0


def _scores_like(shares: list[float], n: int, rng: np.random.Generator) -> np.ndarray:
    """n scores falling into the reference bins with the given shares."""
    edges = REFERENCE["edges"]
    bins = rng.choice(len(shares), size=n, p=np.array(shares) / sum(shares))
    return np.array([rng.uniform(edges[b], edges[b + 1]) for b in bins])


def _log(state: Path, scores: Iterable[float]) -> None:
    log = VerdictLog(state)
    log.start()
    for score in scores:
        log.record(make_row(action="accept", phish=float(score)))
    log.close()


def _by_feature(state: Path) -> dict[str, DriftReport]:
    refs = references_for(state, META)
    return {r.feature: r for r in drift_reports(state / DB_NAME, refs, HOUR)}


def test_psi_values() -> None:
    """Identical shares give 0; a moved distribution gives a large PSI."""
    assert psi([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.0)
    assert psi([0.9, 0.1], [0.1, 0.9]) > 0.25
    assert reading(0.05) == "stable" and reading(None).startswith("not enough")
    assert reading(0.2) == "moderate shift" and reading(0.3).startswith("shift")


def test_bundled_model_has_every_feature_reference() -> None:
    """The bundled meta.json holds shares for the whole fixed list, summing to 1."""
    features = META["reference"]["features"]
    assert set(DRIFT_FEATURE_NAMES) <= set(features)
    for name in DRIFT_FEATURE_NAMES:
        ref = features[name]
        assert len(ref["shares"]) == len(ref["edges"]) - 1
        assert sum(ref["shares"]) == pytest.approx(1.0, abs=1e-3)


def test_reference_like_stream_is_stable(tmp_path: Path) -> None:
    """Scores drawn like the reference read as stable."""
    _log(tmp_path, _scores_like(REFERENCE["shares"], 2000, np.random.default_rng(1)))
    report = _by_feature(tmp_path)["score"]
    assert report.psi is not None and report.psi < 0.1
    assert report.n == 2000 and report.reference == "model"


def test_shifted_stream_reads_as_a_shift(tmp_path: Path) -> None:
    """Only high scores (a stream unlike the reference) gives PSI above 0.25."""
    _log(tmp_path, np.random.default_rng(2).uniform(0.95, 1.0, 500))
    report = _by_feature(tmp_path)["score"]
    assert report.psi is not None and report.psi > 0.25
    assert report.reading.startswith("shift")


def test_rows_without_features_count_for_the_score_only(tmp_path: Path) -> None:
    """Rows from before the features column: the score has a PSI, features wait."""
    _log(tmp_path, np.random.default_rng(3).uniform(0.0, 0.05, 300))
    reports = _by_feature(tmp_path)
    assert reports["score"].psi is not None
    assert reports["url_count"].psi is None and reports["url_count"].n == 0
    assert reports["url_count"].reading.startswith("not enough")


def test_old_score_only_baseline_is_still_read(tmp_path: Path) -> None:
    """A baseline file in the first format (score only) still replaces the score."""
    (tmp_path / BASELINE_FILE).write_text(
        json.dumps({"edges": [0.0, 0.5, 1.0], "shares": [0.5, 0.5], "n": 200})
    )
    refs = references_for(tmp_path, META)
    assert refs["score"].source == "site baseline"
    assert refs["score"].edges == (0.0, 0.5, 1.0)
    assert refs["url_count"].source == "model"


# ------------------------------------------------- a shifted stream, end to end


def _ham(i: int) -> bytes:
    """Plain office mail: some with a link, some replies quoting the last mail."""
    body = f"Hi Ann,\n\nnotes for item {i} are below.\n\nBest,\nBob\n"
    if i % 3 == 0:
        body += f"\nDraft: https://wiki.example.org/page/{i}\n"
    if i % 4 == 0:
        body += "\nOn Monday Ann wrote:\n> can you send the notes?\n> thanks\n"
    return as_bytes(plain(body, subject=f"Notes {i}", msgid=f"<h{i}@example.org>"))


def _phish(i: int) -> bytes:
    return as_bytes(phish(msgid=f"<p{i}@mailer.bulk-sender.ru>"))


def _feed(pipeline: Pipeline, messages: Iterable[bytes]) -> None:
    async def run() -> None:
        for raw in messages:
            await pipeline.inspect(MessageEnvelope("milter", queue_id="Q1"), raw)

    asyncio.run(run())


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    config = parse_config(f'[storage]\nstate_dir = "{tmp_path}"\n', "test")
    log = VerdictLog(tmp_path)
    log.start()
    pipeline = Pipeline(config, Scanner(Model.load()), Metrics(), log)
    yield pipeline
    pipeline.close()
    log.close()


def _wait_rows(state: Path, count: int) -> None:
    """Wait until the writer thread has stored *count* rows."""

    def stored() -> bool:
        with contextlib.closing(sqlite3.connect(state / DB_NAME)) as conn:
            return bool(
                conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] >= count
            )

    wait_for(stored, 10, f"{count} verdict rows")


def test_feature_psi_moves_when_the_stream_shifts(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Ham only, then phish: features that tell them apart move past 0.25."""
    _feed(pipeline, (_ham(i) for i in range(150)))
    _wait_rows(tmp_path, 150)
    against_model = _by_feature(tmp_path)
    assert all(r.reference == "model" for r in against_model.values())
    assert against_model["html_present"].psi is not None
    assert against_model["html_present"].psi > 0.25  # the model saw much HTML

    assert take_baseline(tmp_path, META, HOUR) == 150
    before = _by_feature(tmp_path)
    assert all(r.reference == "site baseline" for r in before.values())
    assert all(r.psi is not None and r.psi < 0.1 for r in before.values())

    _feed(pipeline, (_phish(i) for i in range(150)))
    _wait_rows(tmp_path, 300)
    after = _by_feature(tmp_path)
    moved = {name for name, r in after.items() if r.psi is not None and r.psi > 0.25}
    assert moved >= {
        "score",
        "html_present",
        "html_forms",
        "reply_to_mismatch",
        "lex_credential",
    }
    assert after["att_count"].psi == pytest.approx(0.0, abs=1e-9)  # neither has any
    assert all(r.n == 300 for r in after.values())


# ------------------------------------------------------------------- the CLI


def _drift_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "c.toml"
    config.write_text(f'[storage]\nstate_dir = "{tmp_path}"\n')
    command = [sys.executable, "-m", "phishgate.daemon.cli", "drift"]
    return subprocess.run(
        [*command, "--config", str(config), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_drift_command_json(tmp_path: Path) -> None:
    """`phishgate drift --json`: every value's PSI and reading, and live quality."""
    _log(tmp_path, np.random.default_rng(4).uniform(0.95, 1.0, 300))
    proc = _drift_cli(tmp_path, "--json", "--window", "1h")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    rows = {row["feature"]: row for row in out["drift"]}
    assert list(rows) == ["score", *DRIFT_FEATURE_NAMES]
    assert rows["score"]["n"] == 300 and rows["score"]["psi"] > 0.25
    assert rows["url_count"]["psi"] is None and rows["url_count"]["description"]
    assert out["live_model"]["labelled"] == 0
    assert out["live_model"]["precision"] is None


def test_drift_command_text(tmp_path: Path) -> None:
    """The plain output gives one line per value and says labels are missing."""
    _log(tmp_path, np.random.default_rng(5).uniform(0.95, 1.0, 300))
    proc = _drift_cli(tmp_path, "--window", "1h")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    score = next(line for line in lines if line.strip().startswith("score "))
    assert "shift" in score and "300 messages" in score
    assert any(line.strip().startswith("html_forms ") for line in lines)
    assert lines[-1].startswith("Not enough labels")


def test_drift_baseline_needs_enough_mail(tmp_path: Path) -> None:
    """--baseline with too little mail stores nothing and exits 1."""
    _log(tmp_path, [0.1] * 10)
    proc = _drift_cli(tmp_path, "--baseline", "--window", "1h")
    assert proc.returncode == 1 and "only 10" in proc.stderr
    assert not (tmp_path / BASELINE_FILE).exists()
