"""Where scans run: threads in this process, or a pool of worker processes.

Parsing and feature extraction are Python and hold the GIL, so threads
give concurrency but not parallelism. With ``[daemon] workers = N`` (N of
2 or more; the default "auto" is one per usable core) the daemon keeps its
event loop (milter, proxy, verdict log, metrics) in the main process and
sends each message to one of N worker processes, each with its own copy of
the model: scans then use every core, while one process still owns the
listeners, the single SQLite writer and the one metrics registry. Workers
are spawned (not forked: the main process has threads) and every one has
loaded the model before the daemon says it is ready.

Workers ignore SIGINT and SIGHUP, which a terminal sends to the whole
process group: the main process decides when they stop (it shuts the pool
down after the scans in flight). SIGTERM keeps its default, because the
pool itself uses it to end the workers of a broken pool; the systemd unit
has ``KillMode=mixed`` so that ``systemctl stop`` signals the main process
only. A worker that dies anyway (killed, out of memory) breaks the pool:
the scans it held fail (and follow ``[policy] on_error``) and the next scan
starts a new pool.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Protocol

from .auth import DkimVerifier, system_dns_lookup
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
    "make_engine",
]

log = logging.getLogger(__name__)

THREADS = 4
WARMUP_TIMEOUT_S = 120.0
"""Seconds for every worker to start and load the model."""
IGNORED_IN_WORKERS = (signal.SIGINT, signal.SIGHUP)


class ScanEngine(Protocol):
    """Runs ``Scanner.scan`` somewhere and says which model it uses."""

    model_version: str

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


class ThreadEngine:
    """Scans in a small thread pool of this process."""

    def __init__(self, scanner: Scanner, threads: int = THREADS) -> None:
        self.scanner = scanner
        self.model_version = scanner.model.version
        self._executor: Executor = ThreadPoolExecutor(
            threads, thread_name_prefix="scan"
        )

    async def scan(self, raw: bytes, mail_from: str) -> ScanResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self.scanner.scan, raw, mail_from
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=False)


# ------------------------------------------------------------ in the workers

_WORKER_SCANNER: Scanner | Exception | None = None
_WORKER_READY: threading.Barrier | None = None


def _init_worker(
    config: Config, model_dir: Path, ready: threading.Barrier | None
) -> None:
    global _WORKER_SCANNER, _WORKER_READY  # one scanner per worker process
    for signum in IGNORED_IN_WORKERS:
        signal.signal(signum, signal.SIG_IGN)
    _WORKER_READY = ready
    try:
        _WORKER_SCANNER = build_scanner(config, model_dir)
    except Exception as exc:  # kept for _worker_ready: a dead worker says nothing
        _WORKER_SCANNER = exc


def _scanner() -> Scanner:
    if not isinstance(_WORKER_SCANNER, Scanner):
        raise ModelError(f"scan worker has no model: {_WORKER_SCANNER}")
    return _WORKER_SCANNER


def _scan_in_worker(raw: bytes, mail_from: str) -> ScanResult:
    return _scanner().scan(raw, mail_from)


def _worker_ready() -> tuple[int, str]:
    """This worker's pid and model, once every worker has loaded its model.

    Each worker runs one task at a time, so N of these waiting on a barrier
    for N parties are in N different workers.
    """
    if isinstance(_WORKER_SCANNER, Exception) and _WORKER_READY is not None:
        _WORKER_READY.abort()  # the others stop waiting at once
    scanner = _scanner()
    if _WORKER_READY is not None:
        _WORKER_READY.wait(WARMUP_TIMEOUT_S)
    return os.getpid(), scanner.model.version


# ------------------------------------------------------------ in the daemon


class ProcessEngine:
    """Scans in N spawned worker processes, each holding the same model."""

    def __init__(self, config: Config, processes: int) -> None:
        self.config = config
        self.processes = processes
        self.model_dir = serving_model_dir(config)  # one folder for every worker
        self._context = multiprocessing.get_context("spawn")
        self._ready = self._context.Barrier(processes)
        self._executor = self._new_pool(self._ready)
        self.model_version = ""

    def _new_pool(self, ready: threading.Barrier | None) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.processes,
            mp_context=self._context,
            initializer=_init_worker,
            initargs=(self.config, self.model_dir, ready),
        )

    async def start(self) -> None:
        """Start every worker and load the model; raises what loading raised."""
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(
            *(
                loop.run_in_executor(self._executor, _worker_ready)
                for _ in range(self.processes)
            ),
            return_exceptions=True,
        )
        ready: list[tuple[int, str]] = []
        errors: list[BaseException] = []
        for result in results:
            if isinstance(result, BaseException):
                errors.append(result)
            else:
                ready.append(result)
        if errors:  # the worker's own error, not the others' broken barrier
            errors.sort(key=lambda e: isinstance(e, threading.BrokenBarrierError))
            # Wait for workers still starting: they read the barrier we own.
            await loop.run_in_executor(None, self._executor.shutdown)
            raise errors[0]
        self.model_version = ready[0][1]
        pids = sorted(pid for pid, _ in ready)
        log.info(
            "%d scan worker processes ready (pids %s), model %s",
            self.processes,
            " ".join(map(str, pids)),
            self.model_version,
        )

    async def scan(self, raw: bytes, mail_from: str) -> ScanResult:
        loop = asyncio.get_running_loop()
        executor = self._executor
        try:
            result = await loop.run_in_executor(
                executor, _scan_in_worker, raw, mail_from
            )
        except BrokenProcessPool:
            self._replace(executor)
            raise
        log.debug(
            "message_id=%s scanned by worker %d in %.1f ms",
            result.message_id or "-",
            result.worker_pid,
            result.scan_s * 1000,
        )
        return result

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """Start a new pool in place of *broken*, once however many scans saw it."""
        if self._executor is not broken:
            return
        log.error(
            "a scan worker process died (killed? out of memory?); starting %d new ones",
            self.processes,
        )
        broken.shutdown(wait=False, cancel_futures=True)
        self._executor = self._new_pool(None)

    def close(self) -> None:
        """Stop taking work; scans already running finish."""
        self._executor.shutdown(wait=False, cancel_futures=False)


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
