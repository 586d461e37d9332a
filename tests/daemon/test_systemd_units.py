"""The systemd units' hardening: rated by systemd-analyze, and livable.

``systemd-analyze security --offline`` rates the unit files as written.
Whether the daemon still works inside that sandbox is checked by running
the real ``phishgate serve`` (two scan workers, the SMTP proxy in front of
a sink) under the unit's own system call filter and write-execute ban
(tests/daemon/unit_sandbox.py), since the test machines have no systemd as
PID 1; scripts/systemd-nspawn-check.sh runs the units under a real one.
"""

from __future__ import annotations

import ctypes.util
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailfactory import as_bytes, phish, plain
from phishgate.daemon.install import install_systemd
from postfixlab import free_ports, wait_for
from serve_process import ServeProcess, message_id
from smtpsink import Sink

UNITS_DIR = Path(__file__).resolve().parents[2] / "systemd"
SERVICES = ("phishgate.service", "phishgate-retrain.service")
MAX_EXPOSURE = 2.0
"""systemd-analyze's "OK" or better."""
SANDBOX = Path(__file__).with_name("unit_sandbox.py")
DELIVER_ALL = {"tag_at": 1.0, "quarantine_at": 1.0, "reject_at": 1.0}
"""Thresholds no score reaches: every message goes on to the sink."""
OVERALL = re.compile(r"Overall exposure level for \S+: (\d+\.\d+)")


def require(ok: bool, why: str) -> None:
    """Skip without the tool; under CI=true fail instead, as Postfix tests do."""
    if ok:
        return
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"CI=true, so this test may not skip: {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """The units as ``install-systemd`` writes them, in a temporary root."""
    require(shutil.which("systemd-analyze") is not None, "no systemd-analyze")
    exe = tmp_path / "phishgate"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    install_systemd(tmp_path, executable=str(exe))
    return tmp_path / "etc/systemd/system"


@pytest.mark.parametrize("unit", SERVICES)
def test_exposure_is_ok_or_better(installed: Path, unit: str) -> None:
    """systemd-analyze security rates each service at most 2.0 ("OK")."""
    proc = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=true",
            f"--threshold={round(MAX_EXPOSURE * 10)}",  # it counts in tenths
            "--no-pager",
            str(installed / unit),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    found = OVERALL.search(proc.stdout + proc.stderr)
    assert found is not None, proc.stdout + proc.stderr
    assert float(found[1]) <= MAX_EXPOSURE
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def sandbox() -> list[str]:
    """The wrapper that applies phishgate.service's seccomp settings."""
    require(shutil.which("systemd-analyze") is not None, "no systemd-analyze")
    require(ctypes.util.find_library("seccomp") is not None, "no libseccomp")
    return [sys.executable, str(SANDBOX), str(UNITS_DIR / "phishgate.service")]


def test_the_sandbox_refuses_what_the_unit_forbids(sandbox: list[str]) -> None:
    """Under the wrapper, W+X memory and a call from @resources fail with EPERM.

    setpriority, which the unit allows back (the model check lowers its own
    priority), goes through.
    """
    probe = (
        "import mmap, os\n"
        "for name, call in (\n"
        "    ('wx', lambda: mmap.mmap(-1, 4096, prot=7)),\n"
        "    ('affinity', lambda: os.sched_setaffinity(0, os.sched_getaffinity(0))),\n"
        "    ('nice', lambda: os.setpriority(os.PRIO_PROCESS, 0, 5)),\n"
        "):\n"
        "    try:\n"
        "        call()\n"
        "        print(name, 'allowed')\n"
        "    except PermissionError:\n"
        "        print(name, 'refused')\n"
    )
    done = subprocess.run(
        [*sandbox, sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split("\n") == [
        "wx refused",
        "affinity refused",
        "nice allowed",
        "",
    ]


@pytest.fixture
def sink() -> Iterator[Sink]:
    sink = Sink().start()
    yield sink
    sink.stop()


def test_daemon_serves_inside_the_unit_sandbox(sandbox: list[str], sink: Sink) -> None:
    """Two workers start, scan, reload and stop under the unit's seccomp rules."""
    milter_port, proxy_port = free_ports(2)
    proxy = {
        "listen": f"127.0.0.1:{proxy_port}",
        "reinject": f"127.0.0.1:{sink.port}",
    }
    ids = [message_id(), message_id()]
    sent = {
        ids[0]: as_bytes(plain(msgid=ids[0])),
        ids[1]: as_bytes(phish(msgid=ids[1])),
    }
    with ServeProcess(
        milter_port,
        proxy=proxy,
        policy=DELIVER_ALL,
        daemon={"workers": 2},
        wrapper=sandbox,
    ) as daemon:
        for raw in sent.values():
            with smtplib.SMTP("127.0.0.1", proxy_port, timeout=60) as smtp:
                smtp.sendmail("bob@example.org", ["ann@example.org"], raw)
        rows = [daemon.wait_rows(message_id=m)[0] for m in sent]
        daemon.send_signal(signal.SIGHUP)  # the canary check scans 20 messages
        daemon.wait_log("reloaded ", timeout=120)
        daemon.send_signal(signal.SIGTERM)
        status = daemon.wait_exit()
        log = daemon.log_text()

    assert status == 0, log
    assert [r["status"] for r in rows] == ["scanned", "scanned"]
    wait_for(lambda: len(sink.messages) == len(sent), 10, "both at the sink")
    assert all(b"X-Phishgate-Verdict: " in m.data for m in sink.messages)
    assert "Traceback" not in log
