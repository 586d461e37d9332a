"""Model selection on the training part only: left-out ham x later phish.

Every choice of the bundled model (features, parameters, HTML-twin share,
rounds) is compared here, never on the test part. One validation run trains
one model per training ham source, each without that source *and* without
the validation phish (the latest phish in the training part, by default
phishing_pot 2023, so the models see phish up to 2022 only):

* the left-out ham scores, pooled, give thresholds at 0.1 %, 0.5 % and 1 %
  false positives, as ``phishgate train`` chooses them;
* the validation phish, scored by every fold model (mean score), give the
  recall at those thresholds and the ROC-AUC against the pooled ham.

So a setting is judged on ham from a source it never saw and on phish from a
later year than any it learnt from, the two ways the test part differs.

    python -m phishgate.training.select CORPORA_DIR \\
        --config '{}' --config '{"rounds": 500}'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from phishgate.daemon.model import CLASSES, PHISH

from .dataset import CorpusSpec, Dataset, load_corpora
from .metrics import roc_auc, smoothed_threshold
from .train import PARAMS, TrainConfig, fit

__all__ = ["TRAINING_FILES", "validate"]

# The training part of scripts/train-default-model.sh, as (file, label).
TRAINING_FILES: tuple[tuple[str, str], ...] = (
    ("phish-nazario-20051114.mbox.gz", "phish"),
    ("phish-nazario-phishing0.mbox.gz", "phish"),
    ("phish-nazario-phishing1.mbox.gz", "phish"),
    ("phish-phishingpot-2019-2022-and-undated.tar.gz", "phish"),
    ("phish-phishingpot-2023.tar.gz", "phish"),
    ("ham-spamassassin-easy_ham.tar.gz", "ham"),
    ("ham-spamassassin-easy_ham_2.tar.gz", "ham"),
    ("ham-trec07p-2007.tar.gz", "ham"),
    ("ham-lore-openbmc-2019-2026.tar.gz", "ham"),
    ("ham-lore-open-iscsi-2019-2026.tar.gz", "ham"),
    ("spam-spamassassin-spam.tar.gz", "spam"),
    ("spam-trec07p-2007.tar.gz", "spam"),
)
VALIDATION_PHISH = "phish-phishingpot-2023"
FPRS = (0.001, 0.005, 0.01)


def validate(ds: Dataset, config: TrainConfig, val_phish: str) -> dict[str, Any]:
    """Figures of one setting on *ds* (the training part, twins included)."""
    names = np.array([Path(s).name for s in ds.source])
    later = np.char.startswith(names, val_phish) & (ds.y == PHISH)
    ham = CLASSES.index("ham")
    ham_scores, phish_scores, per_source = [], [], {}
    for source in sorted(set(names[ds.y == ham])):
        held = names == source
        booster = fit(ds.subset(~held & ~later), config, label=f"fold {source}")
        scores = np.asarray(booster.predict(ds.X[held | later]))[:, PHISH]
        in_held = held[held | later]
        ham_scores.append(scores[in_held])
        phish_scores.append(scores[~in_held])
        per_source[source] = scores[in_held]
    pooled = np.concatenate(ham_scores)
    phish = np.mean(phish_scores, axis=0)
    out: dict[str, Any] = {"roc_auc": round(roc_auc(phish, pooled), 4)}
    for fpr in FPRS:
        threshold = smoothed_threshold(pooled, fpr)
        out[f"recall_at_{fpr:g}"] = round(float(np.mean(phish >= threshold)), 4)
        out[f"ham_fpr_at_{fpr:g}"] = {
            name: round(float(np.mean(s >= threshold)), 4)
            for name, s in per_source.items()
        }
    out["n"] = {"ham": len(pooled), "validation_phish": len(phish)}
    return out


def _config(overrides: dict[str, Any]) -> TrainConfig:
    params = dict(PARAMS, **overrides.pop("params", {}))
    return TrainConfig(params=params, **overrides)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("corpora", type=Path)
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        help="JSON TrainConfig overrides, 'params' merged into PARAMS "
        "(repeatable; one validation each; the HTML-twin share must be the "
        "same for all)",
    )
    parser.add_argument("--validation-phish", default=VALIDATION_PHISH)
    args = parser.parse_args(argv)
    overrides = [json.loads(c) for c in args.config or ["{}"]]
    configs = [_config(dict(o)) for o in overrides]
    shares = {c.augment_html for c in configs}
    if len(shares) != 1:
        parser.error("one HTML-twin share per run (the rows depend on it)")
    specs = [CorpusSpec(str(args.corpora / f), label) for f, label in TRAINING_FILES]
    ds = load_corpora(specs, augment_html=shares.pop())
    for given, config in zip(overrides, configs, strict=True):
        result = validate(ds, config, args.validation_phish)
        print(json.dumps({"config": given, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
