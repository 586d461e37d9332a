"""Labelled corpora in, a deduplicated feature matrix out.

Messages are deduplicated by Message-ID and by body hash *before* any
split, across every corpus given, so the same campaign message can never sit
on both sides of a train/test boundary. Features come from the daemon's own
extractor, so training and serving compute the same thing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from phishgate.daemon.features import FEATURE_NAMES, FeatureExtractor
from phishgate.daemon.message import parse_message
from phishgate.daemon.model import CLASSES
from phishgate.daemon.sources import iter_messages

from .augment import html_twin, wants_twin

__all__ = ["CorpusSpec", "Dataset", "load_corpora", "parse_corpus_spec"]

log = logging.getLogger(__name__)

_MSGID = re.compile(rb"^message-id:[ \t]*(<[^>\r\n]*>)", re.I | re.M)
_BODY_SPLIT = re.compile(rb"\r?\n\r?\n")
_CHUNK = 64


@dataclass(frozen=True)
class CorpusSpec:
    """A ``PATH:LABEL`` argument."""

    path: str
    label: str


def parse_corpus_spec(text: str) -> CorpusSpec:
    """Split ``PATH:LABEL``; raises ValueError naming the problem."""
    path, sep, label = text.rpartition(":")
    if not sep or not path:
        raise ValueError(f"{text!r}: expected PATH:LABEL")
    if label not in CLASSES:
        raise ValueError(f"{text!r}: LABEL must be one of {', '.join(CLASSES)}")
    return CorpusSpec(path, label)


@dataclass
class Dataset:
    """Feature rows with their label, source file and bookkeeping."""

    X: np.ndarray
    y: np.ndarray
    source: list[str]
    has_html: np.ndarray
    year: np.ndarray
    names: list[str] = field(default_factory=list)
    stats: dict[str, dict[str, int]] = field(default_factory=dict)

    def subset(self, mask: np.ndarray) -> Dataset:
        idx = np.flatnonzero(mask)
        return Dataset(
            self.X[idx],
            self.y[idx],
            [self.source[i] for i in idx],
            self.has_html[idx],
            self.year[idx],
            [self.names[i] for i in idx],
            self.stats,
        )


def dedup_keys(raw: bytes) -> tuple[bytes | None, bytes]:
    """Message-ID (if any) and a whitespace-insensitive body hash."""
    head_end = _BODY_SPLIT.search(raw)
    head = raw if head_end is None else raw[: head_end.start()]
    body = b"" if head_end is None else raw[head_end.end() :]
    match = _MSGID.search(head)
    msgid = match.group(1).strip().lower() if match else None
    body_hash = hashlib.sha1(re.sub(rb"\s+", b"", body)).digest()
    return msgid, body_hash


@dataclass
class _Row:
    raw: bytes
    label: str
    source: str
    name: str


def _collect(
    specs: Iterable[CorpusSpec],
    seen_ids: set[bytes],
    seen_bodies: set[bytes],
    stats: dict[str, dict[str, int]],
) -> Iterator[_Row]:
    for spec in specs:
        counts = stats.setdefault(spec.path, {"read": 0, "duplicate": 0, "error": 0})
        for item in iter_messages(spec.path):
            if item.raw is None:
                counts["error"] += 1
                continue
            counts["read"] += 1
            msgid, body_hash = dedup_keys(item.raw)
            if (msgid is not None and msgid in seen_ids) or body_hash in seen_bodies:
                counts["duplicate"] += 1
                continue
            if msgid is not None:
                seen_ids.add(msgid)
            seen_bodies.add(body_hash)
            yield _Row(item.raw, spec.label, spec.path, item.name)


def _extract_chunk(
    rows: list[tuple[bytes, bool]],
) -> list[tuple[np.ndarray, bool, int]]:
    extractor = FeatureExtractor()
    out = []
    for raw, twin in rows:
        if twin:
            raw = html_twin(raw)
        parsed = parse_message(raw)
        year = _year(parsed.header("date"))
        out.append((extractor.extract(parsed).values, bool(parsed.html), year))
    return out


def _year(date: str) -> int:
    match = re.search(r"\b(19[89]\d|20[0-4]\d)\b", date)
    return int(match.group(1)) if match else 0


def load_corpora(
    specs: list[CorpusSpec],
    *,
    augment_html: float = 0.0,
    seen: tuple[set[bytes], set[bytes]] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Dataset:
    """Read, deduplicate and featurise *specs*.

    ``augment_html`` is the share of plain-text ham given the HTML twin that
    real mail clients send (see :mod:`augment`). ``seen`` carries dedup keys
    across calls, so a test set never repeats a training message.
    """
    seen_ids, seen_bodies = seen if seen is not None else (set(), set())
    stats: dict[str, dict[str, int]] = {}
    rows = list(_collect(specs, seen_ids, seen_bodies, stats))
    jobs = [(r.raw, r.label == "ham" and wants_twin(r.raw, augment_html)) for r in rows]
    results = _run_extraction(jobs, workers, progress)
    X = np.vstack([v for v, _, _ in results]) if results else _empty()
    return Dataset(
        X=X.astype(np.float32),
        y=np.array([CLASSES.index(r.label) for r in rows], dtype=np.int32),
        source=[r.source for r in rows],
        has_html=np.array([h for _, h, _ in results], dtype=bool),
        year=np.array([y for _, _, y in results], dtype=np.int32),
        names=[r.name for r in rows],
        stats=stats,
    )


def _empty() -> np.ndarray:
    return np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32)


def _run_extraction(
    jobs: list[tuple[bytes, bool]], workers: int | None, progress: bool
) -> list[tuple[np.ndarray, bool, int]]:
    chunks = [jobs[i : i + _CHUNK] for i in range(0, len(jobs), _CHUNK)]
    workers = workers or os.cpu_count() or 1
    results: list[tuple[np.ndarray, bool, int]] = []
    start = time.monotonic()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for done, chunk in enumerate(pool.map(_extract_chunk, chunks), 1):
            results.extend(chunk)
            if progress and (done % 20 == 0 or done == len(chunks)):
                elapsed = time.monotonic() - start
                print(
                    f"  features: {len(results)}/{len(jobs)} messages, {elapsed:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    return results
