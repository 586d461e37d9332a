"""Train a model, choose its thresholds on unseen sources, evaluate, write it.

Validation follows the corpora's traps: thresholds are chosen on ham from
sources left out of training (leave-one-source-out), because ham from a
source the model has seen scores far lower than ham from a new one; the
test part is whatever the caller holds out (by time for phish, by whole
source for ham and spam), deduplicated against the training part.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from phishgate.daemon.drift import (
    DRIFT_FEATURES,
    SCORE_EDGES,
    bin_shares,
    feature_references,
)
from phishgate.daemon.features import FEATURE_NAMES, SCHEMA_VERSION
from phishgate.daemon.model import CLASSES, META_FILE, MODEL_FILE, PHISH, file_sha256

from .dataset import CorpusSpec, Dataset, load_corpora
from .metrics import evaluate_scores, smoothed_threshold, threshold_at_fpr

__all__ = ["AUGMENT_HTML_SHARE", "TrainConfig", "fit", "train_and_write"]

log = logging.getLogger(__name__)

SEED = 20261203
PARAMS: dict[str, Any] = {
    "objective": "multiclass",
    "num_class": len(CLASSES),
    "learning_rate": 0.06,
    "num_leaves": 31,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.5,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_bin": 63,
    "deterministic": True,
    "force_row_wise": True,
    "verbosity": -1,
}
# Default thresholds, as ham false-positive rates on left-out ham sources.
TAG_FPR = 0.01
QUARANTINE_FPR = 0.005
MIN_FOLD_HAM = 100
# Share of plain-text training ham given an HTML twin (see augment.py); the
# one default for TrainConfig and `phishgate train`.
AUGMENT_HTML_SHARE = 0.4

# Features the extractor computes (for reasons and drift) but the model is
# not allowed to learn from: each separates the *collections* here rather
# than phish from ham, so it would not transfer to a new site. The columns
# are zeroed before fitting, so no tree ever splits on them.
CONFOUNDED_FEATURES: tuple[str, ...] = (
    # HTML and client era: ~94 % of phish has HTML, ~14 % of the ham does
    "html_present",
    "html_only",
    "mailer_present",
    "dkim_present",
    "hdr_count",
    # every modern URL is https, every 2002/2007 ham URL http: an era cue
    "url_http_frac",
    # all modern training ham is list mail, whose envelope sender is the
    # list's bounce address, so "Return-Path matches From" looked like phish
    "return_path_mismatch",
)
# The hashed n-grams learn which mailing list (topic) a ham message came
# from; leave-source-out and held-out tests are better without them.
TEXT_FAMILIES = ("word_", "bigram_", "char_")


def excluded_features() -> tuple[str, ...]:
    """Names of the feature columns that training zeroes (see above)."""
    text = tuple(n for n in FEATURE_NAMES if n.startswith(TEXT_FAMILIES))
    return CONFOUNDED_FEATURES + text


# What each public corpus may be used for, by file-name prefix.
LICENCES = {
    "phish-phishingpot": (
        "CC BY-NC 4.0 (Phishing Pot by rf-peixoto): non-commercial use only"
    ),
    "phish-nazario": "Jose Nazario phishing corpus; reported CC BY 4.0 (unverified)",
    "ham-spamassassin": "SpamAssassin public corpus; copyright with the senders",
    "spam-spamassassin": "SpamAssassin public corpus; copyright with the senders",
    "ham-trec07p": "TREC 2007 public spam corpus; research use",
    "spam-trec07p": "TREC 2007 public spam corpus; research use",
    "ham-lore": (
        "public mailing-list archive (public-inbox); copyright with the authors"
    ),
}


@dataclass
class TrainConfig:
    """How to train; the defaults are what the bundled model used."""

    rounds: int = 250
    seed: int = SEED
    augment_html: float = AUGMENT_HTML_SHARE
    threads: int = 0
    choose_thresholds: bool = True
    excluded: tuple[str, ...] = field(default_factory=excluded_features)
    params: dict[str, Any] = field(default_factory=lambda: dict(PARAMS))


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def class_weights(y: np.ndarray) -> np.ndarray:
    """Balanced class weights, so the rarer classes count as much."""
    counts = np.bincount(y, minlength=len(CLASSES)).astype(np.float64)
    per_class = len(y) / (len(CLASSES) * np.maximum(counts, 1.0))
    return np.asarray(per_class[y], dtype=np.float64)


def without_excluded(X: np.ndarray, excluded: tuple[str, ...]) -> np.ndarray:
    """A copy of *X* with the excluded feature columns set to zero."""
    if not excluded:
        return X
    index = {name: i for i, name in enumerate(FEATURE_NAMES)}
    out = X.copy()
    out[:, [index[name] for name in excluded if name in index]] = 0.0
    return out


def fit(ds: Dataset, config: TrainConfig, label: str = "model") -> lgb.Booster:
    """Fit one booster on *ds* with progress every 50 rounds."""
    params = dict(config.params, seed=config.seed, num_threads=config.threads)
    train_set = lgb.Dataset(
        without_excluded(ds.X, config.excluded),
        label=ds.y,
        weight=class_weights(ds.y),
        feature_name=list(FEATURE_NAMES),
        free_raw_data=True,
    )
    start = time.monotonic()

    def progress(env: lgb.callback.CallbackEnv) -> None:
        done = env.iteration + 1
        if done % 50 == 0 or done == config.rounds:
            _say(
                f"  {label}: round {done}/{config.rounds}, "
                f"{time.monotonic() - start:.0f} s"
            )

    return lgb.train(
        params, train_set, num_boost_round=config.rounds, callbacks=[progress]
    )


def leave_source_out(ds: Dataset, config: TrainConfig) -> dict[str, Any]:
    """Score each ham source with a model that never saw it."""
    ham = CLASSES.index("ham")
    sources = sorted({s for s, y in zip(ds.source, ds.y, strict=True) if y == ham})
    oof: list[np.ndarray] = []
    per_source = {}
    for source in sources:
        held = np.array([s == source for s in ds.source])
        if held.sum() < MIN_FOLD_HAM:
            continue
        fold_config = TrainConfig(**{**config.__dict__, "rounds": config.rounds})
        booster = fit(ds.subset(~held), fold_config, label=f"fold {Path(source).name}")
        scores = np.asarray(booster.predict(ds.X[held], num_threads=config.threads))[
            :, PHISH
        ]
        oof.append(scores)
        per_source[Path(source).name] = {
            "n": int(held.sum()),
            "fpr_at_0.5": round(float(np.mean(scores >= 0.5)), 5),
            "p99_score": round(float(np.quantile(scores, 0.99)), 5),
        }
    scores = np.concatenate(oof) if oof else np.zeros(0)
    return {"ham_scores": scores, "per_source": per_source}


def pick_thresholds(oof_ham: np.ndarray) -> dict[str, float]:
    """Tag at 1 %, quarantine at 0.5 % left-out ham FPR; reject above all ham."""
    if len(oof_ham) == 0:
        return {"tag": 0.5, "quarantine": 0.9, "reject": 0.99}
    tag = smoothed_threshold(oof_ham, TAG_FPR)
    quarantine = max(tag, smoothed_threshold(oof_ham, QUARANTINE_FPR))
    reject = min(0.999, max(quarantine, threshold_at_fpr(oof_ham, 0.0)))
    return {
        "tag": round(tag, 6),
        "quarantine": round(quarantine, 6),
        "reject": round(reject, 6),
    }


def top_features(booster: lgb.Booster, n: int = 25) -> list[dict[str, Any]]:
    """Features by total gain, hashed text features grouped by family."""
    gains = booster.feature_importance(importance_type="gain")
    grouped: dict[str, float] = {}
    for name, gain in zip(FEATURE_NAMES, gains, strict=True):
        family = (
            name.split("_", 1)[0] + "_*"
            if name.startswith(("word_", "bigram_", "char_"))
            else name
        )
        grouped[family] = grouped.get(family, 0.0) + float(gain)
    total = sum(grouped.values()) or 1.0
    ranked = sorted(grouped.items(), key=lambda kv: -kv[1])[:n]
    return [{"feature": k, "gain_share": round(v / total, 4)} for k, v in ranked]


def reference_distributions(
    phish_scores: np.ndarray, feature_rows: np.ndarray, features_from: str
) -> dict[str, Any]:
    """What drift (PSI) compares live mail with.

    ``score``: the phish score's shares in fixed bins, over *phish_scores*
    (the evaluation mail: scores of training rows are overfit). ``features``:
    the fixed list of :data:`phishgate.daemon.drift.DRIFT_FEATURES`, over
    *feature_rows* (the rows the model learnt from).
    """
    hist = bin_shares(np.asarray(phish_scores, dtype=np.float64), SCORE_EDGES)
    return {
        "score": {
            "edges": list(SCORE_EDGES),
            "shares": [round(share, 5) for share in hist],
        },
        "features": training_feature_references(feature_rows),
        "features_from": features_from,
    }


def training_feature_references(X: np.ndarray) -> dict[str, Any]:
    """``reference.features`` from a feature matrix in the schema's layout."""
    index = {name: i for i, name in enumerate(FEATURE_NAMES)}
    return feature_references({name: X[:, index[name]] for name in DRIFT_FEATURES})


FEATURES_FROM = "training rows as the model saw them (HTML twins included)"


def refresh_feature_references(
    train_specs: list[CorpusSpec],
    out: Path,
    progress: Callable[[str], None] = _say,
) -> dict[str, Any]:
    """Recompute ``reference.features`` of the model in *out*, model untouched.

    For a model trained before the fixed drift features existed. The
    training rows are rebuilt from *train_specs* with the HTML-twin share the
    model recorded, and must match its per-file counts, so the references
    describe the very rows it learnt from. Only ``meta.json`` is rewritten;
    the checksum there covers ``model.txt`` alone, which stays as it is.
    """
    meta_path = out / META_FILE
    meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
    training = meta.get("training") or {}
    share = float(training.get("augment_html_share", 0.0))
    progress(f"reading the training corpora again (HTML twin share {share})")
    train = load_corpora(train_specs, augment_html=share)
    _check_same_rows(train, training.get("sources") or [])
    meta.setdefault("reference", {})["features"] = training_feature_references(train.X)
    meta["reference"]["features_from"] = FEATURES_FROM
    tmp = meta_path.with_name(f".{META_FILE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    tmp.replace(meta_path)
    return meta


def _check_same_rows(train: Dataset, recorded: list[dict[str, Any]]) -> None:
    """Refuse corpora that do not give the rows the model was trained on."""
    want = {s["file"]: s["used"] for s in recorded}
    have = {Path(p).name: sum(1 for s in train.source if s == p) for p in train.stats}
    if want != have:
        raise ValueError(
            f"these corpora give other training rows than the model's: "
            f"recorded {want}, read {have}"
        )


def _licence(path: str) -> str:
    name = Path(path).name
    return next(
        (v for k, v in LICENCES.items() if name.startswith(k)),
        "unknown: check the source",
    )


def _sources_summary(ds: Dataset, labels: dict[str, str]) -> list[dict[str, Any]]:
    summary = []
    for path, counts in ds.stats.items():
        summary.append(
            {
                "file": Path(path).name,
                "label": labels.get(path, "?"),
                "messages_read": counts["read"],
                "duplicates_dropped": counts["duplicate"],
                "unreadable": counts["error"],
                "used": sum(1 for s in ds.source if s == path),
                "licence": _licence(path),
            }
        )
    return summary


def _baseline_score(ds: Dataset) -> np.ndarray:
    return ds.has_html.astype(np.float64)


def write_model_dir(out: Path, booster: lgb.Booster, meta: dict[str, Any]) -> None:
    """Write model.txt and meta.json under a temp name, then rename into place."""
    out = out.resolve()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    booster.save_model(str(tmp / MODEL_FILE))
    meta["model_sha256"] = file_sha256(tmp / MODEL_FILE)
    digest = meta["model_sha256"][:8]
    meta["version"] = (
        meta.get("version") or f"{meta['created'].replace(':', '-')}-{digest}"
    )
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def train_and_write(
    train_specs: list[CorpusSpec],
    test_specs: list[CorpusSpec],
    out: Path,
    config: TrainConfig,
    progress: Callable[[str], None] = _say,
) -> dict[str, Any]:
    """The whole ``phishgate train`` run; returns the metadata written."""
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    seen: tuple[set[bytes], set[bytes]] = (set(), set())
    progress("reading and featurising training corpora")
    train = load_corpora(train_specs, augment_html=config.augment_html, seen=seen)
    test = load_corpora(test_specs, seen=seen) if test_specs else None
    timings["read_and_features_s"] = time.monotonic() - t0
    progress(
        f"training set: {_counts(train)}; test set: {_counts(test) if test else 'none'}"
    )

    t1 = time.monotonic()
    validation: dict[str, Any] = {}
    thresholds = {"tag": 0.5, "quarantine": 0.9, "reject": 0.99}
    if config.choose_thresholds:
        progress(
            "leave-one-source-out folds over the training ham, to choose thresholds"
        )
        loso = leave_source_out(train, config)
        thresholds = pick_thresholds(loso["ham_scores"])
        validation = {
            "leave_one_source_out_ham": loso["per_source"],
            "oof_ham_n": len(loso["ham_scores"]),
        }
    timings["threshold_folds_s"] = time.monotonic() - t1

    t2 = time.monotonic()
    progress("training the final model")
    booster = fit(train, config, label="final")
    timings["final_fit_s"] = time.monotonic() - t2

    t3 = time.monotonic()
    evaluation = None
    reference_scores = np.asarray(booster.predict(train.X))[:, PHISH]
    if test is not None and len(test.y):
        probs = np.asarray(booster.predict(test.X))
        evaluation = evaluate_scores(
            test.y, probs, thresholds, test.has_html, _baseline_score(test)
        )
        evaluation["sources"] = _sources_summary(
            test, {s.path: s.label for s in test_specs}
        )
        reference_scores = probs[:, PHISH]
    timings["evaluation_s"] = time.monotonic() - t3
    timings["total_s"] = time.monotonic() - t0

    meta = {
        "version": "",
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "schema_version": SCHEMA_VERSION,
        "classes": list(CLASSES),
        "n_features": len(FEATURE_NAMES),
        "thresholds": thresholds,
        "threshold_policy": {
            "tag": f"ham false-positive rate {TAG_FPR:.1%} on left-out ham sources "
            "(rank-smoothed quantile)",
            "quarantine": f"ham false-positive rate {QUARANTINE_FPR:.1%} on left-out "
            "ham sources (rank-smoothed quantile)",
            "reject": "above every left-out ham score (at most 0.999)",
        },
        "training": {
            "sources": _sources_summary(train, {s.path: s.label for s in train_specs}),
            "n": {name: int(np.sum(train.y == k)) for k, name in enumerate(CLASSES)},
            "augment_html_share": config.augment_html,
            "excluded_features": [
                n for n in config.excluded if not n.startswith(TEXT_FAMILIES)
            ]
            + [
                f"{f}* (hashed text)"
                for f in TEXT_FAMILIES
                if any(n.startswith(f) for n in config.excluded)
            ],
            "rounds": config.rounds,
            "seed": config.seed,
            "params": config.params,
        },
        "validation": validation,
        "evaluation": evaluation,
        "top_features": top_features(booster),
        "reference": reference_distributions(reference_scores, train.X, FEATURES_FROM),
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    write_model_dir(out, booster, meta)
    return meta


def _counts(ds: Dataset | None) -> str:
    if ds is None:
        return "none"
    return ", ".join(
        f"{name} {int(np.sum(ds.y == k))}" for k, name in enumerate(CLASSES)
    )
