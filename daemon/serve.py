"""``phishgate serve``: startup, serve, shutdown, reload.

The contract (also in the README):

* SIGTERM or SIGINT: stop accepting, let in-flight messages finish for up to
  ``SHUTDOWN_DEADLINE_S`` seconds, cancel what is left (Postfix applies its
  ``milter_default_action`` to those), flush the verdict log, exit 0.
* SIGHUP: re-read the configuration file and the model; a bad file or model
  is refused with one log line and the old ones stay in service. So is a
  change that only a restart can apply ([milter], [metrics], the state
  directory); the log line names the key.
* Under systemd (``NOTIFY_SOCKET``): ``READY=1`` once listening,
  ``RELOADING=1``/``READY=1`` around a reload, ``STOPPING=1`` on shutdown,
  and ``WATCHDOG=1`` from the event loop every half ``WatchdogSec=``, from
  the start of startup to the end of shutdown.

Signal handlers only set an event or schedule a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from phishgate.milter import MilterOptions, MilterServer, TempFail
from phishgate.milter import protocol as milter_protocol
from phishgate.milter.options import DEFAULT_ACTIONS

from .config import Config, ConfigError, load_config
from .engine import (
    ProcessEngine,
    ScanEngine,
    build_scanner,
    check_model,
    make_engine,
    worker_count,
)
from .metrics import Metrics
from .milterfront import MilterFrontDoor
from .model import ModelError
from .models_dir import serving_model_dir
from .monitor import Monitor
from .pipeline import Pipeline
from .proxy import ProxyHandler, ProxyServer
from .quarantine import QuarantineStore, store_decision
from .reload import ModelWatcher
from .systemd import notify, ping_watchdog, watchdog_interval
from .verdictlog import DB_NAME, VerdictLog

__all__ = ["Daemon", "run"]

log = logging.getLogger(__name__)

SHUTDOWN_DEADLINE_S = 20.0
AIOSMTPD_LOGGER = "mail.log"


class Daemon:
    """One process serving the milter and the metrics endpoint."""

    def __init__(self, config: Config, config_path: str | None) -> None:
        self.config = config
        self.config_path = config_path
        self.metrics = Metrics()
        self.stopping = asyncio.Event()
        self.verdict_log: VerdictLog | None = None
        self.pipeline: Pipeline | None = None
        self.milter: MilterServer | None = None
        self.proxy: ProxyServer | None = None
        self.store: QuarantineStore | None = None
        self.watcher: ModelWatcher | None = None
        self._reload_task: asyncio.Task[None] | None = None
        self._reload_again = False
        self._drift_task: asyncio.Task[None] | None = None
        self.monitor = Monitor(self.metrics, config_path)
        self._watchdog_task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        self._start_watchdog()
        config = self.config
        engine = await make_engine(config)
        state_dir = config.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.verdict_log = VerdictLog(state_dir, on_drop=self.metrics.log_dropped.inc)
        self.verdict_log.start()
        pipeline = Pipeline(config, engine, self.metrics, self.verdict_log)
        self.pipeline = pipeline
        self.metrics.scan_queue.set_function(lambda: pipeline.engine.queued)
        self.metrics.set_model(engine.model_version)
        self.metrics.build.info({"version": _version()})
        self.monitor.count_operations(state_dir / DB_NAME)
        if config.metrics.listen:
            with _naming("metrics.listen", config.metrics.listen):
                self.metrics.serve(config.metrics.listen)
        self.store = QuarantineStore(state_dir, config.quarantine.retention_days)
        store = self.store
        front = MilterFrontDoor(
            self.pipeline,
            lambda: self.config.policy.quarantine,
            lambda envelope, raw, decision: store_decision(
                store, envelope, raw, decision
            ),
        )
        options = MilterOptions(
            max_body_bytes=config.milter.max_body_bytes,
            progress_interval=config.milter.progress_interval_s,
            fallback=TempFail(),
            # Report addresses are taken off a message's recipients.
            actions=DEFAULT_ACTIONS
            | milter_protocol.SMFIF_ADDRCPT
            | milter_protocol.SMFIF_DELRCPT,
        )
        self.milter = MilterServer(
            config.milter.listen,
            front,
            options,
            socket_mode=int(config.milter.socket_mode, 8),
        )
        with _naming("milter.listen", config.milter.listen):
            await self.milter.start()
        milter = self.milter
        self.metrics.milter_connections.set_function(lambda: milter.connections)
        if config.proxy.listen:
            await self._start_proxy(config)
        self.watcher = ModelWatcher(state_dir / "models", self._schedule_reload)
        self.watcher.start()
        self._drift_task = asyncio.get_running_loop().create_task(self._watch_drift())
        log.info(
            "phishgate %s serving milter on %s, proxy on %s, metrics on %s, "
            "model %s, state in %s",
            _version(),
            config.milter.listen,
            config.proxy.listen or "(off)",
            config.metrics.listen or "(off)",
            engine.model_version,
            state_dir,
        )
        notify("READY=1")

    def _start_watchdog(self) -> None:
        """Ping systemd's watchdog from this loop if ``WatchdogSec=`` is set."""
        interval = watchdog_interval()
        if interval is None:
            return
        log.debug("systemd watchdog: WATCHDOG=1 every %.1f s", interval)
        loop = asyncio.get_running_loop()
        self._watchdog_task = loop.create_task(ping_watchdog(interval))

    async def _watch_drift(self) -> None:
        """Every ``interval_s``: remove expired quarantine entries, then
        refresh drift, live quality and store gauges."""
        loop = asyncio.get_running_loop()
        while True:
            version = self._pipeline().engine.model_version
            try:
                await loop.run_in_executor(None, self._expire_quarantine)
            except Exception:  # next round tries again; never stop monitoring
                log.exception("quarantine: expiry failed")
            try:
                await loop.run_in_executor(
                    None, self.monitor.refresh, self.config, version
                )
            except Exception:  # a monitoring error must never touch mail
                log.exception("monitoring refresh failed")
            # a schedule, not synchronisation
            await asyncio.sleep(self.config.drift.interval_s)

    def _expire_quarantine(self) -> None:
        """Enforce ``[quarantine] retention_days`` on phishgate's own store."""
        if self.store is None:
            return
        removed = self.store.purge(self.config.quarantine.retention_days)
        if removed:
            log.info("quarantine: %d expired entries removed", len(removed))

    async def _start_proxy(self, config: Config) -> None:
        host, _, port = config.proxy.reinject.rpartition(":")
        handler = ProxyHandler(
            lambda: self._pipeline(),
            (host.strip("[]"), int(port)),
            lambda: self.store,
            config.proxy.timeout_s,
        )
        self.proxy = ProxyServer(
            config.proxy.listen,
            handler,
            hostname=config.proxy.hostname,
            max_message_bytes=config.proxy.max_message_bytes,
        )
        with _naming("proxy.listen", config.proxy.listen):
            await self.proxy.start()

    def _pipeline(self) -> Pipeline:
        assert self.pipeline is not None  # set by startup()
        return self.pipeline

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._schedule_reload)

    def _schedule_reload(self) -> None:
        """Start a reload, or ask for one more if one is running.

        A request that arrives while a reload reads the old files must not
        be lost (a rollback right after an activation), so it is queued.
        """
        if self._reload_task is not None and not self._reload_task.done():
            self._reload_again = True
            return
        self._reload_task = asyncio.get_running_loop().create_task(self._reloads())

    async def _reloads(self) -> None:
        self._reload_again = True
        while self._reload_again:
            self._reload_again = False
            await self.reload()

    async def reload(self) -> None:
        """Check the new config and model aside; swap only if both are good."""
        # systemd's Type=notify-reload pairs RELOADING=1 with the monotonic
        # time of the request; without it `systemctl reload` may not wait.
        notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            config = load_config(self.config_path)
            _check_reloadable(self.config, config)
            assert self.pipeline is not None  # set by startup()
            old_version = self.pipeline.engine.model_version
            engine = await self._next_engine(config)
        except (ConfigError, ModelError, OSError) as exc:
            self._refuse_reload(str(exc))
            if isinstance(exc, ModelError):
                self.metrics.model_reloads.labels(result="refused").inc()
        except Exception:  # a bug in loading must not leave systemd "reloading"
            log.exception("reload failed")
            self._refuse_reload("internal error (traceback above)")
        else:
            self._swap(config, engine, old_version)
        notify("READY=1")

    async def _next_engine(self, config: Config) -> ScanEngine:
        """The engine to serve *config*'s model with, loaded and checked.

        Worker processes load it beside the old one and switch in place
        (starting new processes would take seconds of CPU from the scans in
        flight) unless a worker cannot load its model; otherwise it is checked in a
        low-priority process of its own, then loaded by new workers, or,
        with one worker, in a thread here while the loop keeps serving mail.
        """
        assert self.pipeline is not None
        current = self.pipeline.engine
        if (
            isinstance(current, ProcessEngine)
            and worker_count(config) == current.processes
            and not current.start_failing
        ):
            await current.swap(config)
            return current
        # Otherwise new workers: also the way out when the serving model no
        # longer loads and its workers keep failing to restart.
        await check_model(config, serving_model_dir(config))
        if worker_count(config) >= 2:
            return await make_engine(config)  # the new workers load their own
        scanner = await asyncio.get_running_loop().run_in_executor(
            None, build_scanner, config
        )
        return await make_engine(config, scanner)

    def _refuse_reload(self, why: str) -> None:
        log.error("reload refused, keeping the running configuration: %s", why)
        self.metrics.config_reloads.labels(result="refused").inc()

    def _swap(self, config: Config, engine: ScanEngine, old_version: str) -> None:
        assert self.pipeline is not None  # set by startup()
        self.config = config
        self.pipeline.reconfigure(config, engine)
        if engine.model_version != old_version:
            self.metrics.model_reloads.labels(result="ok").inc()
        configure_logging(config)
        self.metrics.config_reloads.labels(result="ok").inc()
        log.info("reloaded %s; model %s", config.source, engine.model_version)

    async def serve(self) -> None:
        await self.stopping.wait()

    async def shutdown(self) -> None:
        notify("STOPPING=1")
        if self._drift_task is not None:
            self._drift_task.cancel()
        if self.watcher is not None:
            self.watcher.stop()
        log.info(
            "shutting down: finishing in-flight messages (deadline %.0f s)",
            SHUTDOWN_DEADLINE_S,
        )
        if self.proxy is not None:
            self.proxy.close()
        if self.milter is not None:
            self.milter.close()
            cancelled = await self.milter.wait_closed(SHUTDOWN_DEADLINE_S)
            if cancelled:
                log.warning(
                    "shutdown deadline passed: %d connections cancelled", cancelled
                )
        await self._drain_pipeline(SHUTDOWN_DEADLINE_S)
        if self.pipeline is not None:
            self.pipeline.close()
        if self.verdict_log is not None:
            self.verdict_log.close()
        if self.store is not None:
            self.store.close()
        if self._watchdog_task is not None:
            self._watchdog_task.cancel()
        log.info("stopped")

    async def _drain_pipeline(self, deadline_s: float) -> None:
        """Wait for proxy sessions still scanning (the milter drained itself)."""
        if self.pipeline is None:
            return
        deadline = time.monotonic() + deadline_s
        while self.pipeline.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # polling a counter; no event to wait on
        if self.pipeline.in_flight:
            log.warning(
                "shutdown deadline passed: %d scans abandoned", self.pipeline.in_flight
            )


RESTART_ONLY = ("milter", "metrics", "proxy")
"""Config sections fixed at startup: the listeners and what they negotiate."""


def _check_reloadable(old: Config, new: Config) -> None:
    """Refuse changes a reload cannot apply, naming the key, not half-apply them."""
    changed = [
        f"{section}.{key}"
        for section in RESTART_ONLY
        for key, value in vars(getattr(new, section)).items()
        if getattr(getattr(old, section), key) != value
    ]
    if old.state_dir != new.state_dir:
        changed.append("storage.state_dir")
    if changed:
        raise ConfigError(f"{', '.join(changed)} changed: restart phishgate to apply")


def _version() -> str:
    try:
        return metadata.version("phishgate")
    except metadata.PackageNotFoundError:
        return "unknown"


async def _main(config: Config, config_path: str | None) -> int:
    daemon = Daemon(config, config_path)
    daemon.install_signal_handlers()
    try:
        await daemon.startup()
    except (ModelError, OSError) as exc:
        log.error("startup failed: %s", exc)
        await daemon.shutdown()
        return 1
    await daemon.serve()
    await daemon.shutdown()
    return 0


class JsonFormatter(logging.Formatter):
    """One JSON object per line; quotes, newlines and tracebacks stay valid."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(config: Config) -> None:
    """Plain lines for journald (it stamps time), timestamps otherwise."""
    level = getattr(logging, config.logging.level.upper())
    handler = logging.StreamHandler()
    if config.logging.format == "json":
        handler.setFormatter(JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
        handler.setFormatter(logging.Formatter(fmt))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # aiosmtpd logs every SMTP command, addresses included, at INFO: that is
    # several lines per proxied message, so only at debug.
    smtp_level = logging.DEBUG if level <= logging.DEBUG else logging.WARNING
    logging.getLogger(AIOSMTPD_LOGGER).setLevel(smtp_level)


@contextlib.contextmanager
def _naming(key: str, address: str) -> Iterator[None]:
    """Say which listener failed: "[Errno 98] Address already in use" alone
    does not tell an admin which of three addresses is taken."""
    try:
        yield
    except OSError as exc:
        raise OSError(exc.errno, f"{key} = {address!r}: {exc.strerror or exc}") from exc


def run(config_path: str | None) -> int:
    """Entry point of ``phishgate serve``; returns the exit status."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"phishgate: config: {exc}", file=sys.stderr, flush=True)
        return 1
    configure_logging(config)
    return asyncio.run(_main(config, config_path))


def state_path(config: Config) -> Path:
    return config.state_dir
