"""``phishgate retrain``: learn from the labels in the log, publish behind a gate.

**Continue, do not start over.** The bundled model was trained on public
corpora that are not on the user's machine (and some may not be used
commercially), so a retrain from scratch would have only the site's labels,
a few hundred messages at first, and would forget everything the bundled
model knows. Instead the active model is the starting point (LightGBM
``init_model``): its trees stay as they are, and a few more rounds at a
lower learning rate fit what it gets wrong on this site's mail. Base corpora
from ``[retrain] corpora`` are mixed in when the admin has them. The same
feature columns as in :mod:`training.train` are zeroed, so the new trees
learn from nothing the bundled model was kept from. The thresholds are
inherited from the parent model: choosing new ones needs thousands of ham
from unseen sources, which a site's labels are not.

**Dataset.** Rows of the ``labels`` table, one example per message (same
Message-ID, else same SHA-256): admin labels (``admin``, ``admin-release``)
win over user reports, and a later label over an earlier one of the same
rank. The newest ``holdback_share`` of the examples (by label time) is held
back for the gate and never trained on, nor is any copy of it.

**Gate.** The candidate and the active model score the held-back labels and
the canary set shipped in ``phishgate/daemon/data/canary``. For each set, at
the active model's quarantine threshold, the candidate's phish recall may be
at most ``tolerance`` lower and its ham false-positive rate at most
``tolerance`` higher; otherwise it is refused. The canary set catches a
model that learnt from poisoned labels: those also poison the hold-back.

**Publish.** The model folder is written under a hidden temp name and
renamed to ``STATE/models/<version>``; then the active pointer is switched
(:func:`phishgate.daemon.models_dir.activate`, which loads and checks it
first). Refused candidates are kept too (the newest few) for inspection.
The decision and its figures go to the log, the ``models`` table, the
candidate's ``meta.json`` (key ``gate``) and the exit status.

**Concurrency.** One retrain at a time (``fcntl.flock`` on
``STATE/retrain.lock``; a second one waits). New labels are counted from the
last published model, so running twice publishes at most once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from phishgate.daemon.canary import canary_messages
from phishgate.daemon.config import Config
from phishgate.daemon.drift import DRIFT_FEATURES
from phishgate.daemon.features import FEATURE_NAMES, SCHEMA_VERSION
from phishgate.daemon.model import CLASSES, PHISH, Model
from phishgate.daemon.models_dir import (
    activate,
    active_path,
    active_version,
    list_versions,
    models_dir,
)
from phishgate.daemon.verdictlog import DB_NAME

from .dataset import (
    _extract_chunk,  # the same featuriser as corpora, without a process pool
    _run_extraction,
    dedup_keys,
    load_corpora,
    parse_corpus_spec,
)
from .train import (
    PARAMS,
    SEED,
    TEXT_FAMILIES,
    TrainConfig,
    class_weights,
    excluded_features,
    reference_distributions,
    top_features,
    without_excluded,
    write_model_dir,
)

__all__ = [
    "EXIT_ERROR",
    "EXIT_FEW_LABELS",
    "EXIT_PUBLISHED",
    "EXIT_REFUSED",
    "Outcome",
    "RetrainError",
    "judge",
    "resolve_labels",
    "retrain",
]

log = logging.getLogger(__name__)

EXIT_PUBLISHED, EXIT_ERROR, EXIT_REFUSED, EXIT_FEW_LABELS = 0, 1, 3, 4
LOCK_FILE = "retrain.lock"
# Smaller steps than the first training: new trees correct, not replace.
LEARNING_RATE = 0.03
# Below this many messages, a process pool costs more than it saves.
POOL_MIN_MESSAGES = 256
KEEP_REFUSED = 3
SOURCE_RANK = {"admin": 2, "admin-release": 2, "user-report": 1}
MODELS_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY, version TEXT, created TEXT, parent TEXT,
    decision TEXT, figures TEXT, labels_upto INTEGER
);
"""
HAM = CLASSES.index("ham")


class RetrainError(Exception):
    """A retrain that cannot run; the message says why."""


@dataclass(frozen=True)
class LabelRow:
    """One row of the ``labels`` table."""

    id: int
    time: float
    message_id: str
    label: str
    source: str
    path: str
    sha256: str
    confidence: str = ""
    """``inline`` for an original rebuilt from an inline forward."""


INLINE_WEIGHT = 0.5
"""Training weight of an inline-forward label, relative to the others: its
headers and HTML are lost, so what it says about them is weaker."""


@dataclass
class Outcome:
    """What a retrain run decided, with its figures and exit status."""

    decision: str
    exit_status: int
    version: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Examples:
    X: np.ndarray
    y: np.ndarray
    names: list[str]


def resolve_labels(rows: list[LabelRow]) -> list[LabelRow]:
    """One winning row per message, oldest first.

    Rows are the same message when they share a Message-ID, or a SHA-256
    with a row that has one. Admin labels beat user reports; among equals
    the later label wins.
    """
    by_sha = {r.sha256: r.message_id.strip() for r in rows if r.message_id.strip()}
    best: dict[str, LabelRow] = {}
    for row in rows:
        key = row.message_id.strip() or by_sha.get(row.sha256) or f"sha:{row.sha256}"
        old = best.get(key)
        if old is None or _rank(row) >= _rank(old):
            best[key] = row
    return sorted(best.values(), key=lambda r: (r.time, r.id))


def _rank(row: LabelRow) -> tuple[int, float, int]:
    return SOURCE_RANK.get(row.source, 0), row.time, row.id


@contextlib.contextmanager
def retrain_lock(state_dir: Path) -> Iterator[None]:
    """Hold ``STATE/retrain.lock``; wait while another retrain holds it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / LOCK_FILE).open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("retrain: another retrain is running; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _connect(state_dir: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(state_dir / DB_NAME), timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(MODELS_SCHEMA)
    return conn


def read_label_rows(conn: sqlite3.Connection) -> list[LabelRow]:
    """Every row of the ``labels`` table (none if it does not exist yet)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'labels'"
    ).fetchone()
    if not exists:
        return []
    columns = {row[1] for row in conn.execute("PRAGMA table_info(labels)")}
    confidence = "confidence" if "confidence" in columns else "''"
    cursor = conn.execute(
        # Only a fixed column name or a literal enters the SQL text.
        f"SELECT id, time, message_id, label, source, path, sha256, {confidence} "
        "FROM labels WHERE label IN ('ham', 'spam', 'phish') ORDER BY id"
    )
    return [
        LabelRow(int(i), float(t), m or "", lab, src or "", p or "", sha or "", c or "")
        for i, t, m, lab, src, p, sha, c in cursor
    ]


def _last_published_upto(conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "SELECT max(labels_upto) FROM models WHERE decision = 'published'"
    ).fetchone()
    return int(row[0] or 0)


def _read_raw(rows: list[LabelRow]) -> tuple[list[LabelRow], list[bytes]]:
    """The stored messages; a missing or altered file drops its label."""
    kept, raws = [], []
    for row in rows:
        try:
            raw = Path(row.path).read_bytes()
        except OSError as exc:
            log.warning("retrain: label %d: %s", row.id, exc.strerror or exc)
            continue
        if hashlib.sha256(raw).hexdigest() != row.sha256:
            log.warning(
                "retrain: label %d: %s changed since labelling", row.id, row.path
            )
            continue
        kept.append(row)
        raws.append(raw)
    return kept, raws


def featurise(raws: list[bytes]) -> np.ndarray:
    """Feature rows from the daemon's extractor (no HTML twins: real mail)."""
    jobs = [(raw, False) for raw in raws]
    if len(jobs) >= POOL_MIN_MESSAGES:
        results = _run_extraction(jobs, None, progress=False)
    else:
        results = _extract_chunk(jobs)
    if not results:
        return np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32)
    return np.vstack([values for values, _, _ in results]).astype(np.float32)


def load_canary() -> _Examples:
    """The canary set shipped with the package."""
    entries = canary_messages()
    raws = [raw for _, raw, _ in entries]
    y = np.array([CLASSES.index(label) for _, _, label in entries], dtype=np.int32)
    return _Examples(featurise(raws), y, [name for name, _, _ in entries])


def _split(
    rows: list[LabelRow], raws: list[bytes], share: float
) -> tuple[list[int], list[int]]:
    """Indices of the training part and of the newest hold-back part."""
    n = len(rows)
    n_hold = min(n - 1, max(1, round(share * n))) if n >= 2 else 0
    hold = list(range(n - n_hold, n))
    held_keys: set[bytes] = set()
    for i in hold:
        msgid, body = dedup_keys(raws[i])
        held_keys.update(k for k in (msgid, body) if k is not None)
    train = [
        i
        for i in range(n - n_hold)
        if not held_keys.intersection(k for k in dedup_keys(raws[i]) if k is not None)
    ]
    return train, hold


def _corpora(config: Config, raws: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Base corpora from ``[retrain] corpora``, without copies of labelled mail."""
    specs = [parse_corpus_spec(c) for c in config.retrain.corpora]
    if not specs:
        return np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32), np.zeros(
            0, dtype=np.int32
        )
    seen: tuple[set[bytes], set[bytes]] = (set(), set())
    for raw in raws:
        msgid, body = dedup_keys(raw)
        if msgid is not None:
            seen[0].add(msgid)
        seen[1].add(body)
    ds = load_corpora(
        specs, augment_html=TrainConfig().augment_html, seen=seen, progress=False
    )
    return ds.X, ds.y


def continue_training(
    parent: lgb.Booster,
    X: np.ndarray,
    y: np.ndarray,
    rounds: int,
    trust: np.ndarray | None = None,
) -> lgb.Booster:
    """*rounds* more trees on top of *parent*, excluded columns zeroed.

    *trust* scales each example's class weight (1 = a label as good as any).
    """
    params = dict(PARAMS, learning_rate=LEARNING_RATE, seed=SEED, num_threads=0)
    weight = class_weights(y)
    if trust is not None:
        weight = weight * trust
    train_set = lgb.Dataset(
        without_excluded(X, excluded_features()),
        label=y,
        weight=weight,
        feature_name=list(FEATURE_NAMES),
        free_raw_data=False,
    )
    return lgb.train(params, train_set, num_boost_round=rounds, init_model=parent)


def _rates(phish_score: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, Any]:
    is_phish, is_ham = y == PHISH, y == HAM
    return {
        "phish_recall": round(float(np.mean(phish_score[is_phish] >= threshold)), 5)
        if is_phish.any()
        else None,
        "ham_fpr": round(float(np.mean(phish_score[is_ham] >= threshold)), 5)
        if is_ham.any()
        else None,
    }


def _set_figures(
    current: np.ndarray, candidate: np.ndarray, y: np.ndarray, threshold: float
) -> dict[str, Any]:
    return {
        "n_phish": int(np.sum(y == PHISH)),
        "n_ham": int(np.sum(y == HAM)),
        "current": _rates(current, y, threshold),
        "candidate": _rates(candidate, y, threshold),
    }


def judge(figures: dict[str, dict[str, Any]], tolerance: float) -> list[str]:
    """Reasons to refuse the candidate (none: publish it)."""
    reasons = []
    slack = 1e-9  # rates are rounded; equal must count as not worse
    for name, fig in figures.items():
        cur, cand = fig["current"], fig["candidate"]
        if cur["phish_recall"] is not None and (
            cand["phish_recall"] < cur["phish_recall"] - tolerance - slack
        ):
            reasons.append(
                f"{name}: phish recall {cand['phish_recall']:.4f} below "
                f"{cur['phish_recall']:.4f} - {tolerance}"
            )
        if cur["ham_fpr"] is not None and (
            cand["ham_fpr"] > cur["ham_fpr"] + tolerance + slack
        ):
            reasons.append(
                f"{name}: ham false positives {cand['ham_fpr']:.4f} above "
                f"{cur['ham_fpr']:.4f} + {tolerance}"
            )
    return reasons


def _gate(
    parent: Model,
    booster: lgb.Booster,
    sets: dict[str, _Examples],
    tolerance: float,
) -> dict[str, Any]:
    threshold = parent.thresholds.quarantine
    figures = {}
    for name, ex in sets.items():
        current = parent.probabilities(ex.X)[:, PHISH] if len(ex.y) else ex.y
        candidate = np.asarray(booster.predict(ex.X))[:, PHISH] if len(ex.y) else ex.y
        figures[name] = _set_figures(current, candidate, ex.y, threshold)
    reasons = judge(figures, tolerance)
    return {
        "decision": "refused" if reasons else "published",
        "reasons": reasons,
        "threshold": threshold,
        "tolerance": tolerance,
        **figures,
    }


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(
    parent_name: str,
    parent: Model,
    booster: lgb.Booster,
    rounds: int,
    counts: dict[str, int],
    reference: tuple[np.ndarray, np.ndarray],
) -> dict[str, Any]:
    excluded = excluded_features()
    return {
        "version": "",
        "created": _now(),
        "schema_version": SCHEMA_VERSION,
        "classes": list(CLASSES),
        "n_features": len(FEATURE_NAMES),
        "parent": parent_name,
        "parent_model_version": parent.version,
        "thresholds": dict(parent.meta["thresholds"]),
        "threshold_policy": {"inherited_from": parent.version},
        "training": {
            "init_model": parent.version,
            "n": counts,
            "rounds": rounds,
            "learning_rate": LEARNING_RATE,
            "seed": SEED,
            "excluded_features": [
                n for n in excluded if not n.startswith(TEXT_FAMILIES)
            ]
            + [f"{f}* (hashed text)" for f in TEXT_FAMILIES],
        },
        "top_features": top_features(booster),
        "reference": _references(parent, reference),
    }


def _references(
    parent: Model, reference: tuple[np.ndarray, np.ndarray]
) -> dict[str, Any]:
    """Drift references: the score over this retrain's labelled messages.

    The features are the parent's when it has the whole fixed list:
    continued training keeps the parent's trees, so the rows it learnt from
    are still what the model knows; a few hundred reported messages are not
    a picture of a site's mail.
    """
    X, scores = reference
    out = reference_distributions(scores, X, "the labelled messages of this retrain")
    stored = (parent.meta.get("reference") or {}).get("features") or {}
    if all(name in stored for name in DRIFT_FEATURES):
        out["features"] = {name: stored[name] for name in DRIFT_FEATURES}
        out["features_from"] = f"inherited from {parent.version}"
    return out


def _write_candidate(
    state_dir: Path, booster: lgb.Booster, meta: dict[str, Any]
) -> str:
    """Write under a hidden name, rename to the version; returns the version."""
    root = models_dir(state_dir)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".candidate-{os.getpid()}"
    write_model_dir(staging, booster, meta)
    version = str(meta["version"])
    target = root / version
    if target.exists():
        shutil.rmtree(staging, ignore_errors=True)
        raise RetrainError(f"{target}: already exists")
    staging.rename(target)
    return version


def _clean_partial(state_dir: Path) -> None:
    """Remove candidates a crashed run left half written (we hold the lock)."""
    root = models_dir(state_dir)
    if not root.is_dir():
        return
    for path in root.iterdir():
        if path.is_dir() and path.name.startswith((".candidate-", "..candidate-")):
            shutil.rmtree(path, ignore_errors=True)


def _prune_refused(state_dir: Path) -> None:
    refused = [
        v
        for v in list_versions(state_dir)
        if v.gate and v.gate.get("decision") == "refused" and not v.active
    ]
    for info in sorted(refused, key=lambda v: v.created or "")[:-KEEP_REFUSED]:
        hidden = info.path.with_name(f".candidate-pruned-{info.version}")
        info.path.rename(hidden)
        shutil.rmtree(hidden, ignore_errors=True)


def _record(
    conn: sqlite3.Connection, version: str, parent: str, gate: dict[str, Any]
) -> None:
    with conn:
        conn.execute(
            "INSERT INTO models (version, created, parent, decision, figures, "
            "labels_upto) VALUES (?, ?, ?, ?, ?, ?)",
            (
                version,
                _now(),
                parent,
                gate["decision"],
                json.dumps(gate, sort_keys=True),
                gate["labels_upto"],
            ),
        )


def _summary(gate: dict[str, Any]) -> str:
    parts = []
    for name in ("holdback", "canary"):
        fig = gate[name]
        cur, cand = fig["current"], fig["candidate"]
        parts.append(
            f"{name} (phish {fig['n_phish']}, ham {fig['n_ham']}): recall "
            f"{cand['phish_recall']} vs {cur['phish_recall']}, ham FPR "
            f"{cand['ham_fpr']} vs {cur['ham_fpr']}"
        )
    return "; ".join(parts + gate["reasons"])


def retrain(
    config: Config, *, min_labels: int | None = None, force: bool = False
) -> Outcome:
    """One ``phishgate retrain`` run under the lock; never raises on a refusal."""
    state_dir = config.state_dir
    with retrain_lock(state_dir):
        _clean_partial(state_dir)
        conn = _connect(state_dir)
        try:
            return _retrain_locked(config, conn, min_labels, force)
        finally:
            conn.close()


def _retrain_locked(
    config: Config, conn: sqlite3.Connection, min_labels: int | None, force: bool
) -> Outcome:
    started = time.monotonic()
    rows, raws = _read_raw(resolve_labels(read_label_rows(conn)))
    upto = _last_published_upto(conn)
    new = sum(1 for r in rows if r.id > upto)
    need = config.retrain.min_new_labels if min_labels is None else min_labels
    if len(rows) < 2 or (new < need and not force):
        log.info(
            "retrain: not enough labels: %d new since the last published model, "
            "%d needed (%d labelled messages in all)",
            new,
            need,
            len(rows),
        )
        return Outcome("not-enough-labels", EXIT_FEW_LABELS, figures={"new": new})

    meta, booster = _train_and_judge(config, rows, raws)
    meta["gate"].update(
        new_labels=new,
        min_new_labels=need,
        forced=force,
        labels_upto=max(r.id for r in rows),
        seconds=round(time.monotonic() - started, 1),
    )
    return _decide(config.state_dir, conn, booster, meta)


def _train_and_judge(
    config: Config, rows: list[LabelRow], raws: list[bytes]
) -> tuple[dict[str, Any], lgb.Booster]:
    """The candidate and its metadata, gate figures included."""
    settings = config.retrain
    parent_name = active_version(config.state_dir)
    parent = Model.load(active_path(config.state_dir))
    X_all = featurise(raws)
    y_all = np.array([CLASSES.index(r.label) for r in rows], dtype=np.int32)
    train, hold = _split(rows, raws, settings.holdback_share)
    X_base, y_base = _corpora(config, raws)
    X = np.vstack([X_all[train], X_base])
    y = np.concatenate([y_all[train], y_base])
    trust = np.concatenate(
        [
            [INLINE_WEIGHT if rows[i].confidence == "inline" else 1.0 for i in train],
            np.ones(len(y_base)),
        ]
    )
    log.info(
        "retrain: %d labelled messages for training, %d held back, %d from corpora; "
        "continuing %s",
        len(train),
        len(hold),
        len(y_base),
        parent_name,
    )
    booster = continue_training(parent.booster, X, y, settings.rounds, trust)

    sets = {
        "holdback": _Examples(
            X_all[hold], y_all[hold], [str(rows[i].id) for i in hold]
        ),
        "canary": load_canary(),
    }
    gate = _gate(parent, booster, sets, settings.tolerance)
    counts = {name: int(np.sum(y == k)) for k, name in enumerate(CLASSES)}
    gate.update(
        parent=parent_name,
        training={"labels": len(train), "corpora": len(y_base), "n": counts},
    )
    reference_scores = np.asarray(booster.predict(X_all))[:, PHISH]
    meta = _meta(
        parent_name, parent, booster, settings.rounds, counts, (X_all, reference_scores)
    )
    meta["gate"] = gate
    return meta, booster


def _decide(
    state_dir: Path,
    conn: sqlite3.Connection,
    booster: lgb.Booster,
    meta: dict[str, Any],
) -> Outcome:
    gate = meta["gate"]
    version = _write_candidate(state_dir, booster, meta)
    if gate["decision"] == "published":
        try:
            activate(state_dir, version)
        except Exception as exc:  # whatever the loader finds wrong: not published
            _record(conn, version, gate["parent"], {**gate, "decision": "error"})
            raise RetrainError(f"candidate {version} does not load: {exc}") from exc
    _record(conn, version, gate["parent"], gate)
    _prune_refused(state_dir)
    if gate["decision"] == "published":
        log.info("retrain: published %s: %s", version, _summary(gate))
        return Outcome("published", EXIT_PUBLISHED, version, gate)
    log.warning("retrain: refused %s: %s", version, _summary(gate))
    return Outcome("refused", EXIT_REFUSED, version, gate)
