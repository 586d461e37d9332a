"""The model file format, its checks, and the path explainer."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mailfactory import as_bytes, phish, plain
from phishgate.daemon.features import SCHEMA_VERSION
from phishgate.daemon.model import PHISH, Model, ModelError, default_model_dir
from phishgate.daemon.scanner import Scanner


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(default_model_dir(), target)
    return target


def test_bundled_model_loads_with_thresholds() -> None:
    """The bundled model loads, matches the schema and has ordered thresholds."""
    model = Model.load()
    assert model.meta["schema_version"] == SCHEMA_VERSION
    t = model.thresholds
    assert 0 < t.tag <= t.quarantine <= t.reject <= 1


def test_tampered_model_file_is_refused(model_copy: Path) -> None:
    """A model.txt that does not match its recorded checksum is refused."""
    with (model_copy / "model.txt").open("a") as fh:
        fh.write("\n")
    with pytest.raises(ModelError, match="checksum"):
        Model.load(model_copy)


def test_other_schema_is_refused(model_copy: Path) -> None:
    """A model trained for another feature schema is refused, naming both."""
    meta = json.loads((model_copy / "meta.json").read_text())
    meta["schema_version"] = SCHEMA_VERSION + 1
    (model_copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="schema"):
        Model.load(model_copy)


def test_missing_or_garbage_meta_is_refused(model_copy: Path) -> None:
    """No meta.json, or not JSON, gives a ModelError, not a traceback."""
    (model_copy / "meta.json").write_text("{not json")
    with pytest.raises(ModelError):
        Model.load(model_copy)
    (model_copy / "meta.json").unlink()
    with pytest.raises(ModelError):
        Model.load(model_copy)


def test_path_contributions_add_up_to_the_raw_score() -> None:
    """Per-feature contributions plus the tree roots equal the phish margin."""
    model = Model.load()
    scanner = Scanner(model)
    dump = model.booster.dump_model()
    roots = sum(
        tree["tree_structure"].get(
            "internal_value", tree["tree_structure"].get("leaf_value", 0.0)
        )
        for index, tree in enumerate(dump["tree_info"])
        if index % 3 == PHISH
    )
    for raw in (as_bytes(phish()), as_bytes(plain())):
        x = scanner.features(raw).values.reshape(1, -1).astype(np.float64)
        leaves = model.booster.predict(x, pred_leaf=True)[0]
        margin = model.booster.predict(x, raw_score=True)[0][PHISH]
        contrib = model.explainer.contributions(np.asarray(leaves))
        assert contrib.sum() + roots == pytest.approx(margin, abs=1e-6)


def test_bundled_model_passes_the_canary() -> None:
    """The shipped canary set is scored right by the bundled model."""
    from phishgate.daemon.canary import canary_failures, canary_messages

    assert len(canary_messages()) >= 10
    assert canary_failures(Scanner(Model.load())) == []


def test_canary_catches_a_model_that_flags_everything(model_copy: Path) -> None:
    """A model whose thresholds call all mail phish fails the canary."""
    from phishgate.daemon.canary import canary_failures

    meta = json.loads((model_copy / "meta.json").read_text())
    meta["thresholds"] = {"tag": 1e-9, "quarantine": 1e-9, "reject": 1e-9}
    (model_copy / "meta.json").write_text(json.dumps(meta))
    failures = canary_failures(Scanner(Model.load(model_copy)))
    assert failures and all("ham scored" in f for f in failures)


def test_explainer_reads_trees_that_could_not_split() -> None:
    """Single-leaf trees (as continued training makes) explain as nothing."""
    import lightgbm as lgb
    from phishgate.daemon.model import PathExplainer

    rng = np.random.default_rng(1)
    x = rng.random((60, 4))
    y = np.arange(60) % 3
    params = {"objective": "multiclass", "num_class": 3, "verbose": -1}
    stumps = lgb.train(
        {**params, "min_data_in_leaf": 1000}, lgb.Dataset(x, y), num_boost_round=2
    )
    grown = lgb.train(
        {**params, "min_data_in_leaf": 2},
        lgb.Dataset(x, y),
        num_boost_round=3,
        init_model=stumps,
    )
    explainer = PathExplainer(grown.model_to_string(), 4, 3, PHISH)
    leaves = np.asarray(grown.predict(x[:5], pred_leaf=True))
    margins = np.asarray(grown.predict(x[:5], raw_score=True))[:, PHISH]
    dump = grown.dump_model()["tree_info"]
    roots = sum(
        t["tree_structure"].get("internal_value", t["tree_structure"].get("leaf_value"))
        for i, t in enumerate(dump)
        if i % 3 == PHISH
    )
    assert any(t["num_leaves"] == 1 for t in dump)
    assert any(t["num_leaves"] > 1 for t in dump)
    assert len(explainer.trees) == len(dump) // 3
    for row, margin in zip(leaves, margins, strict=True):
        contrib = explainer.contributions(row)
        assert contrib.sum() + roots == pytest.approx(margin, abs=1e-9)


def test_every_feature_has_reason_wording() -> None:
    """A reason never falls back to a raw feature name."""
    from phishgate.daemon.features import FEATURE_NAMES
    from phishgate.daemon.model import REASON_TEXT, reason_family

    assert {reason_family(n) for n in FEATURE_NAMES} - set(REASON_TEXT) == set()


def test_scanning_calls_lightgbm_without_its_python_package() -> None:
    """Load and scan in a fresh interpreter: neither lightgbm nor SciPy imported.

    The C library gives the same probabilities as LightGBM's own Booster.
    """
    probe = (
        "import sys\n"
        "from phishgate.daemon.model import Model\n"
        "from phishgate.daemon.scanner import Scanner\n"
        "verdict = Scanner(Model.load()).scan(sys.stdin.buffer.read()).verdict\n"
        "print(verdict.phish, 'lightgbm' in sys.modules, 'scipy' in sys.modules)\n"
    )
    raw = as_bytes(phish())
    done = subprocess.run(
        [sys.executable, "-c", probe], input=raw, capture_output=True, check=True
    )
    phish_score, lightgbm_loaded, scipy_loaded = done.stdout.split()
    assert (lightgbm_loaded, scipy_loaded) == (b"False", b"False")
    model = Model.load()
    x = Scanner(model).features(raw).values.reshape(1, -1).astype(np.float64)
    assert float(phish_score) == pytest.approx(model.booster.predict(x)[0][PHISH])


def test_a_model_text_lightgbm_cannot_read_is_refused(model_copy: Path) -> None:
    """Garbage with a matching checksum: LightGBM's own error, as a ModelError."""
    garbage = b"tree\nversion=v4\nnum_class=three\n"
    (model_copy / "model.txt").write_bytes(garbage)
    meta = json.loads((model_copy / "meta.json").read_text())
    meta["model_sha256"] = hashlib.sha256(garbage).hexdigest()
    (model_copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"model\.txt: "):
        Model.load(model_copy)
