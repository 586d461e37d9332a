"""Training on a small generated fixture set: the model must learn.

The fixture messages are generated from word pools with a fixed seed, so the
test needs no corpus. A model trained on them must rank held-out phish above
held-out ham; the same pipeline with shuffled labels must not, which shows
the figure comes from the features and not from the harness.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
from mailfactory import as_bytes, html, plain
from phishgate.daemon.drift import DRIFT_FEATURE_NAMES
from phishgate.daemon.model import MODEL_FILE, Model, default_model_dir
from phishgate.daemon.scanner import Scanner
from phishgate.training.dataset import CorpusSpec, load_corpora
from phishgate.training.metrics import roc_auc, threshold_at_fpr
from phishgate.training.select import validate
from phishgate.training.train import (
    TrainConfig,
    excluded_features,
    fit,
    pick_thresholds,
    refresh_feature_references,
    train_and_write,
)

HAM_WORDS = [
    "meeting",
    "agenda",
    "patch",
    "review",
    "kernel",
    "build",
    "minutes",
    "lunch",
    "project",
    "schedule",
    "release",
    "notes",
    "thanks",
    "draft",
    "report",
    "budget",
    "team",
    "update",
    "tomorrow",
    "friday",
]
PHISH_WORDS = [
    "verify",
    "account",
    "suspended",
    "password",
    "urgent",
    "immediately",
    "confirm",
    "login",
    "security",
    "unusual",
    "activity",
    "invoice",
    "payment",
    "locked",
    "restore",
    "access",
]
BRANDS = ("paypal", "microsoft", "netflix", "amazon", "docusign")


def _ham(rng: random.Random, i: int) -> bytes:
    words = " ".join(rng.choice(HAM_WORDS) for _ in range(rng.randint(20, 80)))
    user = rng.choice(("ann", "bob", "eve", "joe"))
    msg = plain(
        f"Hi,\n\n{words}.\n\nSee https://wiki.example.org/page/{i}\n\n-- \n{user}\n",
        subject=" ".join(rng.choice(HAM_WORDS) for _ in range(4)),
        sender=f"{user.title()} <{user}@example.org>",
        msgid=f"<ham{i}.{rng.randint(0, 10**9)}@example.org>",
    )
    return as_bytes(msg)


def _phish(rng: random.Random, i: int) -> bytes:
    brand = rng.choice(BRANDS)
    words = " ".join(rng.choice(PHISH_WORDS) for _ in range(rng.randint(15, 50)))
    host = f"{brand}-{rng.randint(100, 999)}.example-login.top"
    body = (
        f"<p>Dear customer, {words}</p>"
        f'<p><a href="http://{host}/verify">https://www.{brand}.com/account</a></p>'
    )
    if rng.random() < 0.5:
        body += f'<form action="http://{host}/p"><input type="password"></form>'
    msg = html(
        body,
        text_body=None,
        subject=f"{brand.title()}: {rng.choice(PHISH_WORDS)} {rng.choice(PHISH_WORDS)}",
        sender=f"{brand.title()} Support <no-reply@{host}>",
        msgid=f"<p{i}.{rng.randint(0, 10**9)}@{host}>",
    )
    return as_bytes(msg)


def _spam(rng: random.Random, i: int) -> bytes:
    offer = rng.choice(("cheap watches", "best pills", "casino bonus", "seo services"))
    msg = html(
        f"<h1>{offer.upper()}</h1><p>Buy now {offer}! Unsubscribe below.</p>"
        f'<a href="http://shop{i}.example.biz/">shop</a>',
        subject=f"{offer} {rng.randint(10, 99)}% off",
        sender=f"Deals <deals@shop{i}.example.biz>",
        msgid=f"<s{i}.{rng.randint(0, 10**9)}@shop.example.biz>",
    )
    return as_bytes(msg)


def _write(folder: Path, make: object, n: int, seed: int) -> Path:
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    for i in range(n):
        (folder / f"{i}.eml").write_bytes(make(rng, i))  # type: ignore[operator]
    return folder


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpora")
    return {
        "ham": _write(root / "ham", _ham, 120, 1),
        "phish": _write(root / "phish", _phish, 120, 2),
        "spam": _write(root / "spam", _spam, 60, 3),
        "ham_test": _write(root / "ham_test", _ham, 60, 11),
        "phish_test": _write(root / "phish_test", _phish, 60, 12),
    }


def _train_specs(c: dict[str, Path]) -> list[CorpusSpec]:
    return [
        CorpusSpec(str(c["ham"]), "ham"),
        CorpusSpec(str(c["phish"]), "phish"),
        CorpusSpec(str(c["spam"]), "spam"),
    ]


def test_model_learns_and_is_written(corpora: dict[str, Path], tmp_path: Path) -> None:
    """A trained model separates held-out fixtures and loads for scanning."""
    out = tmp_path / "model"
    test_specs = [
        CorpusSpec(str(corpora["ham_test"]), "ham"),
        CorpusSpec(str(corpora["phish_test"]), "phish"),
    ]
    config = TrainConfig(
        rounds=40, choose_thresholds=False, augment_html=0.3, threads=1
    )
    meta = train_and_write(
        _train_specs(corpora), test_specs, out, config, progress=lambda _: None
    )
    assert meta["evaluation"]["roc_auc_phish_vs_rest"] >= 0.98
    assert meta["evaluation"]["per_class"]["phish"]["recall"] >= 0.9
    stored = json.loads((out / "meta.json").read_text())
    assert stored["version"] == meta["version"]
    assert {s["file"] for s in stored["training"]["sources"]} == {
        "ham",
        "phish",
        "spam",
    }
    scanner = Scanner(Model.load(out))
    phish = scanner.scan((corpora["phish_test"] / "0.eml").read_bytes())
    ham = scanner.scan((corpora["ham_test"] / "0.eml").read_bytes())
    assert phish.verdict.phish > ham.verdict.phish
    assert phish.verdict.reasons


def test_drift_references_are_written_and_rebuilt(
    corpora: dict[str, Path], tmp_path: Path
) -> None:
    """Training stores the fixed features' shares; the same corpora rebuild them."""
    out = tmp_path / "model"
    config = TrainConfig(rounds=5, choose_thresholds=False, augment_html=0.3)
    meta = train_and_write(
        _train_specs(corpora), [], out, config, progress=lambda _: None
    )
    written = meta["reference"]["features"]
    assert list(written) == list(DRIFT_FEATURE_NAMES)
    assert written["html_present"]["n"] == 300

    stored = json.loads((out / "meta.json").read_text())
    del stored["reference"]["features"]
    (out / "meta.json").write_text(json.dumps(stored))
    rebuilt = refresh_feature_references(_train_specs(corpora), out, lambda _: None)
    assert rebuilt["reference"]["features"] == written
    assert Model.load(out).version == meta["version"]  # checksum still holds

    with pytest.raises(ValueError, match="other training rows"):
        refresh_feature_references(_train_specs(corpora)[:2], out, lambda _: None)


def test_shuffled_labels_learn_nothing(corpora: dict[str, Path]) -> None:
    """With labels shuffled, held-out AUC falls to chance: the harness adds nothing."""
    train = load_corpora(_train_specs(corpora), progress=False, workers=1)
    test = load_corpora(
        [
            CorpusSpec(str(corpora["ham_test"]), "ham"),
            CorpusSpec(str(corpora["phish_test"]), "phish"),
        ],
        progress=False,
        workers=1,
    )
    train.y = np.random.default_rng(0).permutation(train.y)
    booster = fit(train, TrainConfig(rounds=40, threads=1), label="shuffled")
    scores = np.asarray(booster.predict(test.X))[:, 2]
    auc = roc_auc(scores[test.y == 2], scores[test.y == 0])
    assert 0.2 < auc < 0.8


def test_duplicates_are_dropped_across_corpora(
    corpora: dict[str, Path], tmp_path: Path
) -> None:
    """The same message in two corpora is kept once (by Message-ID and body)."""
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "dup.eml").write_bytes((corpora["ham"] / "0.eml").read_bytes())
    ds = load_corpora(
        [CorpusSpec(str(corpora["ham"]), "ham"), CorpusSpec(str(copy), "ham")],
        progress=False,
        workers=1,
    )
    assert len(ds.y) == 120
    assert ds.stats[str(copy)]["duplicate"] == 1


def test_threshold_at_fpr() -> None:
    """The threshold lets through at most the asked share of ham."""
    ham = np.linspace(0, 1, 1000, endpoint=False)
    t = threshold_at_fpr(ham, 0.01)
    assert np.mean(ham >= t) <= 0.01
    assert np.mean(ham >= np.nextafter(t, 0) - 0.002) > 0.01


def test_thresholds_follow_the_policy() -> None:
    """Tag passes 1 %, quarantine 0.5 % of left-out ham; reject sits above it all."""
    ham = np.random.default_rng(3).beta(1.0, 6.0, 20_000)
    thresholds = pick_thresholds(ham)
    assert np.mean(ham >= thresholds["tag"]) == pytest.approx(0.01, abs=0.002)
    assert np.mean(ham >= thresholds["quarantine"]) == pytest.approx(0.005, abs=0.001)
    assert thresholds["reject"] >= round(float(ham.max()), 6)


def test_bundled_model_never_splits_on_excluded_features() -> None:
    """The shipped trees use none of the columns training must not learn from."""
    booster = lgb.Booster(model_file=str(default_model_dir() / MODEL_FILE))
    splits = dict(
        zip(booster.feature_name(), booster.feature_importance(), strict=True)
    )
    assert {name for name in excluded_features() if splits[name]} == set()
    assert {"html_present", "url_http_frac"} <= set(excluded_features())


def test_roc_auc_known_values() -> None:
    """AUC is 1 for perfect ranking, 0.5 for ties, 0 for inverted."""
    assert roc_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert roc_auc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5
    assert roc_auc(np.array([0.0]), np.array([1.0])) == 0.0


def test_selection_validates_on_left_out_ham_and_later_phish(
    corpora: dict[str, Path],
) -> None:
    """Model selection scores each ham source and the later phish out of fold."""
    specs = [
        *_train_specs(corpora),
        CorpusSpec(str(corpora["ham_test"]), "ham"),
        CorpusSpec(str(corpora["phish_test"]), "phish"),
    ]
    ds = load_corpora(specs, progress=False, workers=1)
    config = TrainConfig(rounds=20, augment_html=0.0, threads=1)
    result = validate(ds, config, val_phish="phish_test")
    assert result["n"] == {"ham": 180, "validation_phish": 60}
    assert set(result["ham_fpr_at_0.005"]) == {"ham", "ham_test"}
    assert result["roc_auc"] >= 0.95
    assert 0.0 <= result["recall_at_0.001"] <= result["recall_at_0.01"] <= 1.0
