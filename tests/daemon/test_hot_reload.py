"""Hot reload: the running daemon follows the models directory without a restart."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator

import pytest
from phishgate.daemon.models_dir import ACTIVE_FILE, models_dir
from postfixlab import free_ports, wait_for
from serve_process import ServeProcess, publish_model_copy, served_version

NEW_VERSION = "2099-01-01T00-00-00Z-hotswap1"


@pytest.fixture
def daemon() -> Iterator[ServeProcess]:
    (milter_port,) = free_ports(1)
    with ServeProcess(milter_port) as serve:  # entering starts it
        yield serve


def test_activate_swaps_the_served_model(daemon: ServeProcess) -> None:
    """`phishgate model activate` is picked up by the daemon's watcher, no restart."""
    bundled = served_version(daemon)
    publish_model_copy(daemon.state_dir, NEW_VERSION)
    daemon.run_cli("model", "activate", NEW_VERSION)
    wait_for(lambda: served_version(daemon) == NEW_VERSION, 20, "new model served")
    daemon.run_cli("model", "rollback")
    wait_for(lambda: served_version(daemon) == bundled, 20, "bundled model again")
    assert daemon.metric("phishgate_model_reloads_total", result="ok") == 2


def test_corrupt_model_pointer_is_refused(daemon: ServeProcess) -> None:
    """A pointer to a broken model is refused on reload; the old model keeps serving."""
    bundled = served_version(daemon)
    broken = publish_model_copy(daemon.state_dir, "broken-1")
    (broken / "model.txt").write_text("not a model\n")
    (models_dir(daemon.state_dir) / ACTIVE_FILE).write_text("broken-1\n")
    daemon.wait_log("reload refused")
    assert served_version(daemon) == bundled
    assert daemon.metric("phishgate_config_reloads_total", result="refused") >= 1
    assert daemon.metric("phishgate_model_reloads_total", result="refused") >= 1


def test_a_reload_recovers_workers_whose_model_broke_on_disk() -> None:
    """The served model's files break and its workers die: they cannot
    restart, and an in-place swap cannot reach them. A rollback still gets
    a working daemon: the reload starts new workers on the good model."""
    (milter_port,) = free_ports(1)
    with ServeProcess(milter_port, daemon={"workers": 2}) as daemon:
        bundled = served_version(daemon)
        served = publish_model_copy(daemon.state_dir, NEW_VERSION)
        daemon.run_cli("model", "activate", NEW_VERSION)
        wait_for(lambda: served_version(daemon) == NEW_VERSION, 30, "new model")
        (served / "model.txt").write_text("not a model\n")
        workers = _children(daemon.pid)
        assert len(workers) == 2
        for pid in workers:
            os.kill(int(pid), signal.SIGKILL)
        daemon.wait_log("could not start", timeout=30, count=2)

        daemon.run_cli("model", "rollback")

        wait_for(lambda: served_version(daemon) == bundled, 60, "bundled again")
        daemon.wait_log("scan worker processes ready", timeout=60, count=2)
        wait_for(lambda: len(_children(daemon.pid)) == 2, 30, "only the new workers")
        assert daemon.metric("phishgate_model_reloads_total", result="ok") == 2


def _children(pid: int) -> list[str]:
    return subprocess.run(
        ["pgrep", "-P", str(pid)], capture_output=True, text=True
    ).stdout.split()
