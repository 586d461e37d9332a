"""Drift: is live mail still like the mail the model was trained and checked on?

The Population Stability Index compares the live distribution of a value,
over a sliding window of the verdict log, with reference shares stored in
the model's ``meta.json`` (bin edges and the share of the reference mail in
each bin)::

    PSI = sum over bins of (live - reference) * ln(live / reference)

Readings, as commonly used: below 0.1 stable, 0.1 to 0.25 a moderate
shift, above 0.25 a shift worth retraining or looking into.

Two kinds of value are watched: the phish score (``reference.score``, from
the model's evaluation mail) and a fixed list of input features that both
matter to the model and mean something to an admin (``reference.features``,
from the model's training rows). The scanner records those features in each
verdict row (column ``features``), so no message is parsed twice.

The model's references come from corpora whose mix of ham, spam and phish
is not any site's. ``phishgate drift --baseline`` stores the site's own
recent distributions (``STATE/drift-baseline.json``); while that file
exists, it is the reference for what it holds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import math
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .verdictlog import DB_NAME

__all__ = [
    "DRIFT_FEATURES",
    "DriftReport",
    "Reference",
    "bin_shares",
    "drift_reports",
    "feature_references",
    "model_meta",
    "model_references",
    "psi",
    "reading",
    "references_for",
    "take_baseline",
]

# Empty bins would make the logarithm infinite; a tiny share stands in.
EPSILON = 1e-4
MIN_MESSAGES = 100
STABLE, MODERATE = 0.1, 0.25
SCORE = "score"
SCORE_EDGES = (0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0)
BASELINE_FILE = "drift-baseline.json"


def _log1p_edges(*chars: int) -> tuple[float, ...]:
    """``text_len`` is log1p(characters): edges given in characters."""
    return tuple(round(math.log1p(c), 6) for c in chars)


# The fixed list: name -> (bin edges in the feature's own units, what it is).
# Chosen for weight in the model (text_quoted_lines and html_ext_img lead its
# gain, lex_credential and text_len are in its top 15) and for meaning to an
# admin (links, domains, HTML, forms, attachments, Reply-To). html_present is
# kept from the model because it told the corpora apart; that is exactly why
# it is watched. Values beyond the last edge count in the last bin.
DRIFT_FEATURES: dict[str, tuple[tuple[float, ...], str]] = {
    "url_count": ((0, 1, 2, 4, 8, 16, 32, 1000), "links"),
    "url_domains": ((0, 1, 2, 3, 5, 10, 1000), "distinct link domains"),
    "html_present": ((0, 0.5, 1), "messages with an HTML part"),
    "html_ext_img": ((0, 1, 2, 5, 10, 1000), "remote images"),
    "html_forms": ((0, 1, 100), "HTML forms"),
    "att_count": ((0, 1, 2, 3, 100), "attachments"),
    "lex_credential": ((0, 1, 2, 4, 1000), "password and account words"),
    "reply_to_mismatch": ((0, 0.5, 1), "Reply-To in another domain"),
    "text_len": (_log1p_edges(0, 1, 100, 300, 1000, 3000, 6000), "text length"),
    "text_quoted_lines": ((0, 0.01, 0.1, 0.3, 1), "share of quoted lines"),
}
DRIFT_FEATURE_NAMES: tuple[str, ...] = tuple(DRIFT_FEATURES)


@dataclass(frozen=True)
class Reference:
    """Bin edges and the reference share of each bin, and where they came from."""

    edges: tuple[float, ...]
    shares: tuple[float, ...]
    source: str  # "model" | "site baseline"

    @classmethod
    def parse(cls, data: Any, source: str) -> Reference | None:
        """From ``{"edges": [...], "shares": [...]}``; None if malformed."""
        try:
            edges = tuple(float(e) for e in data["edges"])
            shares = tuple(float(s) for s in data["shares"])
        except (KeyError, TypeError, ValueError):
            return None
        if len(edges) < 2 or len(shares) != len(edges) - 1:
            return None
        if any(b <= a for a, b in itertools.pairwise(edges)):
            return None
        return cls(edges, shares, source)


@dataclass(frozen=True)
class DriftReport:
    feature: str
    psi: float | None
    n: int
    window_s: float
    reading: str
    reference: str = "model"

    def as_json(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "psi": None if self.psi is None else round(self.psi, 4),
            "n": self.n,
            "window_s": self.window_s,
            "reading": self.reading,
            "reference": self.reference,
        }


def psi(reference: Sequence[float], live: Sequence[float]) -> float:
    """The PSI of two lists of bin shares (each summing to about 1)."""
    total = 0.0
    for expected, actual in zip(reference, live, strict=True):
        e, a = max(expected, EPSILON), max(actual, EPSILON)
        total += (a - e) * math.log(a / e)
    return total


def reading(value: float | None, why: str = "") -> str:
    if value is None:
        return why or f"not enough mail (fewer than {MIN_MESSAGES} in the window)"
    if value < STABLE:
        return "stable"
    if value <= MODERATE:
        return "moderate shift"
    return "shift: live mail differs from the reference"


def bin_shares(values: np.ndarray, edges: Sequence[float]) -> list[float]:
    """Share of *values* in each bin; values outside count in the end bins."""
    if len(values) == 0:
        return [0.0] * (len(edges) - 1)
    clipped = np.clip(values, edges[0], edges[-1])
    counts, _ = np.histogram(clipped, bins=np.asarray(edges, dtype=np.float64))
    return [float(c) / len(values) for c in counts]


def feature_references(columns: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """``reference.features`` for a model: the fixed list, binned.

    *columns* maps each name of :data:`DRIFT_FEATURES` to its values over
    the reference mail (training passes its feature matrix's columns).
    """
    out: dict[str, Any] = {}
    for name, (edges, _) in DRIFT_FEATURES.items():
        values = np.asarray(columns[name], dtype=np.float64)
        out[name] = {
            "edges": [float(e) for e in edges],
            "shares": [round(s, 5) for s in bin_shares(values, edges)],
            "n": len(values),
        }
    return out


def model_meta(model_dir: Path) -> dict[str, Any]:
    """The model's meta.json, read alone (loading the model is not needed)."""
    try:
        data = json.loads((model_dir / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_references(meta: Mapping[str, Any]) -> dict[str, Reference]:
    """The score and feature references stored in a model's metadata."""
    stored = meta.get("reference")
    stored = stored if isinstance(stored, dict) else {}
    found: dict[str, Any] = {SCORE: stored.get(SCORE)}
    features = stored.get("features")
    if isinstance(features, dict):
        found.update({name: features.get(name) for name in DRIFT_FEATURE_NAMES})
    return _parsed(found, "model")


def _parsed(found: Mapping[str, Any], source: str) -> dict[str, Reference]:
    refs = {name: Reference.parse(data, source) for name, data in found.items()}
    return {name: ref for name, ref in refs.items() if ref is not None}


def _baseline_references(state_dir: Path) -> dict[str, Reference]:
    try:
        data = json.loads((state_dir / BASELINE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    if "edges" in data:  # the first format held the score only
        return _parsed({SCORE: data}, "site baseline")
    found = {SCORE: data.get(SCORE), **(data.get("features") or {})}
    return _parsed(found, "site baseline")


def references_for(state_dir: Path, meta: Mapping[str, Any]) -> dict[str, Reference]:
    """Per value, the site's baseline if one was taken, else the model's."""
    return {**model_references(meta), **_baseline_references(state_dir)}


@dataclass(frozen=True)
class LiveWindow:
    """What the verdict log holds for one window: scores and feature columns."""

    scores: np.ndarray
    features: dict[str, np.ndarray]


def read_window(db_path: Path, since: float) -> LiveWindow:
    """Phish scores and recorded drift features of rows since *since*.

    SQLite takes the features out of their JSON (``json_extract``): about
    twice as fast as decoding each row in Python (1.5 s for 100,000 rows
    here), and mostly outside the GIL. A row without them gives NaN, which
    is left out.
    """
    empty = LiveWindow(np.zeros(0), {name: np.zeros(0) for name in DRIFT_FEATURES})
    if not db_path.exists():
        return empty
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10.0)
    with contextlib.closing(conn):
        try:
            rows = conn.execute(_window_sql(conn), (since,)).fetchall()
        except sqlite3.OperationalError:  # no verdicts table yet
            return empty
    table = np.array(rows, dtype=np.float64).reshape(-1, 1 + len(DRIFT_FEATURES))
    features = {
        name: column[~np.isnan(column)]
        for name, column in zip(DRIFT_FEATURES, table[:, 1:].T, strict=True)
    }
    return LiveWindow(table[:, 0], features)


def _window_sql(conn: sqlite3.Connection) -> str:
    """The window query; a table from before the features column gives NULLs."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(verdicts)")}
    if "features" in columns:
        # CASE is lazy, so malformed JSON gives NULL instead of an error;
        # CAST keeps a foreign non-number from failing the whole window.
        extracted = [
            "CASE WHEN json_valid(features) THEN "
            f"CAST(json_extract(features, '$.{name}') AS REAL) END"
            for name in DRIFT_FEATURES
        ]
    else:
        extracted = ["NULL"] * len(DRIFT_FEATURES)
    # Only fixed names go into the SQL text; the time is a parameter.
    return (
        f"SELECT phish, {', '.join(extracted)} FROM verdicts "
        "WHERE time >= ? AND phish IS NOT NULL"
    )


def drift_reports(
    db_path: Path,
    references: Mapping[str, Reference],
    window_s: float,
    now: float | None = None,
) -> list[DriftReport]:
    """PSI of the score and of each fixed feature over the last *window_s*."""
    window = read_window(db_path, (now or time.time()) - window_s)
    live = {SCORE: window.scores, **window.features}
    return [
        _report(name, live[name], references.get(name), window_s)
        for name in (SCORE, *DRIFT_FEATURE_NAMES)
    ]


def _report(
    name: str, values: np.ndarray, ref: Reference | None, window_s: float
) -> DriftReport:
    if ref is None:
        why = "no reference in this model's metadata"
        return DriftReport(
            name, None, len(values), window_s, reading(None, why), "none"
        )
    if len(values) < MIN_MESSAGES:
        return DriftReport(name, None, len(values), window_s, reading(None), ref.source)
    value = psi(ref.shares, bin_shares(values, ref.edges))
    return DriftReport(name, value, len(values), window_s, reading(value), ref.source)


def take_baseline(state_dir: Path, meta: Mapping[str, Any], window_s: float) -> int:
    """Store the window's shares as this site's reference; returns the count.

    The bins are the model's (or the built-in ones); nothing is written when
    fewer than ``MIN_MESSAGES`` scores are in the window.
    """
    window = read_window(state_dir / DB_NAME, time.time() - window_s)
    if len(window.scores) < MIN_MESSAGES:
        return len(window.scores)
    model = model_references(meta)
    score_edges = model[SCORE].edges if SCORE in model else SCORE_EDGES
    features = {
        name: _binned(values, model[name].edges if name in model else edges)
        for name, (edges, _) in DRIFT_FEATURES.items()
        if len(values := window.features[name]) >= MIN_MESSAGES
    }
    baseline = {
        SCORE: _binned(window.scores, score_edges),
        "features": features,
        "taken": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    tmp = state_dir / f".{BASELINE_FILE}.tmp"
    tmp.write_text(json.dumps(baseline), encoding="utf-8")
    tmp.replace(state_dir / BASELINE_FILE)
    return len(window.scores)


def _binned(values: np.ndarray, edges: Sequence[float]) -> dict[str, Any]:
    shares = [round(s, 5) for s in bin_shares(values, edges)]
    return {"edges": list(edges), "shares": shares, "n": len(values)}
