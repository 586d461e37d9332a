"""Scan engines: worker processes give the same verdicts as in-process threads."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
from mailfactory import as_bytes, html, phish, plain
from phishgate.daemon.config import parse_config
from phishgate.daemon.engine import (
    ProcessEngine,
    ThreadEngine,
    _Job,
    _Worker,
    build_scanner,
    check_model,
    make_engine,
    worker_count,
)
from phishgate.daemon.metrics import Metrics
from phishgate.daemon.model import ModelError, default_model_dir
from phishgate.daemon.pipeline import MessageEnvelope, Pipeline
from phishgate.daemon.scanner import ScanResult

TWO_WORKERS = parse_config("[daemon]\nworkers = 2\n", "t")


@pytest.fixture(scope="module")
def workers() -> Iterator[tuple[asyncio.AbstractEventLoop, ProcessEngine]]:
    """Two started scan workers and the loop they answer on, shared by tests."""
    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(make_engine(TWO_WORKERS))
    assert isinstance(engine, ProcessEngine)
    yield loop, engine
    engine.close()
    loop.run_until_complete(engine.wait_closed())
    loop.close()


def test_processes_and_threads_agree(
    workers: tuple[asyncio.AbstractEventLoop, ProcessEngine],
) -> None:
    """Two worker processes score like the in-process scanner, in parallel."""
    loop, engine = workers
    messages = [as_bytes(plain()), as_bytes(phish())] * 4

    async def scan_all() -> list[ScanResult]:
        return await asyncio.gather(*(engine.scan(m, "") for m in messages))

    results = loop.run_until_complete(scan_all())
    scanner = build_scanner(TWO_WORKERS)
    local = [scanner.scan(m, "") for m in messages]
    assert [r.verdict.phish for r in results] == [r.verdict.phish for r in local]
    assert {r.worker_pid for r in results} <= set(engine.pids)


def test_every_worker_loads_the_model_before_start_returns(
    workers: tuple[asyncio.AbstractEventLoop, ProcessEngine],
) -> None:
    """start() returns only once all N workers hold the model: N live children."""
    _, engine = workers
    assert len(engine.pids) == 2
    assert all(engine.is_alive(pid) for pid in engine.pids)


def test_pipeline_with_worker_processes(
    workers: tuple[asyncio.AbstractEventLoop, ProcessEngine],
) -> None:
    """The pipeline decides through worker processes."""
    loop, engine = workers
    pipeline = Pipeline(TWO_WORKERS, engine, Metrics(), None)
    decision = loop.run_until_complete(
        pipeline.inspect(MessageEnvelope("milter"), as_bytes(phish()))
    )
    assert decision.status == "scanned"


def slow_message() -> bytes:
    """About 3.5 MB of links: a scan of a few tenths of a second."""
    links = "".join(
        f'<p>Item {i} <a href="https://shop{i % 500}.example{i % 37}.com/p/{i}">'
        f"offer {i}</a></p>"
        for i in range(40_000)
    )
    return as_bytes(html(f"<html><body>{links}</body></html>"))


def test_small_messages_do_not_wait_behind_a_slow_one(
    workers: tuple[asyncio.AbstractEventLoop, ProcessEngine],
) -> None:
    """While one worker scans a large message, the other takes all the rest."""
    loop, engine = workers
    small = [as_bytes(plain()), as_bytes(phish())] * 3

    async def scan_all() -> tuple[ScanResult, list[ScanResult]]:
        big = asyncio.ensure_future(engine.scan(slow_message(), ""))
        await asyncio.sleep(0)  # the big one is handed out first
        results = await asyncio.gather(*(engine.scan(m, "") for m in small))
        assert not big.done()
        return await big, results

    big, results = loop.run_until_complete(scan_all())
    assert big.worker_pid not in {r.worker_pid for r in results}
    assert engine.queued == 0


def test_a_scan_given_up_leaves_the_queue_at_once(
    workers: tuple[asyncio.AbstractEventLoop, ProcessEngine],
) -> None:
    """A queued scan whose caller times out does not hold its message in the
    queue until a worker frees up."""
    loop, engine = workers

    async def give_up_while_queued() -> int:
        busy = [
            asyncio.ensure_future(engine.scan(slow_message(), "")) for _ in range(2)
        ]
        await asyncio.sleep(0)  # both workers now hold a large message
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(engine.scan(as_bytes(plain()), ""), 0.001)
        queued = engine.queued
        await asyncio.gather(*busy)
        return queued

    assert loop.run_until_complete(give_up_while_queued()) == 0


def test_close_answers_the_scans_still_queued() -> None:
    """Scans queued for a free worker when the engine closes are still scanned."""
    loop = asyncio.new_event_loop()
    try:
        engine = loop.run_until_complete(make_engine(TWO_WORKERS))
        assert isinstance(engine, ProcessEngine)

        async def queue_then_close() -> list[ScanResult]:
            scans = [
                asyncio.ensure_future(engine.scan(as_bytes(plain()), ""))
                for _ in range(6)
            ]
            await asyncio.sleep(0)
            assert engine.queued == 4  # one in flight on each worker
            engine.close()
            results = await asyncio.gather(*scans)
            await engine.wait_closed()
            return results

        results = loop.run_until_complete(queue_then_close())
        assert [r.verdict.label for r in results] == ["ham"] * 6
    finally:
        loop.close()


def test_one_worker_scans_in_this_process() -> None:
    """workers = 1 scans in threads of the daemon's own process."""
    config = parse_config("[daemon]\nworkers = 1\n", "t")

    async def run() -> int:
        engine = await make_engine(config)
        assert isinstance(engine, ThreadEngine)
        try:
            return (await engine.scan(as_bytes(plain()), "")).worker_pid
        finally:
            engine.close()

    assert asyncio.run(run()) == os.getpid()


def test_auto_is_one_worker_per_usable_core() -> None:
    """workers = "auto" (the default) counts the cores this process may use."""
    cores = len(os.sched_getaffinity(0))
    assert worker_count(parse_config("", "t")) == cores
    assert worker_count(parse_config('[daemon]\nworkers = "auto"\n', "t")) == cores
    assert worker_count(parse_config("[daemon]\nworkers = 3\n", "t")) == 3


def test_broken_model_fails_start_with_its_error(tmp_path: Path) -> None:
    """A model the workers cannot load raises ModelError, not a broken pool."""
    broken = tmp_path / "model"
    shutil.copytree(default_model_dir(), broken)
    (broken / "model.txt").write_text("not a model\n")
    text = f'[daemon]\nworkers = 2\n[model]\npath = "{broken}"\n'
    config = parse_config(text, "t")
    with pytest.raises(ModelError):
        asyncio.run(make_engine(config))


def test_workers_ignore_sigint_and_a_killed_one_is_replaced() -> None:
    """Ctrl-C's SIGINT does not reach workers; a killed one is replaced."""
    message = as_bytes(plain())

    async def scan_until_it_works(engine: ProcessEngine) -> int:
        deadline = time.monotonic() + 60
        while True:
            try:
                return (await engine.scan(message, "")).worker_pid
            except BrokenProcessPool:
                assert time.monotonic() < deadline, "no new pool within 60 s"

    async def run() -> tuple[int, bool, int]:
        engine = await make_engine(TWO_WORKERS)
        assert isinstance(engine, ProcessEngine)
        try:
            first = (await engine.scan(message, "")).worker_pid
            os.kill(first, signal.SIGINT)
            await asyncio.gather(*(engine.scan(message, "") for _ in range(4)))
            alive = engine.is_alive(first)
            os.kill(first, signal.SIGKILL)
            return first, alive, await scan_until_it_works(engine)
        finally:
            engine.close()
            await engine.wait_closed()

    first, alive_after_sigint, after = asyncio.run(run())
    assert alive_after_sigint
    assert after not in (first, os.getpid())


def _model_copy(tmp_path: Path, version: str, broken: bool = False) -> Path:
    target = tmp_path / version
    shutil.copytree(default_model_dir(), target)
    meta = (target / "meta.json").read_text()
    (target / "meta.json").write_text(
        meta.replace(f'"version": "{_bundled_version()}"', f'"version": "{version}"')
    )
    if broken:
        (target / "model.txt").write_text("not a model\n")
    return target


def _bundled_version() -> str:
    import json

    return str(json.loads((default_model_dir() / "meta.json").read_text())["version"])


def test_swap_in_place_switches_between_scans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers stage the new model while scanning, then all switch; same pids.

    A scan sent to a worker just before its commit frame is answered on the
    old model (in flight at the switch), every scan after it on the new one.
    """
    new = _model_copy(tmp_path, "swapped-1")
    broken = _model_copy(tmp_path, "broken-1", broken=True)
    config = parse_config(f'[daemon]\nworkers = 2\n[model]\npath = "{new}"\n', "t")
    bad = parse_config(f'[daemon]\nworkers = 2\n[model]\npath = "{broken}"\n', "t")
    message = as_bytes(plain())

    in_flight: list[asyncio.Future[ScanResult]] = []
    real_control = _Worker.control

    def control(worker: _Worker, message_: tuple[object, ...]) -> None:
        if message_[0] == "commit":
            job = _Job(message, "")
            worker.submit(job)
            in_flight.append(job.future)
        real_control(worker, message_)

    monkeypatch.setattr(_Worker, "control", control)

    async def run() -> tuple[list[str], list[str], list[str]]:
        engine = await make_engine(TWO_WORKERS)
        assert isinstance(engine, ProcessEngine)
        try:
            pids = engine.pids
            await engine.swap(config)
            assert len(in_flight) == 2  # one per worker
            before = await asyncio.gather(*in_flight)
            after = await asyncio.gather(*(engine.scan(message, "") for _ in range(6)))
            with pytest.raises(ModelError):
                await engine.swap(bad)
            still = await asyncio.gather(*(engine.scan(message, "") for _ in range(4)))
            assert engine.pids == pids
            assert engine.model_version == "swapped-1"
            return (
                [r.verdict.model_version for r in before],
                [r.verdict.model_version for r in after],
                [r.verdict.model_version for r in still],
            )
        finally:
            engine.close()
            await engine.wait_closed()

    before, after, still = asyncio.run(run())
    assert set(after) == set(still) == {"swapped-1"}
    assert before == [_bundled_version()] * 2


def test_check_model_runs_the_canary_in_a_process_of_its_own(tmp_path: Path) -> None:
    """The bundled model passes; one that flags all mail is refused, with why."""
    config = parse_config("", "t")
    version = asyncio.run(check_model(config, default_model_dir()))
    assert version == build_scanner(config).model.version
    flagging = tmp_path / "flags-everything"
    shutil.copytree(default_model_dir(), flagging)
    meta = json.loads((flagging / "meta.json").read_text())
    meta["thresholds"] = {"tag": 1e-9, "quarantine": 1e-9, "reject": 1e-9}
    (flagging / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"canary check failed: .*ham scored"):
        asyncio.run(check_model(config, flagging))


def test_check_model_survives_a_checker_that_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loader that kills its process refuses the model; the caller lives on."""
    monkeypatch.setattr(
        "phishgate.daemon.engine.CHECK_COMMAND",
        "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)",
    )
    with pytest.raises(ModelError, match="ended with status -11"):
        asyncio.run(check_model(parse_config("", "t"), default_model_dir()))


def test_check_model_reply_survives_output_on_stdout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the loader prints on fd 1 (LightGBM's C library does) cannot
    corrupt the verdict: it goes to stderr."""
    monkeypatch.setattr(
        "phishgate.daemon.engine.CHECK_COMMAND",
        "import os; from phishgate.daemon import engine;"
        " real = engine.checked_scanner;"
        " engine.checked_scanner = lambda *a: ("
        "os.write(1, b'[LightGBM] [Warning] noise\\n' * 5000), real(*a))[1];"
        " engine.check_main()",
    )
    config = parse_config("", "t")
    version = asyncio.run(check_model(config, default_model_dir()))
    assert version == _bundled_version()


def test_check_model_that_hangs_is_refused_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A check past its deadline refuses the model (a ModelError, counted as
    refused) and leaves no process behind."""
    monkeypatch.setattr("phishgate.daemon.engine.WARMUP_TIMEOUT_S", 1.0)
    monkeypatch.setattr(
        "phishgate.daemon.engine.CHECK_COMMAND", "import time; time.sleep(60)"
    )
    with pytest.raises(ModelError, match="took more than 1 s"):
        asyncio.run(check_model(parse_config("", "t"), default_model_dir()))


def test_workers_that_cannot_start_fail_scans_at_once_and_are_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed workers whose model file broke meanwhile cannot start again:
    while none runs, a scan fails at once (and follows on_error) instead of
    waiting out the restart pause, a swap is refused at once, and the workers
    start once the model is loadable again."""
    monkeypatch.setattr("phishgate.daemon.engine.RESTART_DELAY_S", 2.0)
    model = _model_copy(tmp_path, "v-restart")
    good = (model / "model.txt").read_bytes()
    config = parse_config(f'[daemon]\nworkers = 2\n[model]\npath = "{model}"\n', "t")
    next_model = _model_copy(tmp_path, "v-next")
    other = parse_config(
        f'[daemon]\nworkers = 2\n[model]\npath = "{next_model}"\n', "t"
    )
    message = as_bytes(plain())

    async def run() -> tuple[str, float, str, str]:
        engine = await make_engine(config)
        assert isinstance(engine, ProcessEngine)
        try:
            (model / "model.txt").write_text("not a model\n")
            for pid in engine.pids:
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while any(w.alive for w in engine._workers):  # both failed to start
                assert time.monotonic() < deadline, "replacements never failed"
                await asyncio.sleep(0.01)
            started = time.monotonic()
            with pytest.raises(BrokenProcessPool) as failed:
                await asyncio.wait_for(engine.scan(message, ""), 30)
            waited = time.monotonic() - started
            with pytest.raises(ModelError) as refused:
                await asyncio.wait_for(engine.swap(other), 30)
            (model / "model.txt").write_bytes(good)
            while True:
                try:
                    result = await asyncio.wait_for(engine.scan(message, ""), 30)
                    break
                except BrokenProcessPool:
                    assert time.monotonic() < deadline, "no worker within 60 s"
                    await asyncio.sleep(0.2)
            return (
                str(failed.value),
                waited,
                str(refused.value),
                result.verdict.model_version,
            )
        finally:
            engine.close()
            await engine.wait_closed()

    error, waited, refused, version = asyncio.run(run())
    assert "no scan worker running" in error
    assert waited < 0.5  # not the 2 s pause before the next start
    assert "not running" in refused
    assert version == "v-restart"


def test_a_worker_restarted_during_a_swap_refuses_the_swap(tmp_path: Path) -> None:
    """A worker that dies after staging is replaced by one with the old model:
    the swap is refused, and every worker keeps serving the old one."""
    message = as_bytes(plain())

    async def run() -> tuple[str, str, set[str]]:
        engine = await make_engine(TWO_WORKERS)
        assert isinstance(engine, ProcessEngine)
        try:
            path = _model_copy(tmp_path, "v2")
            new = parse_config(
                f'[daemon]\nworkers = 2\n[model]\npath = "{path}"\n', "t"
            )
            swap = asyncio.create_task(engine.swap(new))
            deadline = time.monotonic() + 60
            while not (engine._staging is not None and engine._staging[1][0].done()):
                assert time.monotonic() < deadline and not swap.done()
                await asyncio.sleep(0.01)
            os.kill(engine.pids[0], signal.SIGKILL)
            with pytest.raises(ModelError) as refused:
                await swap
            while True:  # the replacement may still be loading
                try:
                    results = await asyncio.gather(
                        *(engine.scan(message, "") for _ in range(6))
                    )
                    break
                except BrokenProcessPool:
                    assert time.monotonic() < deadline, "no worker within 60 s"
                    await asyncio.sleep(0.2)
            versions = {r.verdict.model_version for r in results}
            return str(refused.value), engine.model_version, versions
        finally:
            engine.close()
            await engine.wait_closed()

    error, serving, seen = asyncio.run(run())
    assert "restarted during the swap" in error
    assert serving == _bundled_version()
    assert seen == {_bundled_version()}


def test_restart_pause_doubles_up_to_its_cap() -> None:
    """5 s, then 10, 20 ...; never above the cap, also after days of failures."""
    from phishgate.daemon.engine import RESTART_MAX_DELAY_S, restart_delay

    assert [restart_delay(n) for n in (1, 2, 3)] == [5.0, 10.0, 20.0]
    assert restart_delay(7) == RESTART_MAX_DELAY_S
    assert restart_delay(10**6) == RESTART_MAX_DELAY_S  # no OverflowError
