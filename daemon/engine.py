"""Where scans run: threads in this process, or a pool of worker processes.

Parsing and feature extraction are Python and hold the GIL, so threads
give concurrency but not parallelism. With ``[daemon] workers = N`` (N of
2 or more; the default "auto" is one per usable core) the daemon keeps its
event loop (milter, proxy, verdict log, metrics) in the main process and
sends each message to one of N worker processes, each with its own copy of
the model: scans then use every core, while one process still owns the
listeners, the single SQLite writer and the one metrics registry. Workers
are fresh interpreters (not forked: the main process has threads), and
every one has loaded the model before the daemon says it is ready.

Each worker is joined to the event loop by a socket pair, and a scan is
one frame each way (the message out, a small result back): no thread
stands between a scan and its worker, so the event loop waits for the GIL
only behind the daemon's few helper threads (the verdict log writer, the
quarantine's fsyncs), which ``SWITCH_INTERVAL_S`` keeps short. Scans wait
in one queue in the daemon and a worker is given the next one only when it
has finished the last: a message never waits behind a large one on a busy
worker while another worker is free.

Workers ignore SIGINT and SIGHUP, which a terminal sends to the whole
process group: the main process decides when they stop (on close it ends
their input; they answer the scans already sent, then exit). SIGTERM keeps
its default; the systemd unit has ``KillMode=mixed`` so that ``systemctl
stop`` signals the main process only. A worker that dies anyway (killed,
out of memory) fails only the scans it held (they follow ``[policy]
on_error``), and a new worker starts in its place.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import gc
import itertools
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import BinaryIO, Protocol

from .auth import DkimVerifier, system_dns_lookup
from .canary import canary_failures
from .config import Config
from .features import FeatureExtractor
from .message import Limits
from .model import Model, ModelError
from .models_dir import serving_model_dir
from .scanner import Scanner, ScanResult

__all__ = [
    "ProcessEngine",
    "ScanEngine",
    "ThreadEngine",
    "build_scanner",
    "check_model",
    "checked_scanner",
    "make_engine",
    "restart_delay",
]

log = logging.getLogger(__name__)

THREADS = 4
SWITCH_INTERVAL_S = 0.001
"""GIL hand-over interval (Python's default is 5 ms): how long the event
loop may wait for the GIL behind scan threads (``workers = 1``) or the
helper threads (verdict log writer, quarantine fsyncs)."""
MALLOC_ARENAS = 2
"""glibc heaps for the daemon's threads; its default (8 per core) lets each
thread fragment a heap of its own, and the resident size grows with them."""
M_ARENA_MAX = -8  # glibc malloc.h
TRIM_AFTER_BYTES = 1024 * 1024
"""A worker hands freed heap back to the OS after a message this large:
glibc keeps it otherwise. (A fixed mmap threshold would do it for every
message, but costs some 0.7 ms of page faults per scan.)"""
WARMUP_TIMEOUT_S = 120.0
"""Seconds for every worker to start and load the model."""
IGNORED_IN_WORKERS = (signal.SIGINT, signal.SIGHUP)
RESTART_DELAY_S = 5.0
"""Pause before starting a worker again after one could not start."""
RESTART_MAX_DELAY_S = 300.0
"""The longest pause, after failures in a row (each doubles it)."""
IN_FLIGHT_PER_WORKER = 1
"""Scans sent to a worker before it answers; the rest wait in the daemon."""
JOIN_TIMEOUT_S = 10.0
"""Seconds to wait for a worker to exit once its socket is closed."""
WORKER_ENVIRONMENT = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
"""Workers scan one message at a time: one BLAS/OpenMP thread is enough."""
WORKER_COMMAND = (
    "import sys; from phishgate.daemon.engine import worker_main;"
    " worker_main(int(sys.argv[1]))"
)
"""How a worker starts: a fresh interpreter, given its end of the socket pair."""


class ScanEngine(Protocol):
    """Runs ``Scanner.scan`` somewhere and says which model it uses."""

    model_version: str

    @property
    def queued(self) -> int:
        """Scans waiting for a free worker (not those running)."""
        ...

    async def scan(self, raw: bytes, mail_from: str) -> ScanResult: ...

    def close(self) -> None: ...


def build_scanner(config: Config, model_dir: Path | None = None) -> Scanner:
    """Load the model (*model_dir*, else the configured one) and its extractor."""
    model = Model.load(model_dir or serving_model_dir(config))
    dkim = None
    if config.auth.dkim_verify:
        dkim = DkimVerifier(system_dns_lookup, timeout=config.auth.dns_timeout_s)
    limits = Limits(max_bytes=config.policy.max_scan_bytes)
    extractor = FeatureExtractor(
        dkim=dkim,
        trusted_authserv_ids=frozenset(
            a.lower() for a in config.auth.trusted_authserv_ids
        ),
        max_urls=limits.max_urls,
    )
    return Scanner(model, extractor, limits)


def checked_scanner(config: Config, model_dir: Path | None = None) -> Scanner:
    """:func:`build_scanner`, refused if it gets any canary message wrong."""
    scanner = build_scanner(config, model_dir)
    failures = canary_failures(scanner)
    if failures:
        raise ModelError(f"canary check failed: {'; '.join(failures[:3])}")
    return scanner


CHECK_NICENESS = 5
"""How far below the scans the model check runs (see :func:`check_model`)."""
CHECK_COMMAND = "from phishgate.daemon.engine import check_main; check_main()"


async def check_model(config: Config, model_dir: Path) -> str:
    """Load the model in *model_dir* and run the canary set; return its version.

    It runs in a fresh process at a lower CPU priority: the scans in flight
    lose little to it, and a model file that crashes LightGBM's loader
    takes down only that process. Raises :class:`ModelError` with the
    reason the model is refused.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHECK_COMMAND,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **WORKER_ENVIRONMENT},
    )
    request = pickle.dumps((config, model_dir), pickle.HIGHEST_PROTOCOL)
    try:
        out, err = await asyncio.wait_for(
            process.communicate(request), WARMUP_TIMEOUT_S
        )
    except BaseException as exc:  # timed out or cancelled: it must not linger
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        if isinstance(exc, TimeoutError):
            raise ModelError(
                f"model check took more than {WARMUP_TIMEOUT_S:.0f} s"
            ) from None
        raise
    try:
        kind, value = pickle.loads(out)
    except Exception:  # it died before answering (crash, killed, out of memory)
        detail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise ModelError(
            f"model check process ended with status {process.returncode}"
            f" {detail[0]}".rstrip()
        ) from None
    if kind != "ok":
        raise ModelError(str(value))
    return str(value)


def check_main() -> None:
    """The model check process: (config, folder) in on stdin, a verdict out.

    The verdict goes out on the original stdout; file descriptor 1 then
    points at stderr, so what LightGBM's C library prints cannot mix with it.
    """
    for signum in IGNORED_IN_WORKERS:  # the daemon decides when it ends
        signal.signal(signum, signal.SIG_IGN)
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    with contextlib.suppress(OSError):  # a sandbox may forbid it; check anyway
        os.nice(CHECK_NICENESS)
    tune_malloc()
    config, model_dir = pickle.load(sys.stdin.buffer)
    try:
        reply: tuple[str, str] = (
            "ok",
            checked_scanner(config, model_dir).model.version,
        )
    except Exception as exc:  # the daemon refuses the model with this text
        reply = ("error", str(exc) or type(exc).__name__)
    with os.fdopen(reply_fd, "wb") as out:
        out.write(pickle.dumps(reply, pickle.HIGHEST_PROTOCOL))


class ThreadEngine:
    """Scans in a small thread pool of this process.

    A scan thread holds the GIL for up to the interpreter's switch interval
    before the event loop gets it back after any system call; the default
    5 ms would be added to a reply's latency several times, so the engine
    shortens it for the process.
    """

    def __init__(self, scanner: Scanner, threads: int = THREADS) -> None:
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.scanner = scanner
        self.model_version = scanner.model.version
        self._executor: Executor = ThreadPoolExecutor(
            threads, thread_name_prefix="scan"
        )

    @property
    def queued(self) -> int:
        """Always 0: scans wait in the executor and count as in flight."""
        return 0

    async def scan(self, raw: bytes, mail_from: str) -> ScanResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self.scanner.scan, raw, mail_from
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=False)


# ------------------------------------------------------------ in the workers
#
# A worker and the daemon talk over one socket pair: frames of a 4-byte
# big-endian length and a pickle. The daemon sends (raw, mail_from); the
# worker answers, in order, ("ok", ScanResult) or ("error", exception). Its
# first frame is ("ready", (pid, model version)) or ("error", why not).
#
# A model swap is two control frames. ("stage", token, config, folder)
# loads the new model (already checked by check_model) in a thread of the
# worker while it goes on scanning with the old one, and answers out of
# turn with ("staged", (token, version)) or ("stage-failed", (token,
# exception)). Once every worker has staged it, ("commit", token) makes
# it the one used, between two scans: what was sent before the commit is
# scanned on the old model, what comes after on the new one. ("drop",
# token) forgets a staged model.

_FRAME = struct.Struct("!I")
STAGE_REPLIES = frozenset(("staged", "stage-failed"))


class _Staging:
    """A worker's models loaded beside the one in use, by swap token."""

    def __init__(self, send: Callable[[tuple[str, object]], None]) -> None:
        self.send = send
        self.ready: dict[int, Scanner] = {}
        self._lock = threading.Lock()

    def start(self, token: int, config: Config, model_dir: Path) -> None:
        threading.Thread(
            target=self._load,
            args=(token, config, model_dir),
            name="stage-model",
            daemon=True,
        ).start()

    def _load(self, token: int, config: Config, model_dir: Path) -> None:
        try:
            scanner = build_scanner(config, model_dir)
        except Exception as exc:  # the daemon refuses the swap with it
            self.send(("stage-failed", (token, exc)))
            return
        with self._lock:
            self.ready[token] = scanner
        self.send(("staged", (token, scanner.model.version)))

    def take(self, token: int) -> Scanner | None:
        with self._lock:
            scanner = self.ready.pop(token, None)
            self.ready.clear()  # older tokens were dropped or superseded
        return scanner

    def drop(self, token: int) -> None:
        with self._lock:
            self.ready.pop(token, None)


def worker_main(fd: int) -> None:
    """A scan worker on socket ``fd``: load the model, then scan until EOF.

    The first frame from the daemon is (config, model folder).
    """
    for signum in IGNORED_IN_WORKERS:
        signal.signal(signum, signal.SIG_IGN)
    tune_malloc()
    sock = socket.socket(fileno=fd)
    stream = sock.makefile("rb")
    setup = _read_frame(stream)
    if setup is None:
        return
    config, model_dir = pickle.loads(setup)
    try:
        scanner = build_scanner(config, model_dir)
    except Exception as exc:  # the daemon raises it from start()
        _send_frame(sock, ("error", exc))
        return
    release_free_memory()
    _send_frame(sock, ("ready", (os.getpid(), scanner.model.version)))
    sending = threading.Lock()  # the staging thread answers too

    def send(reply: tuple[str, object]) -> None:
        with sending:
            _send_frame(sock, reply)

    staging = _Staging(send)
    while (request := _read_frame(stream)) is not None:
        message = pickle.loads(request)
        if isinstance(message[0], str):  # a control frame; scans start with bytes
            kind, token, *rest = message
            if kind == "stage":
                staging.start(token, *rest)
            elif kind == "commit":
                scanner = staging.take(token) or scanner
                release_free_memory()
            else:
                staging.drop(token)
            continue
        raw, mail_from = message
        try:
            reply: tuple[str, object] = ("ok", scanner.scan(raw, mail_from))
        except Exception as exc:  # the scan fails, the worker carries on
            reply = ("error", exc)
        send(reply)
        if len(raw) >= TRIM_AFTER_BYTES:
            del raw, reply
            trim_heap()


def _read_frame(stream: BinaryIO) -> bytes | None:
    """The next frame's payload; None at end of stream."""
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    (length,) = _FRAME.unpack(head)
    payload = stream.read(length)
    return payload if len(payload) == length else None


def _send_frame(sock: socket.socket, reply: tuple[str, object]) -> None:
    try:
        payload = pickle.dumps(reply, pickle.HIGHEST_PROTOCOL)
    except Exception:  # an exception that does not pickle: send its text
        payload = pickle.dumps((reply[0], ModelError(repr(reply[1]))))
    sock.sendall(_FRAME.pack(len(payload)) + payload)


def tune_malloc() -> None:
    """Cap glibc's malloc arenas (``MALLOC_ARENAS``); elsewhere a no-op."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def trim_heap() -> None:
    """Return the free top and free pages of glibc's heap to the OS."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def release_free_memory() -> None:
    """Give freed heap back to the OS (the model's JSON dump is large)."""
    gc.collect()
    trim_heap()


# ------------------------------------------------------------ in the daemon


class _Worker:
    """One worker process and the scans sent to it, answered in order."""

    def __init__(self, engine: ProcessEngine, slot: int) -> None:
        self.slot = slot
        self._engine = engine
        parent, child = socket.socketpair()
        with child:
            self.process = subprocess.Popen(
                [sys.executable, "-c", WORKER_COMMAND, str(child.fileno())],
                stdin=subprocess.DEVNULL,
                pass_fds=(child.fileno(),),
                env={**os.environ, **WORKER_ENVIRONMENT},
            )
        self._socket = parent
        _STARTED.add(self)
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[tuple[int, str]] = loop.create_future()
        self.ready.add_done_callback(_retrieve)
        self.pending: deque[asyncio.Future[ScanResult]] = deque()
        setup = pickle.dumps((engine.config, engine.model_dir), pickle.HIGHEST_PROTOCOL)
        self._unsent: list[bytes] = [_FRAME.pack(len(setup)), setup]
        self._writer: asyncio.StreamWriter | None = None
        self.task = loop.create_task(self._run(parent))

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        """Starting, or started and running: scans given to it get answered."""
        started_ok = not self.ready.done() or self.ready.exception() is None
        return started_ok and not self.task.done()

    @property
    def running(self) -> bool:
        """Ready (its model loaded) and its process not ended."""
        return (
            self.ready.done()
            and self.ready.exception() is None
            and not self.task.done()
        )

    @property
    def free(self) -> bool:
        """Ready, running and with room for another scan."""
        return self.running and len(self.pending) < IN_FLIGHT_PER_WORKER

    def submit(self, job: _Job) -> None:
        """Send one scan; its answer settles ``job.future``."""
        self.pending.append(job.future)
        payload = pickle.dumps((job.raw, job.mail_from), pickle.HIGHEST_PROTOCOL)
        self._write(_FRAME.pack(len(payload)))
        self._write(payload)

    def control(self, message: tuple[object, ...]) -> None:
        """Send a swap control frame, in turn with the scans."""
        payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        self._write(_FRAME.pack(len(payload)))
        self._write(payload)

    def _write(self, data: bytes) -> None:
        if self._writer is None:
            self._unsent.append(data)
        else:
            self._writer.write(data)

    def stop(self) -> None:
        """No more scans: the worker answers those sent, then sees EOF and exits."""
        if self._writer is not None and self._writer.can_write_eof():
            self._writer.write_eof()

    async def _run(self, sock: socket.socket) -> None:
        reader, self._writer = await asyncio.open_connection(sock=sock)
        for data in self._unsent:
            self._writer.write(data)
        self._unsent.clear()
        if self._engine.closing:
            self.stop()
        try:
            await self._answers(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            self._ended()
        finally:
            self._writer.close()
        # The worker exits at EOF; reap it without blocking the loop.
        loop = asyncio.get_running_loop()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await loop.run_in_executor(None, self.process.wait, JOIN_TIMEOUT_S)
        _STARTED.discard(self)

    def end(self) -> None:
        """At exit: close the socket and wait for the worker to finish its scan."""
        self._socket.close()
        try:
            self.process.wait(JOIN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    async def _answers(self, reader: asyncio.StreamReader) -> None:
        while True:
            (length,) = _FRAME.unpack(await reader.readexactly(_FRAME.size))
            kind, value = pickle.loads(await reader.readexactly(length))
            if kind in STAGE_REPLIES:  # out of turn: not a scan's answer
                self._engine.staged(self.slot, kind, value)
            elif self.ready.done():
                _settle(self.pending.popleft(), kind, value)
                self._engine.dispatch()
            elif kind == "ready":
                self.ready.set_result(value)
                self._engine.started(self)
            else:
                self.ready.set_exception(value)
                self._fail(BrokenProcessPool(f"scan worker could not start: {value}"))
                self._engine.staged(self.slot, "stage-failed", (None, value))
                self._engine.start_failed(self, value)
                return

    def _ended(self) -> None:
        """The worker closed its socket: asked to (engine closing) or died."""
        error = BrokenProcessPool(f"scan worker {self.pid} died")
        self._fail(error)
        self._engine.staged(self.slot, "stage-failed", (None, error))
        if not self.ready.done():  # died while loading the model
            self.ready.set_exception(error)
            self._engine.start_failed(self, error)
        elif not self._engine.closing:
            self._engine.replace(self)

    def _fail(self, error: BaseException) -> None:
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(error)


class _Job:
    """A scan waiting in the daemon for a free worker."""

    __slots__ = ("future", "mail_from", "raw")

    def __init__(self, raw: bytes, mail_from: str) -> None:
        self.raw = raw
        self.mail_from = mail_from
        self.future: asyncio.Future[ScanResult] = (
            asyncio.get_running_loop().create_future()
        )


_STARTED: set[_Worker] = set()
"""Workers not yet reaped: the daemon waits for them when it exits."""


@atexit.register
def _end_workers() -> None:
    """Let every worker answer what it holds and exit before the daemon does."""
    for worker in list(_STARTED):
        worker.end()


def _settle(future: asyncio.Future[ScanResult], kind: str, value: object) -> None:
    """Hand a worker's answer to the scan waiting for it, unless it gave up."""
    if future.done():  # timed out or cancelled; the answer comes too late
        return
    if kind == "ok":
        future.set_result(value)  # type: ignore[arg-type]  # a ScanResult
    else:
        future.set_exception(value)  # type: ignore[arg-type]  # an exception


def _retrieve(future: asyncio.Future[tuple[int, str]]) -> None:
    """Mark a worker's start error as seen: a replacement has no one awaiting."""
    if not future.cancelled():
        future.exception()


class ProcessEngine:
    """Scans in N spawned worker processes, each holding the same model.

    Each worker is connected to the event loop by a socket pair: a scan is
    one frame out and one frame back, with no threads in between. Scans
    queue here, first come first served, and go to whichever worker frees
    up first.
    """

    def __init__(self, config: Config, processes: int) -> None:
        # The event loop gets the GIL back sooner from the daemon's helper
        # threads (verdict log writer, quarantine fsyncs) after each send.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.config = config
        self.processes = processes
        self.model_dir = serving_model_dir(config)  # one folder for every worker
        self.closing = False
        self.model_version = ""
        self._workers: list[_Worker] = []
        self._serving = False  # set once start() has succeeded
        self._queue: deque[_Job] = deque()
        self._tokens = itertools.count(1)
        self._staging: tuple[int, dict[int, asyncio.Future[str]]] | None = None
        self._replaced_in_swap = False
        self._start_failures = [0] * processes  # in a row, per slot

    @property
    def pids(self) -> list[int]:
        """The worker processes now serving, in slot order."""
        return [worker.pid for worker in self._workers]

    def is_alive(self, pid: int) -> bool:
        """Whether the worker process ``pid`` is one of ours and running."""
        return any(w.pid == pid and w.process.poll() is None for w in self._workers)

    async def start(self) -> None:
        """Start every worker and load the model; raises what loading raised."""
        self._workers = [_Worker(self, slot) for slot in range(self.processes)]
        results = await asyncio.gather(
            # shield: a timeout must not cancel a worker's own ready future
            *(
                asyncio.wait_for(asyncio.shield(w.ready), WARMUP_TIMEOUT_S)
                for w in self._workers
            ),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:  # a worker's own error before the pipes it broke
            errors.sort(key=lambda e: isinstance(e, BrokenProcessPool))
            self.close()
            raise errors[0]
        ready = [r for r in results if not isinstance(r, BaseException)]
        self.model_version = ready[0][1]
        self._serving = True
        log.info(
            "%d scan worker processes ready (pids %s), model %s",
            self.processes,
            " ".join(map(str, sorted(pid for pid, _ in ready))),
            self.model_version,
        )

    async def scan(self, raw: bytes, mail_from: str) -> ScanResult:
        if self.closing:
            raise BrokenProcessPool("scan engine closed")
        if self._serving and not any(w.alive for w in self._workers):
            raise BrokenProcessPool("no scan worker running")
        job = _Job(raw, mail_from)
        self._queue.append(job)
        self.dispatch()
        try:
            result = await job.future
        except asyncio.CancelledError:  # timed out: it need not wait its turn
            with contextlib.suppress(ValueError):
                self._queue.remove(job)
            raise
        log.debug(
            "message_id=%s scanned by worker %d in %.1f ms",
            result.message_id or "-",
            result.worker_pid,
            result.scan_s * 1000,
        )
        return result

    async def swap(self, config: Config) -> None:
        """Serve the model *config* names, in the same workers; no restart.

        A low-priority process first loads it and checks it on the canary
        set (:func:`check_model`); then each worker in turn loads it beside
        the one in use, scanning meanwhile; only when all have it do they
        switch, each between two scans. If any cannot load it, none
        switches and this raises why.
        """
        model_dir = serving_model_dir(config)
        await check_model(config, model_dir)
        if not self.all_running:
            raise ModelError("a scan worker is not running (restarting); try again")
        token = next(self._tokens)
        loop = asyncio.get_running_loop()
        waiting = {w.slot: loop.create_future() for w in self._workers}
        self._staging = (token, waiting)
        self._replaced_in_swap = False
        versions = []
        try:
            # One worker at a time: the others scan at full speed meanwhile.
            for worker in list(self._workers):
                worker.control(("stage", token, config, model_dir))
                versions.append(
                    await asyncio.wait_for(
                        asyncio.shield(waiting[worker.slot]), WARMUP_TIMEOUT_S
                    )
                )
            if self._replaced_in_swap:  # its new worker loaded the old model
                raise ModelError("a scan worker was restarted during the swap")
        except BaseException as exc:
            for worker in self._workers:
                worker.control(("drop", token))
            if isinstance(exc, TimeoutError):
                raise ModelError(
                    f"a scan worker did not load the model in {WARMUP_TIMEOUT_S:.0f} s"
                ) from exc
            if isinstance(exc, BrokenProcessPool):
                why = f"a scan worker stopped during the swap: {exc}"
                raise ModelError(why) from exc
            raise
        finally:
            self._staging = None
        for worker in self._workers:
            worker.control(("commit", token))
        self.config, self.model_dir, self.model_version = config, model_dir, versions[0]
        log.info("scan workers switched to model %s", self.model_version)

    @property
    def queued(self) -> int:
        """Scans waiting for a free worker."""
        return len(self._queue)

    @property
    def all_running(self) -> bool:
        """Every worker has its model loaded and runs (none restarting)."""
        return all(w.running for w in self._workers)

    @property
    def start_failing(self) -> bool:
        """A worker could not load the model at its last start."""
        return any(self._start_failures)

    def dispatch(self) -> None:
        """Hand queued scans to free workers, oldest first."""
        queue = self._queue
        while queue:
            worker = next((w for w in self._workers if w.free), None)
            if worker is None:
                return
            job = queue.popleft()
            if not job.future.done():  # its caller gave up (timeout) meanwhile
                worker.submit(job)

    def staged(self, slot: int, kind: str, value: tuple[int | None, object]) -> None:
        """A worker's answer to a stage frame (or its death while staging)."""
        if self._staging is None:
            return
        token, waiting = self._staging
        future = waiting.get(slot)
        if future is None or future.done() or value[0] not in (token, None):
            return
        if kind == "staged":
            future.set_result(str(value[1]))
        else:
            error = value[1]
            future.set_exception(
                error if isinstance(error, BaseException) else ModelError(str(error))
            )

    def replace(self, dead: _Worker) -> None:
        """Start a new worker in the slot of one that died."""
        log.error(
            "scan worker process %d died (killed? out of memory?); starting a new one",
            dead.pid,
        )
        self._start_in(dead.slot)

    def started(self, worker: _Worker) -> None:
        """A worker has loaded the model and takes scans."""
        self._start_failures[worker.slot] = 0
        self.dispatch()

    def start_failed(self, worker: _Worker, error: object) -> None:
        """A replacement worker could not load the model: try again later.

        Scans wait for a worker while one is starting or running; with none,
        they fail at once (and follow ``[policy] on_error``) instead of
        waiting out their timeout. Each failure in a row doubles the wait
        before the next try, up to ``RESTART_MAX_DELAY_S``.
        """
        if (
            not self._serving
            or self.closing
            or self._workers[worker.slot] is not worker
        ):
            return  # start() reports a first start's failure itself
        failures = self._start_failures[worker.slot] = (
            self._start_failures[worker.slot] + 1
        )
        delay = restart_delay(failures)
        log.error(
            "scan worker process %d could not start (%s); trying again in %.0f s",
            worker.pid,
            error,
            delay,
        )
        self._fail_queue_if_none_alive()
        asyncio.get_running_loop().call_later(delay, self._restart, worker)

    def _restart(self, failed: _Worker) -> None:
        if not self.closing and self._workers[failed.slot] is failed:
            self._start_in(failed.slot)

    def _start_in(self, slot: int) -> None:
        if self._staging is not None:  # the new worker loads the old model
            self._replaced_in_swap = True
        self._workers[slot] = _Worker(self, slot)

    def _fail_queue_if_none_alive(self) -> None:
        if any(w.alive for w in self._workers):
            return
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(BrokenProcessPool("no scan worker running"))

    def close(self) -> None:
        """Stop taking work; scans already taken finish, then the workers exit.

        Scans still queued are handed out now, to be answered before the
        workers see the end of their input.
        """
        self.closing = True
        running = [w for w in self._workers if w.alive]
        while self._queue and running:
            job = self._queue.popleft()
            if not job.future.done():
                min(running, key=lambda w: len(w.pending)).submit(job)
        while self._queue:  # no worker left to scan them
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(BrokenProcessPool("scan engine closed"))
        for worker in self._workers:
            worker.stop()

    async def wait_closed(self) -> None:
        """After :meth:`close`: wait until every worker has answered and exited."""
        await asyncio.gather(*(worker.task for worker in self._workers))


def restart_delay(failures: int) -> float:
    """The pause before the next start after *failures* failed ones in a row."""
    doublings = min(max(failures - 1, 0), 16)  # 2**16 * 5 s is past the cap
    return float(min(RESTART_DELAY_S * 2**doublings, RESTART_MAX_DELAY_S))


def worker_count(config: Config) -> int:
    """``[daemon] workers`` as a number; "auto" is the cores we may run on."""
    workers = config.daemon.workers
    if workers == "auto":
        return len(os.sched_getaffinity(0))
    return int(workers)


async def make_engine(config: Config, scanner: Scanner | None = None) -> ScanEngine:
    """The engine ``[daemon] workers`` asks for, ready to scan.

    With one worker, *scanner* (already loaded and checked) is used as it
    is; worker processes always load their own copy of the model.
    """
    tune_malloc()
    workers = worker_count(config)
    if workers >= 2:
        engine = ProcessEngine(config, workers)
        try:
            await engine.start()
        except BaseException:
            engine.close()
            raise
        return engine
    if scanner is None:
        loop = asyncio.get_running_loop()
        scanner = await loop.run_in_executor(None, build_scanner, config)
    return ThreadEngine(scanner)
