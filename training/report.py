"""Human-readable training and evaluation reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from phishgate.daemon.model import Model

from .dataset import CorpusSpec, load_corpora
from .metrics import evaluate_scores

__all__ = ["evaluate_model", "format_evaluation", "print_training_report"]


def format_evaluation(ev: dict[str, Any]) -> str:
    """A plain-text rendering of :func:`metrics.evaluate_scores` output."""
    lines = [f"messages: {ev['n']}"]
    lines.append("class   precision recall  f1      support   (majority baseline f1)")
    for name, row in ev["per_class"].items():
        base = ev["baseline"]["majority_class"][name]["f1"]
        lines.append(
            f"{name:<7} {row['precision']:<9} {row['recall']:<7} {row['f1']:<7} "
            f"{row['support']:<9} ({base})"
        )
    html_rule = ev["baseline"]["has_html_rule"]
    lines.append(
        f"ROC-AUC phish vs rest: {ev['roc_auc_phish_vs_rest']}  "
        f"(baseline 'has HTML' rule: {html_rule['roc_auc_phish_vs_rest']}, "
        f"recall {html_rule['phish_recall']} at ham FPR {html_rule['ham_fpr']})"
    )
    for name, row in ev["at_model_thresholds"].items():
        lines.append(
            f"model {name:<10} threshold {row['threshold']:<9}: phish recall "
            f"{row['phish_recall']}, ham FPR {row['ham_fpr']}"
        )
    for fpr, row in ev["at_test_fpr"].items():
        lines.append(
            f"at ham FPR {fpr:<6} (threshold set on this ham): "
            f"phish recall {row['phish_recall']}"
        )
    lines.append(
        f"HTML ham: {ev['html_ham_n']} messages, FPR at quarantine "
        f"{ev['html_ham_fpr_at_quarantine']}"
    )
    matrix = ev["confusion"]["matrix"]
    lines.append(
        "confusion (rows true ham/spam/phish, cols predicted): " + json.dumps(matrix)
    )
    return "\n".join(lines)


def print_training_report(meta: dict[str, Any], out: Path) -> None:
    print(f"model {meta['version']} written to {out}")
    print(f"training: {meta['training']['n']}")
    print(f"thresholds: {meta['thresholds']}")
    for name, row in (
        meta.get("validation", {}).get("leave_one_source_out_ham", {}).items()
    ):
        print(
            f"  left-out ham {name}: n={row['n']} FPR@0.5={row['fpr_at_0.5']} "
            f"p99={row['p99_score']}"
        )
    if meta.get("evaluation"):
        print("test part:")
        print(format_evaluation(meta["evaluation"]))
    print(
        "top features by gain: "
        + ", ".join(
            f"{f['feature']} {f['gain_share']:.3f}" for f in meta["top_features"][:12]
        )
    )
    print(f"time: {meta['timings']}")


def evaluate_model(model: Model, specs: list[CorpusSpec], *, as_json: bool) -> int:
    """``phishgate evaluate``: score labelled corpora with *model*."""
    ds = load_corpora(specs)
    if len(ds.y) == 0:
        print("phishgate: no messages read")
        return 1
    probs = model.probabilities(ds.X.astype(np.float64))
    thresholds = {
        "tag": model.thresholds.tag,
        "quarantine": model.thresholds.quarantine,
        "reject": model.thresholds.reject,
    }
    ev = evaluate_scores(
        ds.y, probs, thresholds, ds.has_html, ds.has_html.astype(np.float64)
    )
    ev["model_version"] = model.version
    if as_json:
        print(json.dumps(ev, indent=1))
    else:
        print(f"model {model.version}")
        print(format_evaluation(ev))
    return 0
