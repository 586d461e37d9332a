"""A private Postfix instance on loopback, for integration tests.

The instance has its own config, queue, data directory, log file and Maildir
under one short directory in /tmp. It binds only 127.0.0.1, never reads or
changes /etc/postfix/main.cf, and never sends mail off the machine: every
accepted message ends in ``maildir/new`` (one file per recipient, selected by
its ``Delivered-To`` header) or, with ``sink_port``, at an SMTP sink the test
runs. Front doors, each switched off with port :data:`OFF`:

* ``smtp_port``: plain smtpd, no filtering;
* ``milter_smtp_port``: smtpd with ``smtpd_milters = milter_spec``;
* ``filter_smtp_port``: smtpd with ``content_filter = scan:[127.0.0.1]:filter_port``;
* ``reinject_port``: where the content-filter proxy re-injects (no filter, no
  milters).

Postfix needs root. Pitfalls handled here (measured on Postfix 3.7): the
config files are backdated, or every Postfix command waits ~2 s for main.cf to
"cool down"; logging goes to ``maillog_file`` through postlogd, since there is
no syslog; services do not chroot; ``data/`` belongs to postfix; the lab path
stays short (UNIX socket paths) with parents the postfix user can search; the
master is stopped by its pid file, and a zombie counts as stopped.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, TypeVar, get_args

T = TypeVar("T")
QueueEntry = dict[str, Any]
"""One object of ``postqueue -j`` (queue_name, queue_id, sender, recipients)."""
MilterDefaultAction = Literal["accept", "tempfail", "reject", "quarantine"]
LabFactory = Callable[..., "PostfixLab"]
"""The ``make_postfix_lab`` fixture: PostfixLab options in, a started lab out."""

AUTO: Final = -1
"""Port value: pick a free loopback port when the lab is created."""
OFF: Final = 0
"""Port value: no such listener."""

LAB_PARENT: Final = "/tmp"
"""Short, and searchable by user postfix (pytest's tmp_path is neither)."""
MAX_LAB_DIR: Final = 80
"""Longer paths overflow sun_path (108 bytes) for sockets in spool/private."""
MARKER: Final = ".postfix-lab"
"""Marks a directory as a lab, so :meth:`PostfixLab.purge` may delete it."""
BACKDATE_SECONDS: Final = 60.0
"""Postfix re-reads a main.cf younger than ~2 s in 300 ms naps; backdate it."""
POLL_SECONDS: Final = 0.02
STOP_GRACE_SECONDS: Final = 10.0
"""How long the master gets after SIGTERM before its process group is killed."""
NOBODY: Final = 65534
"""Owner of delivered mail: virtual(8) refuses uid 0."""
SBIN_DIRS: Final = ("/usr/sbin", "/sbin")

STOCK_SERVICES: Final = """\
# service  type  private unpriv chroot wakeup maxproc command
pickup     unix  n       -      n      60     1       pickup
cleanup    unix  n       -      n      -      0       cleanup
qmgr       unix  n       -      n      300    1       qmgr
rewrite    unix  -       -      n      -      -       trivial-rewrite
bounce     unix  -       -      n      -      0       bounce
defer      unix  -       -      n      -      0       bounce
trace      unix  -       -      n      -      0       bounce
verify     unix  -       -      n      -      1       verify
flush      unix  n       -      n      1000?  0       flush
proxymap   unix  -       -      n      -      -       proxymap
proxywrite unix  -       -      n      -      1       proxymap
smtp       unix  -       -      n      -      -       smtp
relay      unix  -       -      n      -      -       smtp
showq      unix  n       -      n      -      -       showq
error      unix  -       -      n      -      -       error
retry      unix  -       -      n      -      -       error
discard    unix  -       -      n      -      -       discard
local      unix  -       n      n      -      -       local
virtual    unix  -       n      n      -      -       virtual
anvil      unix  -       -      n      -      1       anvil
scache     unix  -       -      n      -      1       scache
postlog    unix-dgram n  -      n      -      1       postlogd
"""
"""Postfix's stock services with chroot off (a chroot needs /etc copies)."""


class PostfixLabError(RuntimeError):
    """The lab could not be set up, started, stopped or queried."""


def unavailable_reason() -> str | None:
    """Why a lab cannot run on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "the Postfix lab needs root (the Postfix master runs as root)"
    missing = [
        name for name in ("postfix", "postqueue", "postsuper") if not _which(name)
    ]
    if missing:
        return (
            f"Postfix is not installed (no {', '.join(missing)}); install it with "
            "apt-get install postfix (debconf: main_mailer_type No configuration)"
        )
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "user postfix is missing (reinstall the postfix package)"
    return None


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1, held together while picked."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def wait_for(condition: Callable[[], T], timeout: float, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; return that.

    Raises TimeoutError naming ``what`` when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        if result := condition():
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        time.sleep(POLL_SECONDS)


@dataclass
class PostfixLab:
    """A private Postfix on free loopback ports; :meth:`start` it, then send mail.

    Port fields take a number, :data:`AUTO` (chosen on creation) or :data:`OFF`.
    After creation every port field holds the real number. ``milter_spec`` is
    where Postfix looks for the test's milter, ``filter_port`` where it hands
    content-filter mail to the test's proxy; neither needs to be up at start.
    """

    smtp_port: int = AUTO
    milter_smtp_port: int = AUTO
    filter_smtp_port: int = AUTO
    reinject_port: int = AUTO
    milter_port: int = AUTO
    milter_spec: str = ""
    """Postfix milter address; defaults to ``inet:127.0.0.1:<milter_port>``."""
    filter_port: int = AUTO
    sink_port: int | None = None
    """Deliver all mail by SMTP to this port instead of the Maildir."""
    milter_default_action: MilterDefaultAction = "tempfail"
    milter_timeouts: tuple[str, str, str] = ("5s", "10s", "30s")
    """Milter connect, command and content timeouts (Postfix: 30s/30s/300s)."""
    filter_timeout: str = "60s"
    """``smtp_data_done_timeout`` of the transport that feeds the proxy."""
    filter_transport: Literal["smtp", "lmtp"] = "smtp"
    """The client that feeds the proxy: smtp(8), or lmtp(8) with per-recipient
    replies after DATA (its ``lmtp_*`` parameters take the same values)."""
    retry_delay: str = "30s"
    """``queue_run_delay`` and the backoff times for deferred mail."""
    hostname: str = "lab.example.test"
    extra_main_cf: Mapping[str, str] = field(default_factory=dict)
    """Any other main.cf parameters; these win over the generated ones."""
    lab_dir: Path | None = None
    """Where the instance lives; by default a new ``/tmp/pflab-*`` directory."""
    start_timeout: float = 20.0
    master_pid: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._check_options()
        self._pick_ports()
        if not self.milter_spec:
            self.milter_spec = f"inet:127.0.0.1:{self.milter_port}"
        if self.lab_dir is None:
            self.lab_dir = Path(tempfile.mkdtemp(prefix="pflab-", dir=LAB_PARENT))
        self._claim_lab_dir(self.lab_dir)

    def _claim_lab_dir(self, lab_dir: Path) -> None:
        if len(str(lab_dir)) > MAX_LAB_DIR or not lab_dir.is_absolute():
            raise PostfixLabError(f"lab_dir must be absolute, <= {MAX_LAB_DIR} chars")
        lab_dir.mkdir(exist_ok=True)
        if any(lab_dir.iterdir()) and not (lab_dir / MARKER).exists():
            raise PostfixLabError(f"{lab_dir} is not empty and not a lab; not using it")
        (lab_dir / MARKER).touch()

    def _check_options(self) -> None:
        if self.milter_default_action not in get_args(MilterDefaultAction):
            raise PostfixLabError(
                f"bad milter_default_action {self.milter_default_action!r}"
            )
        if not any(port != OFF for port in self.listener_ports(include_off=True)):
            raise PostfixLabError("every listener is OFF")

    def _pick_ports(self) -> None:
        names = [name for name in _PORT_FIELDS if getattr(self, name) == AUTO]
        for name, port in zip(names, free_ports(len(names)), strict=True):
            setattr(self, name, port)

    # ------------------------------------------------------------ layout

    @property
    def root(self) -> Path:
        """The lab directory (everything of this instance is below it)."""
        assert self.lab_dir is not None  # set in __post_init__
        return self.lab_dir

    @property
    def config_dir(self) -> Path:
        """Pass to ``postqueue -c``, ``postsuper -c``, ``postcat -c``."""
        return self.root / "etc"

    @property
    def queue_dir(self) -> Path:
        """The queue_directory (active, deferred, hold, ...)."""
        return self.root / "spool"

    @property
    def maildir(self) -> Path:
        """The one catch-all Maildir (unused with ``sink_port``)."""
        return self.root / "maildir"

    @property
    def log_path(self) -> Path:
        """All Postfix logging (maillog_file, written by postlogd)."""
        return self.root / "log" / "maillog"

    def listener_ports(self, *, include_off: bool = False) -> list[int]:
        """The ports Postfix itself binds."""
        ports = [self.smtp_port, self.milter_smtp_port]
        ports += [self.filter_smtp_port, self.reinject_port]
        return ports if include_off else [port for port in ports if port != OFF]

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Write the config, start the master and wait until SMTP answers.

        The queue and Maildir of an earlier start of the same lab are kept.
        """
        reason = unavailable_reason()
        if reason is not None:
            raise PostfixLabError(reason)
        if self.running():
            raise PostfixLabError(f"already running in {self.root}")
        busy = sorted(set(self.listener_ports()) & _listening_ports())
        if busy:
            raise PostfixLabError(f"ports already in use: {busy}")
        self._make_layout()
        self._write_config()

        started = _run(["postfix", "-c", str(self.config_dir), "start"], check=False)
        if started.returncode != 0:
            raise PostfixLabError(self._failure("postfix start failed", started))
        self.master_pid = self._pid_from_file()
        self._wait(self._ready, self.start_timeout, "Postfix listening")

    def stop(self) -> None:
        """Stop the master by its pid (SIGTERM, then SIGKILL after a grace time)."""
        pid = self._pid_if_running()
        if pid is None:
            return

        os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: not _alive(pid), STOP_GRACE_SECONDS, "master exit")
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
            wait_for(lambda: not _alive(pid), STOP_GRACE_SECONDS, "master killed")
        self.master_pid = None

    def purge(self) -> None:
        """Stop the instance and delete its directory (only one made as a lab)."""
        self.stop()
        if (self.root / MARKER).exists():
            shutil.rmtree(self.root)

    def running(self) -> bool:
        """Whether this lab's master process is alive."""
        return self._pid_if_running() is not None

    def __enter__(self) -> PostfixLab:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.purge()

    def _make_layout(self) -> None:
        self.root.chmod(0o755)  # mkdtemp makes it 0700: postfix must get in
        for public in (self.config_dir, self.queue_dir, self.log_path.parent):
            public.mkdir(mode=0o755, exist_ok=True)
        data = self.root / "data"  # master.lock: a root-owned one stops the master
        data.mkdir(mode=0o700, exist_ok=True)
        shutil.chown(data, "postfix", "postfix")
        self.maildir.mkdir(mode=0o755, exist_ok=True)
        for sub in ("new", "cur", "tmp"):
            (self.maildir / sub).mkdir(mode=0o755, exist_ok=True)
        for path in (self.maildir, *self.maildir.iterdir()):
            os.chown(path, NOBODY, NOBODY)

        _check_access("postfix", "-x", self.queue_dir)
        _check_access(NOBODY, "-w", self.maildir)

    def _write_config(self) -> None:
        main = {**self._main_cf(), **self.extra_main_cf}
        lines = [f"{name} = {value}" for name, value in main.items()]
        (self.config_dir / "main.cf").write_text(_GENERATED + "\n".join(lines) + "\n")
        (self.config_dir / "master.cf").write_text(_GENERATED + self._master_cf())

        backdated = time.time() - BACKDATE_SECONDS
        for path in self.config_dir.iterdir():
            os.utime(path, (backdated, backdated))

    def _main_cf(self) -> dict[str, str]:
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.root / "data"),
            # Debian keeps postfix-files and post-install here; start needs them.
            "meta_directory": "/etc/postfix",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": self.hostname,
            "mydomain": self.hostname.partition(".")[2] or self.hostname,
            "myorigin": "$myhostname",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            # No syslog in containers: postlogd writes this file.
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.log_path.parent),
            # No local(8) delivery and no aliases (the default has nis:).
            "mydestination": "",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "in_flow_delay": "0",
            "queue_run_delay": self.retry_delay,
            "minimal_backoff_time": self.retry_delay,
            "maximal_backoff_time": self.retry_delay,
            "delay_warning_time": "0",
        }
        return main | self._delivery_cf()

    def _delivery_cf(self) -> dict[str, str]:
        if self.sink_port is not None:
            nexthop = f"smtp:[127.0.0.1]:{self.sink_port}"
            return {"default_transport": nexthop, "relay_transport": nexthop}
        # Every domain is virtual and every recipient shares one Maildir;
        # virtual(8) refuses regexp $1 here, so no per-recipient folders.
        return {
            "virtual_mailbox_domains": "static:all",
            "virtual_mailbox_base": str(self.root),
            "virtual_mailbox_maps": f"static:{self.maildir.name}/",
            "virtual_uid_maps": f"static:{NOBODY}",
            "virtual_gid_maps": f"static:{NOBODY}",
            "virtual_minimum_uid": "1",
            "virtual_mailbox_limit": "0",
        }

    def _master_cf(self) -> str:
        services = [STOCK_SERVICES]
        if self.smtp_port != OFF:
            services.append(_listener(self.smtp_port, {}))
        if self.milter_smtp_port != OFF:
            services.append(_listener(self.milter_smtp_port, self._milter_options()))
        if self.filter_smtp_port != OFF:
            services.append(_listener(self.filter_smtp_port, self._filter_options()))
            scan = f"scan unix - - n - 10 {self.filter_transport}"
            services.append(_service(scan, self._scan_options()))
        if self.reinject_port != OFF:
            services.append(_listener(self.reinject_port, _REINJECT_OPTIONS, "10"))
        return "".join(services)

    def _milter_options(self) -> dict[str, str]:
        connect, command, content = self.milter_timeouts
        return {
            "smtpd_milters": self.milter_spec,
            "milter_protocol": "6",
            "milter_default_action": self.milter_default_action,
            "milter_connect_timeout": connect,
            "milter_command_timeout": command,
            "milter_content_timeout": content,
        }

    def _filter_options(self) -> dict[str, str]:
        return {
            "content_filter": f"scan:[127.0.0.1]:{self.filter_port}",
            "receive_override_options": "no_address_mappings",
        }

    def _scan_options(self) -> dict[str, str]:
        client = self.filter_transport
        return {
            f"{client}_send_xforward_command": "yes",
            "disable_mime_output_conversion": "yes",
            f"{client}_generic_maps": "",
            f"{client}_data_done_timeout": self.filter_timeout,
        }

    def _ready(self) -> bool:
        listening = _listening_ports()
        if not all(port in listening for port in self.listener_ports()):
            return False
        # Probe a listener without a milter: a probe of the milter listener
        # would open a session with the test's milter.
        plain = [self.smtp_port, self.reinject_port, self.filter_smtp_port]
        probe = next((port for port in plain if port != OFF), None)
        return probe is None or _smtp_banner(probe)

    def _pid_from_file(self) -> int:
        text = (self.queue_dir / "pid" / "master.pid").read_text()
        return int(text.split()[0])

    def _pid_if_running(self) -> int | None:
        pid = self.master_pid
        if pid is None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = self._pid_from_file()
        if pid is None or not _alive(pid) or not _is_master(pid):
            return None
        return pid

    def _failure(
        self, what: str, result: subprocess.CompletedProcess[str] | None = None
    ) -> str:
        output = (result.stdout + result.stderr).strip() if result else ""
        log_tail = "\n".join(self.log_text().splitlines()[-20:])
        return f"{what} ({self.root})\n{output}\nlast log lines:\n{log_tail}"

    # ------------------------------------------------------------ queue and mail

    def postqueue_json(self) -> list[QueueEntry]:
        """The queue as ``postqueue -j`` reports it, one dict per message."""
        out = self._postfix_command("postqueue", "-j")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flush(self) -> None:
        """Retry deferred mail now (also lifts a dead-destination throttle)."""
        self._postfix_command("postqueue", "-f")

    def hold_release(self, queue_id: str) -> None:
        """Release a message from the hold queue."""
        self._postfix_command("postsuper", "-H", queue_id)

    def delete(self, queue_id: str) -> None:
        """Delete a queued message (``ALL`` deletes every one)."""
        self._postfix_command("postsuper", "-d", queue_id)

    def delivered(self, recipient: str | None = None) -> list[EmailMessage]:
        """Messages in the Maildir, oldest first, optionally for one recipient."""
        paths = sorted(
            (self.maildir / "new").iterdir(),
            key=lambda p: (p.stat().st_mtime_ns, p.name),
        )
        messages = [_parse(path.read_bytes()) for path in paths]
        if recipient is None:
            return messages
        wanted = recipient.lower()
        return [m for m in messages if str(m["Delivered-To"] or "").lower() == wanted]

    def wait_delivered(
        self, count: int = 1, timeout: float = 10.0, recipient: str | None = None
    ) -> list[EmailMessage]:
        """Wait until at least ``count`` messages are delivered; return them all."""

        def enough() -> list[EmailMessage]:
            messages = self.delivered(recipient)
            return messages if len(messages) >= count else []

        return self._wait(
            enough, timeout, f"{count} delivered for {recipient or 'any'}"
        )

    def wait_queue(
        self,
        predicate: Callable[[QueueEntry], bool],
        timeout: float = 10.0,
        count: int = 1,
    ) -> list[QueueEntry]:
        """Wait until ``count`` queue entries match ``predicate``; return those."""

        def matches() -> list[QueueEntry]:
            found = [entry for entry in self.postqueue_json() if predicate(entry)]
            return found if len(found) >= count else []

        return self._wait(matches, timeout, f"{count} matching queue entries")

    def log_text(self) -> str:
        """Everything Postfix logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        """Wait until the log contains ``text``; return the whole log."""
        return self._wait(
            lambda: self.log_text() if text in self.log_text() else "",
            timeout,
            f"log line with {text!r}",
        )

    def _wait(self, condition: Callable[[], T], timeout: float, what: str) -> T:
        try:
            return wait_for(condition, timeout, what)
        except TimeoutError as exc:
            raise TimeoutError(self._failure(str(exc))) from None

    def _postfix_command(self, *command: str) -> str:
        result = _run(
            [command[0], "-c", str(self.config_dir), *command[1:]], check=False
        )
        if result.returncode != 0:
            raise PostfixLabError(self._failure(" ".join(command) + " failed", result))
        return result.stdout


_PORT_FIELDS: Final = (
    "smtp_port",
    "milter_smtp_port",
    "filter_smtp_port",
    "reinject_port",
    "milter_port",
    "filter_port",
)

_GENERATED: Final = "# Generated by tests/postfixlab.py for a private test instance.\n"

_REINJECT_OPTIONS: Final = {
    "content_filter": "",
    "receive_override_options": (
        "no_unknown_recipient_checks,no_header_body_checks,no_milters"
    ),
    "smtpd_helo_restrictions": "",
    "smtpd_client_restrictions": "",
    "smtpd_sender_restrictions": "",
    "smtpd_relay_restrictions": "",
    "smtpd_recipient_restrictions": "permit_mynetworks,reject",
    "mynetworks": "127.0.0.0/8",
    "smtpd_authorized_xforward_hosts": "127.0.0.0/8",
}
"""The proxy's way back in: no content filter, no milters, loopback only."""


def _listener(port: int, options: Mapping[str, str], maxproc: str = "-") -> str:
    return _service(f"127.0.0.1:{port} inet n - n - {maxproc} smtpd", options)


def _service(line: str, options: Mapping[str, str]) -> str:
    return "".join([line, "\n", *(f"  -o {k}={v}\n" for k, v in options.items())])


def _which(name: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])
    return shutil.which(name, path=path)


def _run(command: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    executable = _which(command[0]) or command[0]
    return subprocess.run(
        [executable, *command[1:]], check=check, capture_output=True, text=True
    )


def _check_access(user: str | int, test: str, path: Path) -> None:
    """Fail unless ``user`` passes ``test -x``/``test -w`` on ``path``."""
    result = subprocess.run(
        ["test", test, str(path)], user=user, group=_group_of(user), extra_groups=[]
    )
    if result.returncode != 0:
        raise PostfixLabError(
            f"user {user} fails test {test} on {path}: a parent directory is not "
            f"searchable; use a lab_dir under {LAB_PARENT}"
        )


def _group_of(user: str | int) -> int:
    entry = pwd.getpwnam(user) if isinstance(user, str) else None
    return entry.pw_gid if entry else int(user)


def _alive(pid: int) -> bool:
    """Running and not a zombie (PID 1 may reap an exited master late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


def _is_master(pid: int) -> bool:
    """Guards against a pid file whose pid now belongs to another process."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return command.endswith(b"/master") or command == b"master"


def _listening_ports(
    tables: Iterable[str] = ("/proc/net/tcp", "/proc/net/tcp6"),
) -> set[int]:
    """Local TCP ports in LISTEN state (state 0A in /proc/net/tcp)."""
    ports: set[int] = set()
    for table in tables:
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                local, state = row.split()[1], row.split()[3]
                if state == "0A":
                    ports.add(int(local.rpartition(":")[2], 16))
    return ports


def _smtp_banner(port: int) -> bool:
    """Whether 127.0.0.1:port greets with 220."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            with sock.makefile("rb") as reader:
                banner = reader.readline()
            sock.sendall(b"QUIT\r\n")
    except OSError:
        return False
    return banner.startswith(b"220")


def _parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)  # guaranteed by policy.default
    return message
