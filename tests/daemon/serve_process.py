"""The real ``phishgate serve`` as a subprocess, on free ports, for tests.

Each :class:`ServeProcess` gets its own config file, state directory and log
file under a fresh directory in /tmp. Tests wait on what the daemon does
(log lines, metrics, verdict rows, its exit), never on the clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from phishgate.daemon.model import default_model_dir
from phishgate.daemon.models_dir import models_dir
from postfixlab import free_ports, wait_for
from prometheus_client.parser import text_string_to_metric_families

STARTUP_TIMEOUT = 60.0
"""Seconds for the daemon to import, load the model (in every worker) and listen."""
EXIT_TIMEOUT = 30.0
"""Seconds for the daemon to exit after SIGTERM (its own deadline is 20 s)."""
CLI_TIMEOUT = 60.0
"""Seconds for one ``phishgate`` command (a release waits on Postfix)."""
READY_LINE = "serving milter on"
"""The INFO line ``phishgate serve`` logs once it listens."""

TomlValue = str | int | float | bool | Sequence[str]
Table = Mapping[str, TomlValue]


def toml_value(value: TomlValue) -> str:
    """A TOML literal for the few value types a phishgate config uses."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "[" + ", ".join(toml_value(item) for item in value) + "]"


def toml_table(header: str, table: Table) -> str:
    """One ``[header]`` table, keys in the given order."""
    lines = [f"[{header}]", *(f"{k} = {toml_value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


class ServeProcess:
    """One ``phishgate serve`` with a config the test controls."""

    def __init__(
        self,
        milter_port: int,
        *,
        policy: Table | None = None,
        domains: Sequence[Table] = (),
        lists: Table | None = None,
        proxy: Table | None = None,
        quarantine: Table | None = None,
        daemon: Table | None = None,
        env: Mapping[str, str] | None = None,
        wrapper: Sequence[str] = (),
    ) -> None:
        self.milter_port = milter_port
        # Scanning in the daemon's own process starts fastest; tests of the
        # worker processes ask for them.
        self.daemon = dict(daemon) if daemon is not None else {"workers": 1}
        self.proxy = dict(proxy) if proxy is not None else {"listen": ""}
        self.quarantine = dict(quarantine or {})
        (self.metrics_port,) = free_ports(1)
        self.root = Path(tempfile.mkdtemp(prefix="pgserve-", dir="/tmp"))
        self.state_dir = self.root / "state"
        self.config_path = self.root / "phishgate.toml"
        self.log_path = self.root / "serve.log"
        self.env = dict(env or {})
        self.wrapper = list(wrapper)
        """A command that execs the daemon's command line given as its arguments."""
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0
        self.write_config(policy=policy, domains=domains, lists=lists)

    # ------------------------------------------------------------ config

    def config_text(
        self,
        *,
        policy: Table | None = None,
        domains: Sequence[Table] = (),
        lists: Table | None = None,
    ) -> str:
        """A complete config on this daemon's ports and state directory."""
        sections = [
            toml_table("daemon", self.daemon),
            toml_table("milter", {"listen": f"inet:127.0.0.1:{self.milter_port}"}),
            toml_table("metrics", {"listen": f"127.0.0.1:{self.metrics_port}"}),
            toml_table("proxy", self.proxy),
            toml_table("quarantine", self.quarantine),
            toml_table("storage", {"state_dir": str(self.state_dir)}),
            toml_table("policy", policy or {}),
            *(toml_table("[policy.domains]", domain) for domain in domains),
            toml_table("lists", lists or {}),
        ]
        return "\n".join(sections)

    def write_config(self, **sections: Any) -> None:
        """Write the config file atomically (temp name, then rename)."""
        self.write_config_text(self.config_text(**sections))

    def write_config_text(self, text: str) -> None:
        """Write any text as the config file, atomically."""
        temp = self.config_path.with_suffix(".tmp")
        temp.write_text(text)
        temp.replace(self.config_path)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> ServeProcess:
        """Start the daemon (again) and wait until it says it is listening."""
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        env.update(self.env)
        command = [*self.wrapper, sys.executable, "-m", "phishgate.daemon.cli", "serve"]
        self._log_start = len(self.log_text())
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*command, "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        wait_for(self._ready_or_dead, STARTUP_TIMEOUT, "phishgate serve ready")
        if self.proc.poll() is not None:
            raise RuntimeError(f"phishgate serve exited early:\n{self.log_text()}")
        return self

    def _ready_or_dead(self) -> bool:
        assert self.proc is not None  # set by start()
        started = self.log_text()[self._log_start :]
        return READY_LINE in started or self.proc.poll() is not None

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        assert self.proc is not None, "not started"
        return self.proc.pid

    def send_signal(self, signum: signal.Signals) -> None:
        """Send a signal to the daemon."""
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        """Wait for the daemon to exit; return its status."""
        assert self.proc is not None, "not started"
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        """SIGTERM (SIGCONT first, in case a test stopped it); kill if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.send_signal(signal.SIGTERM)
        self.send_signal(signal.SIGCONT)
        try:
            return self.proc.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(EXIT_TIMEOUT)

    def close(self) -> None:
        """Stop the daemon and delete its directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def run_cli(
        self, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``phishgate ARGS --config FILE`` for this daemon; its output."""
        command = [sys.executable, "-m", "phishgate.daemon.cli", *args]
        result = subprocess.run(
            [*command, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"phishgate {' '.join(args)}: exit {result.returncode}\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    # ------------------------------------------------------------ observations

    def log_text(self) -> str:
        """Everything the daemon logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, text: str, timeout: float = 10.0, count: int = 1) -> str:
        """Wait until the log holds ``text`` at least ``count`` times; return it."""

        def logged() -> str:
            log = self.log_text()
            return log if log.count(text) >= count else ""

        try:
            return wait_for(logged, timeout, f"{count} daemon log lines with {text!r}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\ndaemon log:\n{self.log_text()}") from None

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of /metrics, keyed by name and label set."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value, 0 when it does not exist (yet)."""
        return self.metrics().get((name, frozenset(labels.items())), 0.0)

    def rows(self, **where: str) -> list[dict[str, Any]]:
        """Verdict rows whose columns equal ``where``, oldest first."""
        path = self.state_dir / "phishgate.db"
        if not path.exists():
            return []
        clauses = " AND ".join(f"{column} = ?" for column in where) or "1"
        # The column names come from the test itself, the values are parameters.
        sql = f"SELECT * FROM verdicts WHERE {clauses} ORDER BY id"
        with contextlib.closing(
            sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        ) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute(sql, list(where.values()))]

    def wait_rows(
        self, count: int = 1, timeout: float = 10.0, **where: str
    ) -> list[dict[str, Any]]:
        """Wait until at least ``count`` rows match ``where``; return them."""

        def enough() -> list[dict[str, Any]]:
            found = self.rows(**where)
            return found if len(found) >= count else []

        return wait_for(enough, timeout, f"{count} verdict rows with {where}")


def recipient(domain: str) -> str:
    """A fresh address in ``domain``, so tests sharing a lab never collide."""
    return f"{uuid.uuid4().hex[:12]}@{domain}"


def message_id() -> str:
    """A fresh Message-ID, to find the message's verdict row."""
    return f"<{uuid.uuid4().hex}@client.example.test>"


def publish_model_copy(state_dir: Path, version: str) -> Path:
    """A valid second model: the bundled one under another version name."""
    target = models_dir(state_dir) / version
    shutil.copytree(default_model_dir(), target)
    meta = json.loads((target / "meta.json").read_text())
    meta["version"] = version
    (target / "meta.json").write_text(json.dumps(meta))
    return target


def served_version(serve: ServeProcess) -> str:
    """The version ``phishgate_model_info`` reports, "" while it is ambiguous."""
    versions = [
        dict(labels)["version"]
        for (name, labels), value in serve.metrics().items()
        if name == "phishgate_model_info" and value == 1
    ]
    return versions[0] if len(versions) == 1 else ""


def drift_psi(serve: ServeProcess) -> dict[str, float]:
    """Every ``phishgate_drift_psi`` sample by feature (NaN: no figure yet)."""
    return {
        dict(labels)["feature"]: value
        for (name, labels), value in serve.metrics().items()
        if name == "phishgate_drift_psi"
    }
