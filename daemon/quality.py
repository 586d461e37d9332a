"""Live model quality: precision and recall of the served decisions, from labels.

Labels (table ``labels``: admin labels, quarantine releases, user reports)
are joined to the verdict log by Message-ID; where a message has several,
the admin's wins (:func:`verdictlog.winning_labels`). A message scanned more
than once counts once, with its newest verdict. Only scanned messages count
(not those skipped or failed), whichever model version scanned them.

A message is *flagged* when its logged action was tag, quarantine or reject
(what a user sees as "the filter called it phishing"); it is *phish* when its
label is phish, and ham and spam labels both count as not phish::

    precision = flagged phish / flagged labelled messages
    recall    = flagged phish / labelled phish

Reports are not a random sample: users report the phish that got through
and the ham that was held, so both figures run lower than on a test set.
They are for watching a trend, not for comparing with MODEL.md.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .verdictlog import winning_labels

__all__ = ["FLAGGED", "MIN_LABELS", "LiveQuality", "live_quality"]

FLAGGED = ("tag", "quarantine", "reject")
MIN_LABELS = 20
"""Below this many labelled messages in the window, no figure is given."""


@dataclass(frozen=True)
class LiveQuality:
    """Counts of labelled messages in one window, and the figures from them."""

    labelled: int
    flagged_phish: int
    flagged_other: int
    missed_phish: int
    window_s: float

    @property
    def enough(self) -> bool:
        return self.labelled >= MIN_LABELS

    @property
    def precision(self) -> float | None:
        flagged = self.flagged_phish + self.flagged_other
        return self.flagged_phish / flagged if self.enough and flagged else None

    @property
    def recall(self) -> float | None:
        phish = self.flagged_phish + self.missed_phish
        return self.flagged_phish / phish if self.enough and phish else None

    def as_json(self) -> dict[str, Any]:
        return {
            "labelled": self.labelled,
            "flagged_phish": self.flagged_phish,
            "flagged_not_phish": self.flagged_other,
            "missed_phish": self.missed_phish,
            "precision": _rounded(self.precision),
            "recall": _rounded(self.recall),
            "window_s": self.window_s,
            "min_labels": MIN_LABELS,
        }

    def sentence(self) -> str:
        days = self.window_s / 86400
        if not self.enough:
            return (
                f"Not enough labels to judge the live model: {self.labelled} "
                f"labelled messages in the last {days:g} days, {MIN_LABELS} needed."
            )
        return (
            f"Live model over the last {days:g} days, {self.labelled} labelled "
            f"messages: precision {_shown(self.precision)} ({self.flagged_phish} of "
            f"{self.flagged_phish + self.flagged_other} flagged are phish), recall "
            f"{_shown(self.recall)} ({self.flagged_phish} of "
            f"{self.flagged_phish + self.missed_phish} phish flagged)."
        )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def live_quality(
    db_path: Path, window_s: float, now: float | None = None
) -> LiveQuality:
    """Precision and recall of the logged decisions over the last *window_s*."""
    since = (now or time.time()) - window_s
    labels, actions = _labels_and_actions(db_path, since)
    flagged_phish = flagged_other = missed = 0
    for message_id, action in actions.items():
        is_phish = labels[message_id] == "phish"
        if action in FLAGGED:
            flagged_phish += is_phish
            flagged_other += not is_phish
        else:
            missed += is_phish
    return LiveQuality(len(actions), flagged_phish, flagged_other, missed, window_s)


def _labels_and_actions(
    db_path: Path, since: float
) -> tuple[dict[str, str], dict[str, str]]:
    """Winning labels, and the newest action of each labelled scanned message."""
    if not db_path.exists():
        return {}, {}
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10.0)
    with contextlib.closing(conn):
        labels = winning_labels(conn)
        if not labels:
            return {}, {}
        try:
            rows = conn.execute(
                "SELECT message_id, action FROM verdicts WHERE time >= ? "
                "AND status = 'scanned' AND message_id IN "
                "(SELECT message_id FROM labels) ORDER BY time, id",
                (since,),
            ).fetchall()
        except sqlite3.OperationalError:  # labels recorded, no verdicts table yet
            return {}, {}
    actions = {message_id: action for message_id, action in rows}
    return labels, {m: a for m, a in actions.items() if m in labels}
