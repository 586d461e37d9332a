"""The HTML twins given to plain-text ham, and the smoothed thresholds."""

from __future__ import annotations

import numpy as np
from mailfactory import as_bytes, plain
from phishgate.daemon.message import parse_message
from phishgate.training.augment import html_twin
from phishgate.training.metrics import smoothed_threshold, threshold_at_fpr

REPLY = (
    "Sounds good, see https://wiki.example.org/page for the notes.\n\n"
    "On Mon, 1 Jan 2024, Ann wrote:\n> Can we meet on Friday?\n> Ann\n\n"
    "-- \nBob\n"
)


def test_twin_keeps_text_and_adds_html() -> None:
    """A plain reply becomes text + HTML with the same words and links."""
    for i in range(20):
        raw = as_bytes(plain(REPLY, msgid=f"<m{i}@example.org>"))
        parsed = parse_message(html_twin(raw))
        assert parsed.html
        assert "wiki.example.org" in parsed.html[0]
        assert "Friday" in parsed.html[0]
        assert parsed.header("message-id") == f"<m{i}@example.org>"


def test_twin_is_deterministic_and_skips_multipart() -> None:
    """The same input gives the same twin; a twin is not twinned again."""
    raw = as_bytes(plain(REPLY))
    twin = html_twin(raw)
    assert html_twin(raw) == twin
    assert html_twin(twin) == twin


def test_smoothed_threshold_tracks_the_empirical_one() -> None:
    """On a smooth distribution the smoothed threshold sits near the plain one."""
    scores = np.random.default_rng(1).beta(1, 30, size=20_000)
    for fpr in (0.001, 0.005, 0.01):
        smooth = smoothed_threshold(scores, fpr)
        assert abs(np.mean(scores >= smooth) - fpr) < fpr * 0.5
        assert abs(smooth - threshold_at_fpr(scores, fpr)) < 0.02
