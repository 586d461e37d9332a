"""The installer into a temporary root, the unit files, the Postfix snippets."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from phishgate.daemon.config import load_config, parse_config
from phishgate.daemon.install import install_systemd, next_steps, postfix_snippet


def test_install_into_a_root_writes_only_there(tmp_path: Path) -> None:
    """Units with this venv's phishgate and a valid config, all under --root."""
    done = install_systemd(tmp_path, executable="/venv/bin/phishgate")
    unit = (tmp_path / "etc/systemd/system/phishgate.service").read_text()
    assert "ExecStart=/venv/bin/phishgate serve" in unit
    assert "Type=notify" in unit and "ProtectSystem=strict" in unit
    config = tmp_path / "etc/phishgate/phishgate.toml"
    assert load_config(config).milter.listen == "inet:127.0.0.1:8895"
    assert all(str(tmp_path) in line for line in done)


def test_installed_config_names_the_units_state_directory(tmp_path: Path) -> None:
    """Commands run from a shell use the daemon's store, not ~/.local/state."""
    install_systemd(tmp_path, executable="/venv/bin/phishgate")
    config = load_config(tmp_path / "etc/phishgate/phishgate.toml")
    unit = (tmp_path / "etc/systemd/system/phishgate.service").read_text()
    assert "StateDirectory=phishgate" in unit
    assert config.state_dir == Path("/var/lib/phishgate")


@pytest.mark.parametrize(
    "name",
    ["phishgate.service", "phishgate-retrain.service", "phishgate-retrain.timer"],
)
def test_packaged_units_match_the_systemd_folder(name: str) -> None:
    """The copies the installer ships are the unit files in systemd/."""
    repo = Path(__file__).resolve().parents[2]
    shipped = repo / "daemon/data" / name
    assert shipped.read_text() == (repo / "systemd" / name).read_text()


def test_install_keeps_an_existing_config(tmp_path: Path) -> None:
    """An admin's configuration is never overwritten."""
    config = tmp_path / "etc/phishgate/phishgate.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[milter]\nlisten = "unix:/run/phishgate/milter.sock"\n')
    install_systemd(tmp_path, executable="/venv/bin/phishgate")
    assert "unix:" in config.read_text()


def test_next_steps_follow_the_installed_config(tmp_path: Path) -> None:
    """The Postfix lines printed after installing name the configured socket."""
    config = tmp_path / "etc/phishgate/phishgate.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[milter]\nlisten = "unix:/run/phishgate/milter.sock"\n')
    install_systemd(tmp_path, executable="/venv/bin/phishgate")
    steps = next_steps(tmp_path)
    assert "smtpd_milters = unix:/run/phishgate/milter.sock" in steps
    assert "systemctl restart postfix" in steps


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="no systemd-analyze"
)
def test_unit_files_verify(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the service, retrain service and timer."""
    exe = tmp_path / "phishgate"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    install_systemd(tmp_path, executable=str(exe))
    units = tmp_path / "etc/systemd/system"
    names = [
        "phishgate.service",
        "phishgate-retrain.service",
        "phishgate-retrain.timer",
    ]
    proc = subprocess.run(
        ["systemd-analyze", "verify", *(str(units / n) for n in names)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    retrain = (units / "phishgate-retrain.service").read_text()
    assert f"ExecStart={exe} retrain" in retrain


def test_snippets_follow_the_config() -> None:
    """The milter and content-filter lines name the configured ports."""
    config = parse_config(
        '[milter]\nlisten = "inet:127.0.0.1:9999"\n'
        '[proxy]\nlisten = "127.0.0.1:11025"\nreinject = "127.0.0.1:11026"\n',
        "t",
    )
    milter = postfix_snippet(config, "milter")
    assert "smtpd_milters = inet:127.0.0.1:9999" in milter
    assert "127.0.0.1:11026 inet  n  -  n  -  10  smtpd" in milter  # its own mail
    assert "content_filter = " not in milter.replace("-o content_filter=", "")
    content = postfix_snippet(config, "content-filter")
    assert "content_filter = phishgate:[127.0.0.1]:11025" in content
    assert "phishgate unix  -       -       n       -       10      lmtp" in content
    assert "127.0.0.1:11026 inet" in content
