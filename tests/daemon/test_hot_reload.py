"""Hot reload: the running daemon follows the models directory without a restart."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from phishgate.daemon.model import default_model_dir
from phishgate.daemon.models_dir import ACTIVE_FILE, models_dir
from postfixlab import free_ports, wait_for
from serve_process import ServeProcess

NEW_VERSION = "2099-01-01T00-00-00Z-hotswap1"


@pytest.fixture
def daemon() -> Iterator[ServeProcess]:
    (milter_port,) = free_ports(1)
    with ServeProcess(milter_port) as serve:  # entering starts it
        yield serve


def _publish_copy(state_dir: Path, version: str) -> Path:
    """A valid second model: the bundled one under another version name."""
    target = models_dir(state_dir) / version
    shutil.copytree(default_model_dir(), target)
    meta = json.loads((target / "meta.json").read_text())
    meta["version"] = version
    (target / "meta.json").write_text(json.dumps(meta))
    return target


def _served_version(serve: ServeProcess) -> str:
    versions = [
        dict(labels)["version"]
        for (name, labels), value in serve.metrics().items()
        if name == "phishgate_model_info" and value == 1
    ]
    return versions[0] if len(versions) == 1 else ""


def test_activate_swaps_the_served_model(daemon: ServeProcess) -> None:
    """`phishgate model activate` is picked up by the daemon's watcher, no restart."""
    bundled = _served_version(daemon)
    _publish_copy(daemon.state_dir, NEW_VERSION)
    daemon.run_cli("model", "activate", NEW_VERSION)
    wait_for(lambda: _served_version(daemon) == NEW_VERSION, 20, "new model served")
    daemon.run_cli("model", "rollback")
    wait_for(lambda: _served_version(daemon) == bundled, 20, "bundled model again")
    assert daemon.metric("phishgate_model_reloads_total", result="ok") == 2


def test_corrupt_model_pointer_is_refused(daemon: ServeProcess) -> None:
    """A pointer to a broken model is refused on reload; the old model keeps serving."""
    bundled = _served_version(daemon)
    broken = _publish_copy(daemon.state_dir, "broken-1")
    (broken / "model.txt").write_text("not a model\n")
    (models_dir(daemon.state_dir) / ACTIVE_FILE).write_text("broken-1\n")
    daemon.wait_log("reload refused")
    assert _served_version(daemon) == bundled
    assert daemon.metric("phishgate_config_reloads_total", result="refused") >= 1
    assert daemon.metric("phishgate_model_reloads_total", result="refused") >= 1
