"""Drift: PSI of live scores against the model's reference or a site baseline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from phishgate.daemon.drift import (
    psi,
    reading,
    reference_for,
    score_drift,
    take_baseline,
)
from phishgate.daemon.model import default_model_dir
from phishgate.daemon.verdictlog import DB_NAME, VerdictLog, make_row

META = json.loads((default_model_dir() / "meta.json").read_text())
REFERENCE = META["reference"]["score"]


def _scores_like(shares: list[float], n: int, rng: np.random.Generator) -> np.ndarray:
    """n scores falling into the reference bins with the given shares."""
    edges = REFERENCE["edges"]
    bins = rng.choice(len(shares), size=n, p=np.array(shares) / sum(shares))
    return np.array([rng.uniform(edges[b], edges[b + 1]) for b in bins])


def _log(state: Path, scores: np.ndarray) -> None:
    log = VerdictLog(state)
    log.start()
    for score in scores:
        log.record(make_row(action="accept", phish=float(score)))
    log.close()


def test_psi_values() -> None:
    """Identical shares give 0; a moved distribution gives a large PSI."""
    assert psi([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.0)
    assert psi([0.9, 0.1], [0.1, 0.9]) > 0.25
    assert reading(0.05) == "stable" and reading(None).startswith("not enough")


def test_reference_like_stream_is_stable(tmp_path: Path) -> None:
    """Scores drawn like the reference read as stable."""
    _log(tmp_path, _scores_like(REFERENCE["shares"], 2000, np.random.default_rng(1)))
    report = score_drift(tmp_path / DB_NAME, reference_for(tmp_path, META), 3600)
    assert report.psi is not None and report.psi < 0.1
    assert report.n == 2000


def test_shifted_stream_reads_as_a_shift(tmp_path: Path) -> None:
    """Only high scores (a stream unlike the reference) gives PSI above 0.25."""
    _log(tmp_path, np.random.default_rng(2).uniform(0.95, 1.0, 500))
    report = score_drift(tmp_path / DB_NAME, reference_for(tmp_path, META), 3600)
    assert report.psi is not None and report.psi > 0.25
    assert report.reading.startswith("shift")


def test_site_baseline_replaces_the_model_reference(tmp_path: Path) -> None:
    """After --baseline, the same stream is stable against itself."""
    _log(tmp_path, np.random.default_rng(3).uniform(0.0, 0.05, 500))
    assert take_baseline(tmp_path, META, 3600) == 500
    report = score_drift(tmp_path / DB_NAME, reference_for(tmp_path, META), 3600)
    assert report.psi is not None and report.psi < 0.1


def test_drift_command_json(tmp_path: Path) -> None:
    """`phishgate drift --json` prints the PSI and its reading."""
    _log(tmp_path, np.random.default_rng(4).uniform(0.95, 1.0, 300))
    config = tmp_path / "c.toml"
    config.write_text(f'[storage]\nstate_dir = "{tmp_path}"\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "phishgate.daemon.cli",
            "drift",
            "--json",
            "--window",
            "1h",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    assert row["feature"] == "score" and row["n"] == 300 and row["psi"] > 0.25
