"""``phishgate drift``: drift of live mail and the live model's quality, readably.

Prints the PSI of the phish score and of each fixed feature over a window
of the verdict log, each with its plain reading, then precision and recall
of the logged decisions over the labels window (or why there are none).
``--baseline`` stores the window as this site's reference instead.
"""

from __future__ import annotations

import json
import sys

from .config import Config
from .drift import (
    DRIFT_FEATURES,
    MIN_MESSAGES,
    MODERATE,
    STABLE,
    DriftReport,
    drift_reports,
    model_meta,
    references_for,
    take_baseline,
)
from .models_dir import serving_model_dir
from .quality import LiveQuality, live_quality
from .verdictlog import DB_NAME

__all__ = ["drift_command"]

EXIT_OK, EXIT_PARTIAL = 0, 1


def drift_command(
    config: Config, window_s: float | None, baseline: bool, as_json: bool
) -> int:
    """Run ``phishgate drift``; returns the exit status."""
    window_s = window_s or config.drift.window_hours * 3600
    meta = model_meta(serving_model_dir(config))
    if baseline:
        return _store_baseline(config, meta, window_s)
    db_path = config.state_dir / DB_NAME
    reports = drift_reports(db_path, references_for(config.state_dir, meta), window_s)
    quality = live_quality(db_path, config.drift.labels_window_days * 86400)
    if as_json:
        print(json.dumps(_as_json(reports, quality, window_s, config)))
    else:
        print("\n".join(_lines(reports, quality, window_s)))
    return EXIT_OK


def _store_baseline(config: Config, meta: dict[str, object], window_s: float) -> int:
    n = take_baseline(config.state_dir, meta, window_s)
    if n < MIN_MESSAGES:
        print(
            f"phishgate: drift: only {n} scanned messages in the window, "
            f"{MIN_MESSAGES} needed",
            file=sys.stderr,
        )
        return EXIT_PARTIAL
    print(f"baseline stored from {n} messages")
    return EXIT_OK


def _as_json(
    reports: list[DriftReport],
    quality: LiveQuality,
    window_s: float,
    config: Config,
) -> dict[str, object]:
    return {
        "window_s": window_s,
        "threshold": config.drift.threshold,
        "drift": [
            {**r.as_json(), "description": _description(r.feature)} for r in reports
        ],
        "live_model": quality.as_json(),
    }


def _description(feature: str) -> str:
    if feature in DRIFT_FEATURES:
        return DRIFT_FEATURES[feature][1]
    return "phish score"


def _lines(
    reports: list[DriftReport], quality: LiveQuality, window_s: float
) -> list[str]:
    lines = [
        f"Drift over the last {window_s / 3600:g} h (PSI below {STABLE} stable, "
        f"{STABLE} to {MODERATE} moderate, above {MODERATE} a shift):",
    ]
    for r in reports:
        value = "-" if r.psi is None else f"{r.psi:.3f}"
        notes = [_description(r.feature), f"{r.n} messages"]
        if r.reference == "site baseline":
            notes.append("against the site baseline")
        lines.append(f"  {r.feature:<18} {value:>6}  {r.reading}  ({'; '.join(notes)})")
    return [*lines, "", quality.sentence()]
