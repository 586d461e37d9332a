"""Model swaps under load, through a real Postfix: nothing lost, nothing refused.

Sender threads keep mail flowing through Postfix's milter listener while the
test activates a second model version, points the daemon at a broken one
(refused: the second keeps serving), and then rolls back. The lab keeps
Postfix's default ``milter_default_action = tempfail``, so a scan that
failed during a swap would show up as a 4xx to the sender, not as an
unscanned delivery. Every message must end with one ``scanned`` verdict row
and one delivered copy whose ``X-Phishgate-Model`` names the row's model;
every message sent after the daemon reported a version must carry it.
"""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from mailfactory import as_bytes, plain
from phishgate.daemon.models_dir import ACTIVE_FILE, models_dir
from postfixlab import LabFactory, PostfixLab, wait_for
from serve_process import (
    ServeProcess,
    message_id,
    publish_model_copy,
    recipient,
    served_version,
)

pytestmark = pytest.mark.postfix

NEW_VERSION = "2099-01-01T00-00-00Z-underload"
SENDERS = 4
AFTER_SWAP = 12
"""Messages each phase must complete after the daemon reports its version."""
SWAP_TIMEOUT = 60.0


@dataclass
class Sent:
    msgid: str
    rcpt: str
    started: float
    finished: float = 0.0
    error: str = ""


class Load:
    """Threads sending ham through Postfix, one SMTP session per message."""

    def __init__(self, lab: PostfixLab) -> None:
        self.lab = lab
        self.sent: list[Sent] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(SENDERS)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _run(self) -> None:
        while not self._stop.is_set():
            item = Sent(message_id(), recipient("swap.test"), time.monotonic())
            raw = as_bytes(plain(msgid=item.msgid))
            try:
                with smtplib.SMTP("127.0.0.1", self.lab.milter_smtp_port) as smtp:
                    smtp.sendmail("bob@example.org", [item.rcpt], raw)
            except (OSError, smtplib.SMTPException) as exc:
                item.error = repr(exc)
            item.finished = time.monotonic()
            with self._lock:
                self.sent.append(item)

    def completed_since(self, moment: float) -> int:
        with self._lock:
            return sum(1 for s in self.sent if s.started > moment and s.finished)


def switch_to(daemon: ServeProcess, load: Load, version: str) -> float:
    """Wait until the daemon serves ``version`` and mail sent after it flowed."""
    wait_for(lambda: served_version(daemon) == version, SWAP_TIMEOUT, version)
    switched = time.monotonic()
    wait_for(
        lambda: load.completed_since(switched) >= AFTER_SWAP,
        SWAP_TIMEOUT,
        f"{AFTER_SWAP} messages after the switch to {version}",
    )
    return switched


@pytest.fixture(scope="module")
def lab(make_postfix_lab: LabFactory) -> Iterator[PostfixLab]:
    lab = make_postfix_lab()
    yield lab
    lab.purge()


@pytest.mark.parametrize("workers", [1, 2])
def test_swaps_under_load_lose_and_refuse_nothing(
    lab: PostfixLab, workers: int
) -> None:
    with ServeProcess(lab.milter_port, daemon={"workers": workers}) as daemon:
        bundled = served_version(daemon)
        publish_model_copy(daemon.state_dir, NEW_VERSION)
        with Load(lab) as load:
            switch_to(daemon, load, bundled)
            daemon.run_cli("model", "activate", NEW_VERSION)
            to_new = switch_to(daemon, load, NEW_VERSION)
            # A broken model behind the pointer (a bad copy, a full disk):
            # refused, and the new version keeps serving the mail in flight.
            broken = publish_model_copy(daemon.state_dir, "broken-1")
            (broken / "model.txt").write_text("not a model\n")
            (models_dir(daemon.state_dir) / ACTIVE_FILE).write_text("broken-1\n")
            daemon.wait_log("reload refused", timeout=SWAP_TIMEOUT)
            refused = time.monotonic()
            wait_for(
                lambda: load.completed_since(refused) >= AFTER_SWAP,
                SWAP_TIMEOUT,
                f"{AFTER_SWAP} messages after the broken model was refused",
            )
            assert served_version(daemon) == NEW_VERSION
            daemon.run_cli("model", "activate", NEW_VERSION)  # the pointer mended
            rolling_back = time.monotonic()
            daemon.run_cli("model", "rollback")
            back = switch_to(daemon, load, bundled)

        assert [s.error for s in load.sent if s.error] == []
        rows = {
            s.msgid: daemon.wait_rows(message_id=s.msgid, timeout=30) for s in load.sent
        }
        assert {m: len(r) for m, r in rows.items() if len(r) != 1} == {}
        assert {r[0]["status"] for r in rows.values()} == {"scanned"}
        version = {m: r[0]["model_version"] for m, r in rows.items()}
        for item in load.sent:
            copy = delivered(lab, item.rcpt)
            assert f"X-Phishgate-Model: {version[item.msgid]}" in copy
        # Sent wholly between the two switches: the new model; after the
        # rollback was seen: the bundled one. Messages overlapping a switch
        # may have either (in-flight scans finish on the model they started on).
        expected = [
            (s.msgid, NEW_VERSION)
            for s in load.sent
            if s.started > to_new and s.finished < rolling_back
        ] + [(s.msgid, bundled) for s in load.sent if s.started > back]
        assert len(expected) >= 2 * AFTER_SWAP - SENDERS
        assert [(m, version[m]) for m, _ in expected] == expected
        assert daemon.metric("phishgate_model_reloads_total", result="ok") == 2
        assert daemon.metric("phishgate_model_reloads_total", result="refused") >= 1


def delivered(lab: PostfixLab, rcpt: str) -> str:
    """The one delivered copy for ``rcpt``, as text."""
    marker = f"\nDelivered-To: {rcpt}\n"

    def find() -> str:
        for path in (lab.maildir / "new").iterdir():
            text = path.read_text(errors="replace")
            if marker in text:
                return text
        return ""

    return wait_for(find, 30, f"delivery to {rcpt}")
