"""The source probe: can the features tell which corpus a ham message is from?

If a model can name the collection a message came from, it can also learn
"collection" instead of "phish or not". The probe trains a small LightGBM
classifier to predict the source file among ham sources of one era, by
stratified cross-validation, and reports balanced accuracy beside chance.
It runs on every feature, on the features outside the hashed
text n-grams (where receiving-site fingerprints would live: headers,
structure, URLs, HTML), and on those minus the columns training zeroes
(``train.CONFOUNDED_FEATURES``). Topic words do separate mailing lists about
different subjects; that is content, not a collection artefact.
"""

from __future__ import annotations

import json
from typing import Any

import lightgbm as lgb
import numpy as np
from phishgate.daemon.features import FEATURE_NAMES, STRUCTURED_NAMES

from .dataset import CorpusSpec, load_corpora
from .train import CONFOUNDED_FEATURES

__all__ = ["probe_sources", "run_probe"]

FOLDS = 5
SEED = 7
PER_SOURCE = 1200


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    recalls = [float(np.mean(pred[y == k] == k)) for k in np.unique(y)]
    return float(np.mean(recalls))


def _folds(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    fold = np.empty(len(y), dtype=np.int32)
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        rng.shuffle(idx)
        fold[idx] = np.arange(len(idx)) % FOLDS
    return fold


def probe_sources(X: np.ndarray, y: np.ndarray, columns: np.ndarray) -> float:
    """Cross-validated balanced accuracy of predicting the source from X[:, columns]."""
    rng = np.random.default_rng(SEED)
    fold = _folds(y, rng)
    pred = np.empty(len(y), dtype=np.int64)
    n_class = len(np.unique(y))
    params = {
        "objective": "multiclass", "num_class": n_class, "learning_rate": 0.1,
        "num_leaves": 15, "min_data_in_leaf": 20, "verbosity": -1, "seed": SEED,
        "deterministic": True, "force_row_wise": True,
    }  # fmt: skip
    for k in range(FOLDS):
        train = fold != k
        booster = lgb.train(
            params, lgb.Dataset(X[train][:, columns], label=y[train]), 100
        )
        pred[~train] = np.asarray(booster.predict(X[~train][:, columns])).argmax(axis=1)
    return _balanced_accuracy(y, pred)


def _subsample(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    keep: list[int] = []
    for k in np.unique(groups):
        idx = np.flatnonzero(groups == k)
        keep.extend(
            int(i)
            for i in rng.choice(idx, size=min(PER_SOURCE, len(idx)), replace=False)
        )
    return np.sort(np.array(keep))


def run_probe(corpus_args: list[str], *, as_json: bool) -> int:
    """``phishgate probe``: PATH:GROUP arguments, one probe per era group."""
    by_group: dict[str, list[str]] = {}
    for arg in corpus_args:
        path, _, group = arg.rpartition(":")
        by_group.setdefault(group, []).append(path)
    structured = np.arange(len(STRUCTURED_NAMES))
    learned = np.array(
        [i for i, n in enumerate(STRUCTURED_NAMES) if n not in CONFOUNDED_FEATURES]
    )
    everything = np.arange(len(FEATURE_NAMES))
    results: list[dict[str, Any]] = []
    for group, paths in by_group.items():
        ds = load_corpora([CorpusSpec(p, "ham") for p in paths], progress=False)
        names = sorted(set(ds.source))
        y = np.array([names.index(s) for s in ds.source])
        keep = _subsample(y, np.random.default_rng(SEED))
        X, y = ds.X[keep], y[keep]
        results.append(
            {
                "group": group,
                "sources": {
                    n.rsplit("/", 1)[-1]: int(np.sum(y == i))
                    for i, n in enumerate(names)
                },
                "chance": round(1 / len(names), 4),
                "balanced_accuracy_structural": round(
                    probe_sources(X, y, structured), 4
                ),
                "balanced_accuracy_structural_learned": round(
                    probe_sources(X, y, learned), 4
                ),
                "balanced_accuracy_all_features": round(
                    probe_sources(X, y, everything), 4
                ),
            }
        )
    for row in results:
        if as_json:
            print(json.dumps(row))
        else:
            print(
                f"{row['group']}: {row['sources']}\n  chance {row['chance']}, "
                f"structural features {row['balanced_accuracy_structural']} "
                f"(those the model may learn: "
                f"{row['balanced_accuracy_structural_learned']}), "
                f"all features {row['balanced_accuracy_all_features']}"
            )
    return 0
