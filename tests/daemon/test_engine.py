"""Scan engines: worker processes give the same verdicts as in-process threads."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from mailfactory import as_bytes, phish, plain
from phishgate.daemon.config import parse_config
from phishgate.daemon.engine import (
    ProcessEngine,
    ThreadEngine,
    build_scanner,
    make_engine,
)
from phishgate.daemon.metrics import Metrics
from phishgate.daemon.pipeline import MessageEnvelope, Pipeline


def test_processes_and_threads_agree(tmp_path: Path) -> None:
    """Two worker processes score like the in-process scanner, in parallel."""
    config = parse_config("[daemon]\nscan_processes = 2\n", "t")
    messages = [as_bytes(plain()), as_bytes(phish())] * 4

    async def run() -> tuple[list[float], list[float], set[int]]:
        engine = await make_engine(config)
        assert isinstance(engine, ProcessEngine)
        try:
            results = await asyncio.gather(*(engine.scan(m, "") for m in messages))
        finally:
            engine.close()
        threads = ThreadEngine(build_scanner(config))
        local = [await threads.scan(m, "") for m in messages]
        threads.close()
        workers = {r.worker_pid for r in results}
        return (
            [r.verdict.phish for r in results],
            [r.verdict.phish for r in local],
            workers,
        )

    remote, local, workers = asyncio.run(run())
    assert remote == local
    assert os.getpid() not in workers


def test_pipeline_with_worker_processes(tmp_path: Path) -> None:
    """The pipeline decides through worker processes and closes them."""
    config = parse_config("[daemon]\nscan_processes = 1\n", "t")

    async def run() -> str:
        engine = await make_engine(config)
        pipeline = Pipeline(config, engine, Metrics(), None)
        try:
            decision = await pipeline.inspect(
                MessageEnvelope("milter"), as_bytes(phish())
            )
        finally:
            pipeline.close()
        return decision.status

    assert asyncio.run(run()) == "scanned"
