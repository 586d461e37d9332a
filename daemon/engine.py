"""Where scans run: threads in this process, or a pool of worker processes.

Parsing and feature extraction are Python and hold the GIL, so threads
give concurrency but not parallelism. With ``[daemon] scan_processes = N``
the daemon keeps its event loop (milter, proxy, log, metrics) in the main
process and sends each message to one of N worker processes, each with its
own copy of the model: scans then use every core. Workers are spawned (not
forked: the main process has threads) and warmed up before the daemon says
it is ready, so no message waits for a model to load.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Protocol

from .auth import DkimVerifier, system_dns_lookup
from .config import Config
from .features import FeatureExtractor
from .message import Limits
from .model import Model
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


class ScanEngine(Protocol):
    """Runs ``Scanner.scan`` somewhere and says which model it uses."""

    model_version: str

    async def scan(self, raw: bytes, mail_from: str) -> ScanResult: ...

    def close(self) -> None: ...


def build_scanner(config: Config) -> Scanner:
    """Load the configured model and the extractor that feeds it."""
    model = Model.load(serving_model_dir(config))
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


_WORKER_SCANNER: Scanner | None = None


def _init_worker(config: Config) -> None:
    global _WORKER_SCANNER  # one scanner per worker process
    _WORKER_SCANNER = build_scanner(config)


def _scan_in_worker(raw: bytes, mail_from: str) -> ScanResult:
    assert _WORKER_SCANNER is not None  # set by the pool initializer
    return _WORKER_SCANNER.scan(raw, mail_from)


def _worker_model_version() -> str:
    assert _WORKER_SCANNER is not None
    return _WORKER_SCANNER.model.version


class ProcessEngine:
    """Scans in N spawned worker processes, each holding the model."""

    def __init__(self, config: Config, processes: int) -> None:
        self.processes = processes
        self._executor = ProcessPoolExecutor(
            processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(config,),
        )
        self.model_version = ""

    async def start(self) -> None:
        """Load the model in every worker; raises what loading raised."""
        loop = asyncio.get_running_loop()
        versions = await asyncio.gather(
            *(
                loop.run_in_executor(self._executor, _worker_model_version)
                for _ in range(self.processes * 2)
            )
        )
        self.model_version = versions[0]
        log.info(
            "%d scan worker processes ready, model %s",
            self.processes,
            self.model_version,
        )

    async def scan(self, raw: bytes, mail_from: str) -> ScanResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, _scan_in_worker, raw, mail_from
        )

    def close(self) -> None:
        """Stop taking work; scans already running finish."""
        self._executor.shutdown(wait=False, cancel_futures=False)


async def make_engine(config: Config) -> ScanEngine:
    """The engine ``[daemon] scan_processes`` asks for, ready to scan."""
    if config.daemon.scan_processes > 0:
        engine = ProcessEngine(config, config.daemon.scan_processes)
        try:
            await engine.start()
        except BaseException:
            engine.close()
            raise
        return engine
    loop = asyncio.get_running_loop()
    scanner = await loop.run_in_executor(None, build_scanner, config)
    return ThreadEngine(scanner)
