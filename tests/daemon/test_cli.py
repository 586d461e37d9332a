"""``phishgate scan``: every PATH form, the JSON contract, exit statuses.

These run the installed console script in a subprocess, as an admin would,
against the bundled model.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from mailfactory import as_bytes, phish, plain

JSON_KEYS = {
    "source", "member", "message_id", "ham", "spam", "phish", "action",
    "reasons", "model_version", "scan_ms",
}  # fmt: skip
ACTIONS = {"accept", "tag", "quarantine", "reject"}


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "phishgate.daemon.cli", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


def records(proc: subprocess.CompletedProcess[bytes]) -> list[dict[str, object]]:
    return [json.loads(line) for line in proc.stdout.decode().splitlines() if line]


@pytest.fixture
def messages() -> list[bytes]:
    return [as_bytes(plain()), as_bytes(phish()), as_bytes(plain("Lunch on Friday?\n"))]


def test_single_file_human_output(tmp_path: Path, messages: list[bytes]) -> None:
    """One line with verdict, probability, action and reasons."""
    path = tmp_path / "one.eml"
    path.write_bytes(messages[1])
    proc = run("scan", str(path))
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.decode().strip()
    assert line.startswith(f"{path}: ")
    assert "phish=" in line and "action=" in line


def test_json_contract(tmp_path: Path, messages: list[bytes]) -> None:
    """Every JSON record carries the documented keys with sane values."""
    path = tmp_path / "one.eml"
    path.write_bytes(messages[1])
    (row,) = records(run("scan", "--json", str(path)))
    assert set(row) >= JSON_KEYS
    assert row["source"] == str(path) and row["member"] is None
    assert row["message_id"] == "<abc123@mailer.bulk-sender.ru>"
    total = float(row["ham"]) + float(row["spam"]) + float(row["phish"])  # type: ignore[arg-type]
    assert abs(total - 1.0) < 1e-3
    assert row["action"] in ACTIONS
    assert isinstance(row["reasons"], list) and all(
        isinstance(r, str) for r in row["reasons"]
    )
    assert float(row["scan_ms"]) > 0  # type: ignore[arg-type]


def test_phish_scores_above_ham(tmp_path: Path, messages: list[bytes]) -> None:
    """The bundled model ranks a crafted credential phish above plain office mail."""
    for i, raw in enumerate(messages):
        (tmp_path / f"{i}.eml").write_bytes(raw)
    rows = records(run("scan", "--json", str(tmp_path)))
    by_name = {Path(str(r["source"])).name: float(r["phish"]) for r in rows}  # type: ignore[arg-type]
    assert by_name["1.eml"] > 0.5
    assert by_name["1.eml"] > by_name["0.eml"] and by_name["1.eml"] > by_name["2.eml"]
    phish_row = next(r for r in rows if str(r["source"]).endswith("1.eml"))
    assert phish_row["action"] in {"tag", "quarantine", "reject"}
    assert phish_row["reasons"]


def test_stdin(messages: list[bytes]) -> None:
    """``-`` reads one message from stdin."""
    (row,) = records(run("scan", "--json", "-", stdin=messages[0]))
    assert row["source"] == "-"


def test_directory_and_maildir(tmp_path: Path, messages: list[bytes]) -> None:
    """A directory of files and a Maildir both yield one record per message."""
    plain_dir = tmp_path / "dir"
    plain_dir.mkdir()
    for i, raw in enumerate(messages):
        (plain_dir / f"m{i}").write_bytes(raw)
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new" / "1.host").write_bytes(messages[0])
    (maildir / "cur" / "2.host:2,S").write_bytes(messages[1])
    (maildir / "tmp" / "3.host").write_bytes(
        messages[2]
    )  # in delivery: not a message yet
    assert len(records(run("scan", "--json", str(plain_dir)))) == 3
    assert len(records(run("scan", "--json", str(maildir)))) == 2


def _mbox(messages: list[bytes]) -> bytes:
    out = b""
    for raw in messages:
        out += b"From sender@example.org Tue Mar  5 09:30:00 2024\n"
        out += raw.replace(b"\r\n", b"\n").replace(b"\nFrom ", b"\n>From ") + b"\n"
    return out


def test_mbox_and_gzipped_mbox(tmp_path: Path, messages: list[bytes]) -> None:
    """An mbox and its gzip give one record per message, with #index members."""
    mbox = tmp_path / "box.mbox"
    mbox.write_bytes(_mbox(messages))
    gz = tmp_path / "box.mbox.gz"
    gz.write_bytes(gzip.compress(_mbox(messages)))
    for path in (mbox, gz):
        rows = records(run("scan", "--json", str(path)))
        assert [r["member"] for r in rows] == ["#0", "#1", "#2"]


def test_tar_gz(tmp_path: Path, messages: list[bytes]) -> None:
    """A .tar.gz of message files gives one record per member."""
    path = tmp_path / "msgs.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for i, raw in enumerate(messages):
            info = tarfile.TarInfo(f"msgs/{i}.eml")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    rows = records(run("scan", "--json", str(path)))
    assert sorted(str(r["member"]) for r in rows) == [
        "msgs/0.eml",
        "msgs/1.eml",
        "msgs/2.eml",
    ]


def test_unreadable_item_gives_error_line_and_status_1(
    tmp_path: Path, messages: list[bytes]
) -> None:
    """A missing path is one error record; the other items are still scanned."""
    good = tmp_path / "good.eml"
    good.write_bytes(messages[0])
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00not really gzip")
    proc = run("scan", "--json", str(tmp_path / "missing.eml"), str(broken), str(good))
    assert proc.returncode == 1
    rows = records(proc)
    errors = [r for r in rows if "error" in r]
    assert len(errors) == 2
    assert any(r.get("phish") is not None for r in rows)


def test_garbage_bytes_get_a_verdict(tmp_path: Path) -> None:
    """Binary garbage is scanned, not an error."""
    path = tmp_path / "garbage"
    path.write_bytes(bytes(range(256)) * 40)
    proc = run("scan", "--json", str(path))
    assert proc.returncode == 0
    (row,) = records(proc)
    assert row["action"] in ACTIONS


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    """No PATH, or a bad model directory, is a usage error."""
    assert run("scan").returncode == 2
    proc = run("scan", "--model", str(tmp_path), "-", stdin=b"")
    assert proc.returncode == 2
    assert b"model" in proc.stderr


def test_empty_log_and_quarantine_say_so_on_stderr(tmp_path: Path) -> None:
    """Nothing logged or held: a line on stderr, empty stdout, exit 0."""
    config = tmp_path / "phishgate.toml"
    config.write_text(f'[storage]\nstate_dir = "{tmp_path / "state"}"\n')
    for command in (["log"], ["quarantine", "list"]):
        proc = run(*command, "--config", str(config))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == b""
        assert b"phishgate: " in proc.stderr
        quiet = run(*command, "--json", "--config", str(config))
        assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, b"", b"")


def _others_can_run_python() -> bool:
    """Whether another user could import what this interpreter imports.

    A service user runs the daemon from the same virtual environment, so on
    a real install it can; a Python kept under root's 0700 home cannot.
    """
    import stat
    import sysconfig

    for top in {sysconfig.get_path("stdlib"), sysconfig.get_path("purelib")}:
        path = Path(top).resolve()
        for part in (path, *path.parents):
            if not part.stat().st_mode & stat.S_IXOTH:
                return False
    return True


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can change user")
@pytest.mark.skipif(
    not _others_can_run_python(), reason="this Python is not readable by others"
)
def test_model_activate_as_root_writes_as_the_state_dirs_owner() -> None:
    """Root's `model activate` leaves pointer and lock to the service user."""
    import shutil
    import tempfile

    from phishgate.daemon.model import default_model_dir

    # Under /tmp (world-searchable): the service user must reach it.
    with tempfile.TemporaryDirectory(dir="/tmp") as top:
        root = Path(top)
        root.chmod(0o755)
        state = root / "state"
        version = state / "models" / "v1"
        shutil.copytree(default_model_dir(), version)
        meta = json.loads((version / "meta.json").read_text())
        (version / "meta.json").write_text(json.dumps({**meta, "version": "v1"}))
        for path in (state, *state.rglob("*")):
            os.chown(path, 65534, 65534)
        config = root / "phishgate.toml"
        config.write_text(f'[storage]\nstate_dir = "{state}"\n')
        proc = run("model", "activate", "v1", "--config", str(config))
        assert proc.returncode == 0, proc.stderr
        written = list((state / "models").iterdir())
        assert {p.name for p in written} >= {"active", "v1"}
        assert {(p.name, p.stat().st_uid) for p in written} == {
            (p.name, 65534) for p in written
        }
