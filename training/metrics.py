"""Evaluation figures, each reported beside a trivial baseline.

Written with NumPy only: the figures are few and well defined, and a
scikit-learn dependency would weigh more than this module.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from phishgate.daemon.model import CLASSES, PHISH

__all__ = ["evaluate_scores", "roc_auc", "smoothed_threshold", "threshold_at_fpr"]


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum statistic (ties count half)."""
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    scores = np.concatenate([positive, negative])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    # average ranks over ties
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts, strict=True):
        if count > 1:
            ranks[order[start : start + count]] = start + (count + 1) / 2
    rank_sum = ranks[: len(positive)].sum()
    n_pos, n_neg = len(positive), len(negative)
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def threshold_at_fpr(ham_scores: np.ndarray, fpr: float) -> float:
    """Lowest threshold at which at most *fpr* of ham scores reach it."""
    if len(ham_scores) == 0:
        return 0.5
    ordered = np.sort(ham_scores)[::-1]
    allowed = int(np.floor(fpr * len(ordered)))
    if allowed >= len(ordered):
        return float(ordered[-1])
    # the threshold must sit above the (allowed+1)-th highest ham score
    return float(np.nextafter(ordered[allowed], 1.0))


def smoothed_threshold(ham_scores: np.ndarray, fpr: float) -> float:
    """Threshold at *fpr*, from a rank-smoothed upper quantile of the ham scores.

    With 0.1 % of ten thousand ham, the plain empirical threshold rests on the
    tenth-highest score alone and jumps with every fold. Here the order
    statistics around the target rank are averaged with Gaussian weights
    whose width is the binomial spread of that rank (in the spirit of the
    Harrell-Davis estimator), on the logit scale where the tail is smooth.
    """
    if len(ham_scores) == 0:
        return 0.5
    eps = 1e-7
    ordered = np.sort(np.clip(ham_scores, eps, 1 - eps))[::-1]
    logits = np.log(ordered / (1 - ordered))
    n = len(ordered)
    target = fpr * n
    spread = max(1.0, float(np.sqrt(n * fpr * (1 - fpr))))
    ranks = np.arange(n) + 0.5
    weights = np.exp(-0.5 * ((ranks - target) / spread) ** 2)
    logit = float(np.sum(weights * logits) / np.sum(weights))
    return float(1 / (1 + np.exp(-logit)))


def _per_class(y: np.ndarray, pred: np.ndarray) -> dict[str, dict[str, float]]:
    out = {}
    for k, name in enumerate(CLASSES):
        tp = int(np.sum((pred == k) & (y == k)))
        fp = int(np.sum((pred == k) & (y != k)))
        fn = int(np.sum((pred != k) & (y == k)))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = (
            2 * precision * recall / (precision + recall) if precision + recall else 0.0
        )
        out[name] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": int(np.sum(y == k)),
        }
    return out


def _confusion(y: np.ndarray, pred: np.ndarray) -> list[list[int]]:
    return [[int(np.sum((y == t) & (pred == p))) for p in range(3)] for t in range(3)]


def _at_threshold(
    phish: np.ndarray, ham: np.ndarray, threshold: float
) -> dict[str, float]:
    return {
        "threshold": round(threshold, 6),
        "phish_recall": round(float(np.mean(phish >= threshold)), 4)
        if len(phish)
        else 0.0,
        "ham_fpr": round(float(np.mean(ham >= threshold)), 5) if len(ham) else 0.0,
    }


def evaluate_scores(
    y: np.ndarray,
    probs: np.ndarray,
    thresholds: dict[str, float],
    has_html: np.ndarray,
    baseline_score: np.ndarray,
) -> dict[str, Any]:
    """All figures for one labelled set; *baseline_score* is a trivial scorer."""
    pred = probs.argmax(axis=1)
    phish_score = probs[:, PHISH]
    is_phish, is_ham = y == PHISH, y == CLASSES.index("ham")
    majority = np.full_like(y, np.bincount(y, minlength=3).argmax())
    report: dict[str, Any] = {
        "n": {name: int(np.sum(y == k)) for k, name in enumerate(CLASSES)},
        "per_class": _per_class(y, pred),
        "confusion": {
            "rows_true_cols_pred": list(CLASSES),
            "matrix": _confusion(y, pred),
        },
        "roc_auc_phish_vs_rest": round(
            roc_auc(phish_score[is_phish], phish_score[~is_phish]), 5
        ),
        "at_model_thresholds": {
            name: _at_threshold(phish_score[is_phish], phish_score[is_ham], t)
            for name, t in thresholds.items()
        },
        "at_test_fpr": {
            f"{fpr:g}": _at_threshold(
                phish_score[is_phish],
                phish_score[is_ham],
                threshold_at_fpr(phish_score[is_ham], fpr),
            )
            for fpr in (0.001, 0.005, 0.01)
        },
        "html_ham_fpr_at_quarantine": round(
            float(np.mean(phish_score[is_ham & has_html] >= thresholds["quarantine"])),
            5,
        )
        if np.any(is_ham & has_html)
        else None,
        "html_ham_n": int(np.sum(is_ham & has_html)),
        "baseline": {
            "majority_class": _per_class(y, majority),
            "has_html_rule": {
                "roc_auc_phish_vs_rest": round(
                    roc_auc(baseline_score[is_phish], baseline_score[~is_phish]), 5
                ),
                "phish_recall": round(float(np.mean(baseline_score[is_phish] > 0)), 4),
                "ham_fpr": round(float(np.mean(baseline_score[is_ham] > 0)), 4),
            },
        },
    }
    return report
