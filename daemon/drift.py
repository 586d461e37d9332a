"""Drift: is live mail still like the mail the model was checked on?

The Population Stability Index compares the live distribution of the phish
score, over a sliding window of the verdict log, with the reference shares
stored in the model's ``meta.json`` (``reference.score``: bin edges and the
share of the evaluation mail in each bin)::

    PSI = sum over bins of (live - reference) * ln(live / reference)

Readings, as commonly used: below 0.1 stable, 0.1 to 0.25 a moderate
shift, above 0.25 a shift worth retraining or looking into.

The model's reference comes from its evaluation mail, whose mix of ham,
spam and phish is not any site's. ``phishgate drift --baseline`` stores the
site's own recent distribution (``STATE/drift-baseline.json``); when that
file exists it is the reference instead.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DriftReport", "psi", "reading", "score_drift"]

# Empty bins would make the logarithm infinite; a tiny share stands in.
EPSILON = 1e-4
MIN_MESSAGES = 100


@dataclass(frozen=True)
class DriftReport:
    feature: str
    psi: float | None
    n: int
    window_s: float
    reading: str

    def as_json(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "psi": None if self.psi is None else round(self.psi, 4),
            "n": self.n,
            "window_s": self.window_s,
            "reading": self.reading,
        }


def psi(reference: list[float], live: list[float]) -> float:
    """The PSI of two lists of bin shares (each summing to about 1)."""
    total = 0.0
    for expected, actual in zip(reference, live, strict=True):
        e, a = max(expected, EPSILON), max(actual, EPSILON)
        total += (a - e) * math.log(a / e)
    return total


def reading(value: float | None) -> str:
    if value is None:
        return f"not enough mail (fewer than {MIN_MESSAGES} scanned in the window)"
    if value < 0.1:
        return "stable"
    if value <= 0.25:
        return "moderate shift"
    return "shift: live mail differs from what the model was checked on"


def _live_scores(db_path: Path, since: float) -> np.ndarray:
    if not db_path.exists():
        return np.zeros(0)
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10.0)
    try:
        rows = conn.execute(
            "SELECT phish FROM verdicts WHERE time >= ? AND phish IS NOT NULL", (since,)
        ).fetchall()
    except sqlite3.OperationalError:  # no verdicts table yet
        rows = []
    finally:
        conn.close()
    return np.array([r[0] for r in rows], dtype=np.float64)


BASELINE_FILE = "drift-baseline.json"


def model_meta(model_dir: Path) -> dict[str, Any]:
    """The model's meta.json, read alone (loading the model is not needed)."""
    try:
        data = json.loads((model_dir / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def reference_for(state_dir: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The site's baseline if one was taken, else the model's reference."""
    baseline = state_dir / BASELINE_FILE
    if baseline.exists():
        try:
            data = json.loads(baseline.read_text())
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and "edges" in data and "shares" in data:
            return data
    ref = meta.get("reference", {}).get("score")
    return ref if isinstance(ref, dict) else None


def take_baseline(state_dir: Path, meta: dict[str, Any], window_s: float) -> int:
    """Store the current window's score shares as the reference; returns n."""
    ref = meta.get("reference", {}).get("score") or {}
    edges = ref.get("edges") or [
        0.0,
        0.01,
        0.05,
        0.1,
        0.2,
        0.3,
        0.5,
        0.7,
        0.9,
        0.99,
        1.0,
    ]
    scores = _live_scores(state_dir / "phishgate.db", time.time() - window_s)
    if len(scores) < MIN_MESSAGES:
        return len(scores)
    counts, _ = np.histogram(scores, bins=edges)
    shares = [round(float(c) / len(scores), 5) for c in counts]
    tmp = state_dir / f".{BASELINE_FILE}.tmp"
    tmp.write_text(json.dumps({"edges": edges, "shares": shares, "n": len(scores)}))
    tmp.replace(state_dir / BASELINE_FILE)
    return len(scores)


def score_drift(
    db_path: Path, reference: dict[str, Any] | None, window_s: float
) -> DriftReport:
    """PSI of the phish score over the last *window_s* seconds of the log."""
    scores = _live_scores(db_path, time.time() - window_s)
    if not reference or len(scores) < MIN_MESSAGES:
        return DriftReport("score", None, len(scores), window_s, reading(None))
    counts, _ = np.histogram(scores, bins=reference["edges"])
    live = [float(c) / len(scores) for c in counts]
    value = psi(reference["shares"], live)
    return DriftReport("score", value, len(scores), window_s, reading(value))
