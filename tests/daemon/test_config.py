"""Configuration: defaults, the example file, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from phishgate.daemon.config import Config, ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "phishgate.example.toml"


def test_defaults_listen_on_loopback() -> None:
    """Built-in defaults: milter, proxy and metrics on 127.0.0.1."""
    config = Config()
    assert config.milter.listen == "inet:127.0.0.1:8895"
    assert config.proxy.listen.startswith("127.0.0.1:")
    assert config.metrics.listen.startswith("127.0.0.1:")


def test_example_file_is_valid_and_matches_defaults() -> None:
    """The documented example parses and documents the defaults exactly."""
    config = load_config(EXAMPLE)
    assert config.milter == Config().milter
    assert config.policy == Config().policy
    assert config.proxy == Config().proxy
    assert config.daemon == Config().daemon


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[milter]\nbogus = 1\n", "milter.bogus"),
        ("[nosuchsection]\n", "nosuchsection"),
        ('[milter]\nlisten = "tcp:1"\n', "milter.listen"),
        ("[policy]\nquarantine_at = 1.5\n", "policy.quarantine_at"),
        ('[policy]\nquarantine = "trash"\n', "policy.quarantine"),
        ('[policy]\nscan_timeout_s = "10"\n', "policy.scan_timeout_s"),
        ("[[policy.domains]]\ntag_at = 0.5\n", "policy.domains[0].domain"),
        ('[lists]\nallow_domains = "example.org"\n', "lists.allow_domains"),
        ('[proxy]\nreinject = "nohost"\n', "proxy.reinject"),
        ("[daemon]\nworkers = 0\n", "daemon.workers"),
        ('[daemon]\nworkers = "all"\n', "daemon.workers"),
        ("[daemon]\nworkers = 1.5\n", "daemon.workers"),
        ("[daemon]\nscan_processes = 2\n", "daemon.scan_processes: renamed"),
    ],
)
def test_errors_name_the_key(text: str, key: str) -> None:
    """Unknown keys and bad values are refused, naming the key."""
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_config(text, "test.toml")


def test_workers_take_a_number_or_auto() -> None:
    """[daemon] workers: "auto" by default, or a number of processes."""
    assert Config().daemon.workers == "auto"
    assert parse_config("[daemon]\nworkers = 4\n", "t").daemon.workers == 4
    assert parse_config('[daemon]\nworkers = "auto"\n', "t").daemon.workers == "auto"


def test_syntax_error_names_the_line() -> None:
    """A TOML syntax error says where."""
    with pytest.raises(ConfigError, match="line 2"):
        parse_config("[milter]\nlisten = \n", "test.toml")


def test_domain_overrides_parse() -> None:
    """Per-domain policy tables become typed, frozen objects."""
    config = parse_config(
        '[[policy.domains]]\ndomain = "example.org"\n'
        "quarantine_at = 0.8\nscan = false\n",
        "t",
    )
    (domain,) = config.policy.domains
    assert domain.domain == "example.org" and domain.quarantine_at == 0.8
    assert domain.scan is False


def test_check_config_command(tmp_path: Path) -> None:
    """check-config exits 0 on a good file and 1 with the key on a bad one."""
    good = subprocess.run(
        [sys.executable, "-m", "phishgate.daemon.cli", "check-config", str(EXAMPLE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert good.returncode == 0 and "OK" in good.stdout
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text("[metrics]\nlisten = 9775\n")
    bad = subprocess.run(
        [sys.executable, "-m", "phishgate.daemon.cli", "check-config", str(bad_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    assert "metrics.listen" in bad.stderr


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[drift]\nthreshold = 0\n", "drift.threshold"),
        ("[drift]\ninterval_s = -5\n", "drift.interval_s"),
        ("[drift]\nwindow_hours = 0\n", "drift.window_hours"),
        ("[drift]\nlabels_window_days = 0\n", "drift.labels_window_days"),
        ("[drift]\nretrain_cooldown_hours = -1\n", "drift.retrain_cooldown_hours"),
        ('[drift]\nretrain = "yes"\n', "drift.retrain"),
        ("[drift]\nwindow = 24\n", "drift.window"),
    ],
)
def test_drift_errors_name_the_key(text: str, key: str) -> None:
    """Impossible [drift] values and unknown keys are refused, naming the key."""
    with pytest.raises(ConfigError, match=key):
        parse_config(text, "test.toml")


def test_drift_section_parses_and_example_matches() -> None:
    """[drift] keys become typed values; the example documents the defaults."""
    config = parse_config(
        "[drift]\nthreshold = 0.3\nretrain = true\ninterval_s = 2\n", "t"
    )
    assert config.drift.threshold == 0.3 and config.drift.retrain is True
    assert config.drift.interval_s == 2.0
    assert load_config(EXAMPLE).drift == Config().drift
