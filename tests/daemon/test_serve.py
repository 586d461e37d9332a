"""``phishgate serve`` helpers that need no running daemon: logging, reload checks."""

from __future__ import annotations

import json
import logging
import socket
import sys
from pathlib import Path

import pytest
from phishgate.daemon.config import ConfigError, parse_config
from phishgate.daemon.serve import JsonFormatter, _check_reloadable, run


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    """A log record as a logger would make it, optionally with a traceback."""
    exc_info = None
    if exc:
        try:
            raise ValueError('bad "value"')
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord(
        "phishgate.test", logging.ERROR, __file__, 1, message, args, exc_info
    )


def test_json_log_lines_stay_json() -> None:
    """Quotes, newlines and tracebacks in a message still give one JSON object."""
    line = JsonFormatter().format(record('subject "%s"\nnext', 'x"y', exc=True))

    entry = json.loads(line)
    assert "\n" not in line
    assert entry["message"] == 'subject "x"y"\nnext'
    assert entry["level"] == "ERROR" and entry["logger"] == "phishgate.test"
    assert 'ValueError: bad "value"' in entry["exception"]


def test_reload_refuses_restart_only_keys() -> None:
    """Changed listeners, milter limits or state_dir need a restart, by name."""
    old = parse_config("", "old")
    new = parse_config(
        '[milter]\nprogress_interval_s = 1.0\n[storage]\nstate_dir = "/tmp/x"\n', "new"
    )
    with pytest.raises(ConfigError) as refused:
        _check_reloadable(old, new)

    assert str(refused.value) == (
        "milter.progress_interval_s, storage.state_dir changed: "
        "restart phishgate to apply"
    )


def test_reload_accepts_policy_changes() -> None:
    """Policy, lists and model changes apply on reload."""
    old = parse_config("", "old")
    new = parse_config(
        '[policy]\nsubject_tag = "[X] "\n[lists]\nblock_senders = ["a@b.test"]', "new"
    )
    _check_reloadable(old, new)


def test_bad_config_one_line_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad config stops serve with status 1 and one stderr line naming the key."""
    path = tmp_path / "bad.toml"
    path.write_text('[policy]\non_error = "drop"\n')

    assert run(str(path)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "policy.on_error" in err


def test_a_taken_address_is_named(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A listener that cannot bind stops serve with status 1, naming its key
    and address (not only "Address already in use")."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "phishgate.toml"
        path.write_text(
            "[daemon]\nworkers = 1\n"
            f'[milter]\nlisten = "inet:127.0.0.1:{port}"\n'
            '[proxy]\nlisten = ""\n[metrics]\nlisten = ""\n'
            f'[storage]\nstate_dir = "{tmp_path / "state"}"\n'
        )
        assert run(str(path)) == 1
    err = capfd.readouterr().err
    assert f"milter.listen = 'inet:127.0.0.1:{port}'" in err
    assert "address already in use" in err.lower()
