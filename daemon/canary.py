"""The canary set: small crafted messages whose class is never in doubt.

Shipped inside the package (``data/canary``) and used twice: the retrain
gate compares a candidate with the current model on it, and the daemon
refuses to swap in a model that gets any of it wrong (a canary phish below
the model's ``tag`` threshold, or a canary ham at or above ``quarantine``).
"""

from __future__ import annotations

import json
from importlib import resources

from .scanner import Scanner

__all__ = ["canary_failures", "canary_messages"]


def canary_messages() -> list[tuple[str, bytes, str]]:
    """(file name, raw bytes, label) for every canary message."""
    folder = resources.files("phishgate.daemon") / "data" / "canary"
    listing = json.loads((folder / "canary.json").read_text(encoding="utf-8"))
    return [
        (e["file"], (folder / e["file"]).read_bytes(), e["label"])
        for e in listing["messages"]
    ]


def canary_failures(scanner: Scanner) -> list[str]:
    """What the scanner's model gets wrong on the canary set (empty: all good)."""
    thresholds = scanner.model.thresholds
    failures = []
    for name, raw, label in canary_messages():
        phish = scanner.scan(raw).verdict.phish
        if label == "phish" and phish < thresholds.tag:
            failures.append(
                f"{name}: phish scored {phish:.3f}, below tag {thresholds.tag}"
            )
        elif label == "ham" and phish >= thresholds.quarantine:
            failures.append(
                f"{name}: ham scored {phish:.3f}, quarantine is {thresholds.quarantine}"
            )
    return failures
