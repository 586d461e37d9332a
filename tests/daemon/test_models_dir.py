"""The live models directory: versions, the active pointer, activate, rollback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from phishgate.daemon import models_dir
from phishgate.daemon.cli import main
from phishgate.daemon.config import Config, ModelConfig, StorageConfig
from phishgate.daemon.model import Model, ModelError, default_model_dir
from phishgate.daemon.models_dir import BUNDLED, ModelsDirError

BUNDLED_VERSION = json.loads((default_model_dir() / "meta.json").read_text())["version"]


def _install_copy(state: Path) -> str:
    """Put a copy of the bundled model into the models directory as a version."""
    target = models_dir.models_dir(state) / BUNDLED_VERSION
    shutil.copytree(default_model_dir(), target)
    return BUNDLED_VERSION


def _config(state: Path, model_path: str = "") -> Config:
    return Config(
        storage=StorageConfig(state_dir=str(state)), model=ModelConfig(path=model_path)
    )


def test_fresh_state_serves_the_bundled_model(tmp_path: Path) -> None:
    """Without a pointer the bundled model is active and served."""
    versions = models_dir.list_versions(tmp_path)
    assert [(v.version, v.active) for v in versions] == [(BUNDLED, True)]
    assert versions[0].model_version == BUNDLED_VERSION
    assert models_dir.serving_model_dir(_config(tmp_path)) == default_model_dir()


def test_model_path_in_config_wins(tmp_path: Path) -> None:
    """A pinned ``[model] path`` is served whatever the pointer says."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "active").write_text("nosuchversion\n")
    config = _config(tmp_path, model_path="/opt/pinned")
    assert models_dir.serving_model_dir(config) == Path("/opt/pinned")


def test_activate_switches_the_pointer_and_rollback_returns(tmp_path: Path) -> None:
    """Activate writes the pointer and history; rollback goes back one step."""
    version = _install_copy(tmp_path)
    model = models_dir.activate(tmp_path, version)

    assert model.version == version
    assert (tmp_path / "models" / "active").read_text() == f"{version}\n"
    assert models_dir.serving_model_dir(_config(tmp_path)) == (
        tmp_path / "models" / version
    )
    assert [v.version for v in models_dir.list_versions(tmp_path) if v.active] == [
        version
    ]

    models_dir.rollback(tmp_path)
    assert models_dir.active_version(tmp_path) == BUNDLED
    with pytest.raises(ModelsDirError, match="roll back"):
        models_dir.rollback(tmp_path)
    assert not list((tmp_path / "models").glob(".active.tmp-*"))


def test_activate_refuses_a_corrupt_model(tmp_path: Path) -> None:
    """A model whose file does not match its checksum is refused; nothing moves."""
    version = _install_copy(tmp_path)
    model_file = tmp_path / "models" / version / "model.txt"
    model_file.write_text(model_file.read_text().replace("Tree=0", "Tree=00", 1))

    with pytest.raises(ModelError, match="checksum"):
        models_dir.activate(tmp_path, version)
    assert models_dir.active_version(tmp_path) == BUNDLED
    assert not (tmp_path / "models" / "active").exists()


@pytest.mark.parametrize("name", ["../etc", "active", "history", ".hidden", ""])
def test_bad_version_names_are_refused(tmp_path: Path, name: str) -> None:
    """Only plain folder names can be versions."""
    with pytest.raises(ModelsDirError, match="not a model version"):
        models_dir.activate(tmp_path, name)


def test_pointer_to_a_missing_version_is_an_error(tmp_path: Path) -> None:
    """The daemon is told clearly when the pointer names no folder."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "active").write_text("2026-01-01T00-00-00Z-deadbeef\n")
    with pytest.raises(ModelsDirError, match="phishgate model activate"):
        models_dir.serving_model_dir(_config(tmp_path))


def test_model_cli_list_json_and_activate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``model activate`` then ``model list --json`` marks the active version."""
    version = _install_copy(tmp_path)
    config = tmp_path / "phishgate.toml"
    config.write_text(f'[storage]\nstate_dir = "{tmp_path}"\n')

    assert main(["model", "activate", version, "--config", str(config)]) == 0
    assert main(["model", "list", "--json", "--config", str(config)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()[1:]]

    assert {r["version"]: r["active"] for r in rows} == {BUNDLED: False, version: True}
    assert all({"created", "gate", "decision"} <= set(r) for r in rows)
    assert main(["model", "rollback", "--config", str(config)]) == 0
    assert Model.load(models_dir.active_path(tmp_path)).version == BUNDLED_VERSION
