#!/usr/bin/env python3
"""Milter throughput, latency and memory of a real ``phishgate serve``.

    python bench/bench_milter.py [CORPORA_DIR] [--per-file 100] [--seed 1]
                                 [--concurrency 1,8,32] [--runs 3]
                                 [--warmup 20] [--timeout 30] [--peers]
                                 [--workers 1,2]

Run it from the repository root with the venv active; CORPORA_DIR defaults
to ../shared/corpora. Each run starts its own ``phishgate serve`` subprocess
(milter and metrics on free loopback ports, a temporary config and state
directory, the bundled model, default policy) and talks milter to it the way
Postfix does, with no Postfix in between: N connections at once, each sending
OPTNEG, CONNECT, HELO, then message after message (MACRO/MAIL, MACRO/RCPT,
HEADER per field, EOH, BODY chunks of 65535 bytes, MACRO/EOM, replies read
until the final one, ABORT), and QUIT at the end. Steps the filter asked to
skip are not sent and replies it declined are not awaited, as in Postfix.

The sample is bench_scan.py's: --per-file messages of each corpus file, seed
--seed; score_peers.py picks the same messages for the peers. A leading mbox
"From " line is dropped, as an MTA never passes it on.

Per concurrency it prints messages/s, the latency from EOM written to the
final reply read (p50, p99, max), errors (timeouts, closed or garbled
connections, a reply that is not final where one is due, tempfails and
fail-opens), the daemon's CPU time per message, its peak memory (sampled
every 50 ms) and its own mean scan time per message from its metrics. With
--runs N every figure is the median of the runs, except errors (summed) and
memory (the largest). CPU time and memory are the whole process tree's: the
daemon and its scan worker processes. Memory is given twice: RSS summed over
the processes (pages they share, such as the libraries, count once per
process) and PSS summed (each shared page split between the processes that
map it, the figure ../shared/peers gives for rspamd's processes).

--workers takes a comma list of ``[daemon] workers`` values (numbers or
"auto"); every run starts one daemon per value in turn, so the settings are
compared in the same sitting, and the report has one table per value and
the throughput of each relative to the first.

--peers also runs ../shared/peers/score_peers.py with the same sample against
rspamd's HTTP interface at concurrency 1 and 8 in every run (rspamd is
started with start_peers.sh if it does not answer, and stopped afterwards)
and prints phishgate's throughput as a ratio of rspamd's. Without rspamd
installed that part is skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import operator
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench_scan import load_sample
from phishgate.milter import protocol as p
from phishgate.milter.actions import (
    FINAL_ACTIONS,
    AddHeader,
    Continue,
    FinalAction,
    ReplyCode,
    TempFail,
)
from phishgate.milter.codec import (
    Abort,
    Body,
    Command,
    Connect,
    EndOfHeaders,
    EndOfMessage,
    Header,
    Helo,
    Macro,
    Mail,
    OptNeg,
    OptNegReply,
    ProtocolError,
    Quit,
    Rcpt,
    Reply,
    ReplyDecoder,
    Skip,
    encode_command,
)
from phishgate.milter.options import NO_REPLY_FLAG, SKIP_FLAG, Step
from prometheus_client.parser import text_string_to_metric_families

ONE_MIB = 1024 * 1024
LOOPBACK = "127.0.0.1"
READ_SIZE = 256 * 1024
# As often as ../shared/peers/score_peers.py samples the peers. Reading
# smaps_rollup walks the target's page tables (about 1 ms a process): at
# 20 Hz, in the event loop, it took a third of the load generator's time.
RSS_INTERVAL_S = 0.5
START_DEADLINE_S = 60.0
STOP_DEADLINE_S = 30.0
PEER_CONCURRENCY = (1, 8)
RSPAMD_PING = f"http://{LOOPBACK}:11333/ping"  # start_peers.sh's scanner port
TARGET_P99_MS = 50.0  # issue 3, "Speed": at concurrency 8
TARGET_RSS_MIB = 250.0

# What Postfix (milter8.c) offers a version 6 filter: every action, and every
# step, no-reply and option flag up to SMFIP_HDR_LEADSPC.
MTA_ACTIONS = (
    p.SMFIF_ADDHDRS
    | p.SMFIF_CHGBODY
    | p.SMFIF_ADDRCPT
    | p.SMFIF_DELRCPT
    | p.SMFIF_CHGHDRS
    | p.SMFIF_QUARANTINE
    | p.SMFIF_CHGFROM
    | p.SMFIF_ADDRCPT_PAR
    | p.SMFIF_SETSYMLIST
)
MTA_PROTOCOL = functools.reduce(
    operator.or_,
    [*SKIP_FLAG.values(), *NO_REPLY_FLAG.values()],
    p.SMFIP_SKIP | p.SMFIP_RCPT_REJ | p.SMFIP_HDR_LEADSPC,
)

CLIENT = Connect("client.bench.test", p.SMFIA_INET, 40000, "192.0.2.25")
CONNECT_MACROS = {"j": "mx.bench.test", "{daemon_name}": "smtpd", "v": "Postfix"}
RECIPIENT = "user@bench.test"

CONFIG = """\
[daemon]
workers = {workers}
[milter]
listen = "inet:{host}:{milter_port}"
[proxy]
listen = ""
[metrics]
listen = "{host}:{metrics_port}"
[storage]
state_dir = "{state_dir}"
[policy]
quarantine = "{quarantine}"
"""

_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:[ \t]*(.*)", re.S)
"""A header line: RFC 5322 field name, colon, value (leading blanks dropped)."""

_ADDRESS = re.compile(rb"<([^<>\s]*)>|([^<>\s]+@[^<>\s]+)")
_queue_ids = itertools.count(1)


class BenchError(Exception):
    """The filter did something an MTA would not accept; the text is the kind."""


# -- Messages as an MTA sends them (no I/O) -----------------------------------


@dataclass(frozen=True)
class Transcript:
    """One message, cut and pre-encoded the way Postfix hands it to a milter."""

    sender: str
    size: int
    headers: tuple[Header, ...]
    header_packets: tuple[bytes, ...]
    body_packets: tuple[bytes, ...]


def split_message(raw: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Header fields and the CRLF body, cut where Postfix's cleanup cuts them.

    Folded lines stay in their field's value, joined by a newline. The first
    line that is not a header line ends the headers (a blank one is dropped).
    """
    lines = [line.removesuffix(b"\r") for line in raw.split(b"\n")]
    fields: list[tuple[bytes, bytes]] = []
    for index, line in enumerate(lines):
        if fields and line[:1] in (b" ", b"\t"):
            name, value = fields[-1]
            fields[-1] = (name, value + b"\n" + line)
            continue
        match = _FIELD.fullmatch(line)
        if match is None:
            body_start = index if line else index + 1
            return fields, b"\r\n".join(lines[body_start:])
        fields.append((match[1], match[2]))
    return fields, b""


def envelope_sender(fields: Sequence[tuple[bytes, bytes]]) -> str:
    """The address in Return-Path, else in From; empty (<>) if neither has one."""
    for wanted in (b"return-path", b"from"):
        for name, value in fields:
            match = _ADDRESS.search(value) if name.lower() == wanted else None
            if match is not None:
                address = match[1] if match[1] is not None else match[2]
                return bytes(address).decode("utf-8", "surrogateescape")
    return ""


def _header(name: bytes, value: bytes) -> Header:
    # Postfix sends C strings: a NUL in a value ends it there.
    value = value.split(b"\0", 1)[0]
    return Header(name.decode("ascii"), value.decode("utf-8", "surrogateescape"))


def make_transcript(raw: bytes) -> Transcript:
    """Pre-encode one message so that sending it costs the client little."""
    if raw.startswith(b"From "):
        raw = raw.partition(b"\n")[2]
    fields, body = split_message(raw)
    headers = tuple(_header(name, value) for name, value in fields)
    chunk = p.MILTER_CHUNK_SIZE
    return Transcript(
        sender=envelope_sender(fields),
        size=len(raw),
        headers=headers,
        header_packets=tuple(encode_command(header) for header in headers),
        body_packets=tuple(
            encode_command(Body(body[i : i + chunk]))
            for i in range(0, len(body), chunk)
        ),
    )


# -- One MTA-side milter connection --------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """The filter's answer to one message."""

    latency_s: float
    action: str
    error: str | None = None


class MilterClient:
    """A milter connection driven the way Postfix's milter8 client drives it."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        timeout: float,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout = timeout
        self._decoder = ReplyDecoder()
        self._replies: deque[Reply] = deque()
        self.protocol = 0

    @classmethod
    async def open(cls, port: int, timeout: float) -> MilterClient:
        """Connect, negotiate, and report the SMTP client and its HELO."""
        connecting = asyncio.open_connection(LOOPBACK, port)
        reader, writer = await asyncio.wait_for(connecting, timeout)
        # drain() then waits until every byte is in the kernel: EOM is "sent".
        writer.transport.set_write_buffer_limits(high=0)
        client = cls(reader, writer, timeout)
        await client._negotiate()
        await client.step(Step.CONNECT, CLIENT, Macro(p.SMFIC_CONNECT, CONNECT_MACROS))
        await client.step(Step.HELO, Helo(CLIENT.hostname))
        return client

    async def _negotiate(self) -> None:
        self._writer.write(
            encode_command(OptNeg(p.SMFI_PROT_VERSION, MTA_ACTIONS, MTA_PROTOCOL))
        )
        reply = await self._reply()
        if not isinstance(reply, OptNegReply):
            raise BenchError(f"{type(reply).__name__} instead of OPTNEG")
        self.protocol = reply.protocol

    async def _reply(self) -> Reply:
        while not self._replies:
            data = await asyncio.wait_for(self._reader.read(READ_SIZE), self._timeout)
            if not data:
                raise BenchError("connection closed by the filter")
            self._replies.extend(self._decoder.feed(data))
        return self._replies.popleft()

    async def step(
        self, step: Step, command: Command | bytes, macros: Macro | None = None
    ) -> Reply | None:
        """Send one SMTP step unless skipped; await its reply unless declined."""
        if self.protocol & SKIP_FLAG[step]:
            return None
        if macros is not None:
            self._writer.write(encode_command(macros))
        packet = command if isinstance(command, bytes) else encode_command(command)
        self._writer.write(packet)
        if self.protocol & NO_REPLY_FLAG[step]:
            return None
        await self._writer.drain()
        reply = await self._reply()
        if not isinstance(reply, Continue | Skip):
            raise BenchError(f"{type(reply).__name__} before end of message")
        return reply

    async def send(self, message: Transcript, queue_id: str) -> Outcome:
        """One message, from MAIL to the final reply; ABORT after it."""
        mail = Mail((f"<{message.sender}>", f"SIZE={message.size}"))
        await self.step(Step.MAIL, mail, Macro(p.SMFIC_MAIL, {"i": queue_id}))
        rcpt_macros = Macro(p.SMFIC_RCPT, {"i": queue_id, "{rcpt_addr}": RECIPIENT})
        await self.step(Step.RCPT, Rcpt((f"<{RECIPIENT}>",)), rcpt_macros)
        await self._send_headers(message)
        await self.step(Step.EOH, EndOfHeaders())
        for packet in message.body_packets:
            if isinstance(await self.step(Step.BODY, packet), Skip):
                break
        return await self._end_of_message(queue_id)

    async def _send_headers(self, message: Transcript) -> None:
        if self.protocol & p.SMFIP_HDR_LEADSPC:
            for header in message.headers:
                await self.step(Step.HEADERS, Header(header.name, " " + header.value))
            return
        for packet in message.header_packets:
            await self.step(Step.HEADERS, packet)

    async def _end_of_message(self, queue_id: str) -> Outcome:
        self._writer.write(encode_command(Macro(p.SMFIC_BODYEOB, {"i": queue_id})))
        self._writer.write(encode_command(EndOfMessage()))
        await self._writer.drain()
        start = time.perf_counter()
        final, headers = await self._final_reply()
        latency = time.perf_counter() - start
        self._writer.write(encode_command(Abort()))
        return judge(final, headers, latency)

    async def _final_reply(self) -> tuple[FinalAction, dict[str, str]]:
        headers: dict[str, str] = {}
        while True:
            reply = await self._reply()
            if isinstance(reply, FINAL_ACTIONS):
                return reply, headers
            if isinstance(reply, OptNegReply | Skip):
                raise BenchError(f"{type(reply).__name__} instead of a final reply")
            if isinstance(reply, AddHeader):
                headers[reply.name.lower()] = reply.value
            # Progress and the other modifications: keep reading, as Postfix does.

    async def quit(self) -> None:
        """Say QUIT and close."""
        self._writer.write(encode_command(Quit()))
        await self._writer.drain()
        self.close()

    def close(self) -> None:
        self._writer.close()


def judge(final: FinalAction, headers: Mapping[str, str], latency: float) -> Outcome:
    """Name what the filter did, and say why it is an error if it is one."""
    status = headers.get("x-phishgate-status", "").strip()
    verdict = headers.get("x-phishgate-verdict", "")
    action = verdict.partition("action=")[2].strip() or type(final).__name__.lower()
    if isinstance(final, ReplyCode) and final.code >= 500:
        return Outcome(latency, "reject")
    if isinstance(final, TempFail | ReplyCode):
        return Outcome(latency, "tempfail", "tempfail reply")
    if status in ("error", "timeout"):
        return Outcome(latency, action, f"fail-open ({status})")
    if status and status != "scanned":
        return Outcome(latency, f"unscanned ({status})")
    return Outcome(latency, action)


# -- The daemon under test -------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def proc_status_kib(pid: int, key: str) -> int:
    """One ``kB`` field of /proc/PID/status (VmRSS, VmHWM), 0 if gone."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def proc_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process, all its threads; 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14, 15
    return ticks / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the daemon and its scan workers)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                children = Path(f"/proc/{current}/task/{task}/children")
                todo += [int(c) for c in children.read_text().split()]
    return tree


def tree_cpu_s(pid: int) -> float:
    return sum(proc_cpu_s(p) for p in process_tree(pid))


def proc_pss_kib(pid: int) -> int:
    """Proportional set size of a process (/proc/PID/smaps_rollup), 0 if gone."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def tree_memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of the process tree, each summed over its processes."""
    tree = process_tree(pid)
    return (
        sum(proc_status_kib(p, "VmRSS") for p in tree),
        sum(proc_pss_kib(p) for p in tree),
    )


class Daemon:
    """``phishgate serve`` in a subprocess, on free ports, state in ``workdir``."""

    def __init__(
        self, workdir: Path, workers: str = "1", quarantine: str = "hold"
    ) -> None:
        self.workdir = workdir
        self.workers = workers
        self.quarantine = quarantine
        self.milter_port = free_port()
        self.metrics_port = free_port()
        self.log_path = workdir / "serve.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None, "daemon not started"
        return self._process.pid

    def start(self) -> None:
        """Write the config, start the daemon, wait until the milter answers."""
        config = self.workdir / "phishgate.toml"
        state = self.workdir / "state"
        config.write_text(
            CONFIG.format(
                host=LOOPBACK,
                milter_port=self.milter_port,
                metrics_port=self.metrics_port,
                state_dir=state,
                workers=self.workers if self.workers.isdigit() else f'"{self.workers}"',
                quarantine=self.quarantine,
            )
        )
        command = [sys.executable, "-m", "phishgate.daemon.cli", "serve"]
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [*command, "--config", str(config)], stdout=log, stderr=log
            )
        self._wait_listening()

    def _wait_listening(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BenchError(f"phishgate serve exited: {self.log_tail()}")
            with contextlib.suppress(OSError):
                socket.create_connection((LOOPBACK, self.milter_port), 1).close()
                return
            time.sleep(0.1)
        raise BenchError(f"phishgate serve not listening after {START_DEADLINE_S} s")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it is not gone by the deadline."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def log_tail(self, lines: int = 5) -> str:
        return " | ".join(
            self.log_path.read_text(errors="replace").splitlines()[-lines:]
        )

    def log_problems(self) -> list[str]:
        """WARNING, ERROR and traceback lines of the daemon's log."""
        text = self.log_path.read_text(errors="replace")
        marks = (" WARNING ", " ERROR ", " CRITICAL ", "Traceback")
        return [line for line in text.splitlines() if any(m in line for m in marks)]

    def scrape(self) -> dict[str, float]:
        """Messages handled and seconds spent per scan stage, from /metrics."""
        url = f"http://{LOOPBACK}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        totals: dict[str, float] = {"messages": 0.0}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "phishgate_scan_duration_seconds_sum":
                    totals[sample.labels["stage"]] = sample.value
                elif sample.name == "phishgate_messages_total":
                    totals["messages"] += sample.value
        return totals


# -- One concurrency level -----------------------------------------------------


@dataclass
class Phase:
    """What one pass of the sample at one concurrency measured."""

    concurrency: int
    messages: int = 0
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    rss_peak_mib: float = 0.0
    pss_peak_mib: float = 0.0
    cpu_ms_per_msg: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.wall_s if self.wall_s else 0.0

    def latency_ms(self, q: float) -> float:
        return percentile(sorted(self.latencies_s), q) * 1000

    def record(self, outcome: Outcome) -> None:
        self.latencies_s.append(outcome.latency_s)
        self.actions[outcome.action] += 1
        if outcome.error is not None:
            self.errors[outcome.error] += 1


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks, as score_peers.py does."""
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def error_kind(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ProtocolError):
        return f"garbled reply: {exc}"
    if isinstance(exc, OSError):
        return f"connection: {type(exc).__name__}"
    return str(exc)


async def connection_worker(
    port: int,
    jobs: Iterator[Transcript],
    timeout: float,
    phase: Phase,
) -> None:
    """One MTA connection sending messages back to back until none are left."""
    client: MilterClient | None = None
    for message in jobs:
        try:
            client = client or await MilterClient.open(port, timeout)
            phase.record(await client.send(message, f"B{next(_queue_ids):09X}"))
        except (BenchError, TimeoutError, ProtocolError, OSError) as exc:
            phase.errors[error_kind(exc)] += 1
            if client is not None:
                client.close()
            client = None
    if client is not None:
        try:
            await client.quit()
        except OSError as exc:
            phase.errors[error_kind(exc)] += 1


async def sample_memory(pid: int, done: asyncio.Event) -> tuple[float, float]:
    """Peak RSS and PSS of the process tree in MiB, until ``done`` is set."""
    rss = pss = 0
    while True:
        now_rss, now_pss = await asyncio.to_thread(tree_memory_kib, pid)
        rss, pss = max(rss, now_rss), max(pss, now_pss)
        if done.is_set():
            return rss / 1024, pss / 1024
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), RSS_INTERVAL_S)


async def run_phase(
    daemon: Daemon, messages: Sequence[Transcript], concurrency: int, timeout: float
) -> Phase:
    """Send every message once over ``concurrency`` connections."""
    phase = Phase(concurrency, messages=len(messages))
    jobs = iter(messages)  # shared: each connection takes the next message
    done = asyncio.Event()
    sampler = asyncio.create_task(sample_memory(daemon.pid, done))
    metrics_before = await asyncio.to_thread(daemon.scrape)
    cpu_before = tree_cpu_s(daemon.pid)
    start = time.perf_counter()
    workers = [
        connection_worker(daemon.milter_port, jobs, timeout, phase)
        for _ in range(concurrency)
    ]
    await asyncio.gather(*workers)
    phase.wall_s = time.perf_counter() - start
    phase.cpu_ms_per_msg = (tree_cpu_s(daemon.pid) - cpu_before) * 1000 / len(messages)
    done.set()
    phase.rss_peak_mib, phase.pss_peak_mib = await sampler
    metrics_after = await asyncio.to_thread(daemon.scrape)
    phase.stage_ms = stage_means(metrics_before, metrics_after)
    return phase


def stage_means(
    before: Mapping[str, float], after: Mapping[str, float]
) -> dict[str, float]:
    """Mean milliseconds per message of each scan stage between two scrapes."""
    handled = after["messages"] - before["messages"]
    stages = ("parse", "features", "model", "total")
    if not handled:
        return {}
    return {s: (after.get(s, 0) - before.get(s, 0)) * 1000 / handled for s in stages}


async def run_phases(
    daemon: Daemon,
    messages: Sequence[Transcript],
    concurrencies: Sequence[int],
    args: argparse.Namespace,
) -> list[Phase]:
    """Warm the daemon up, then one phase per concurrency level."""
    if args.warmup:
        await run_phase(daemon, messages[: args.warmup], 1, args.timeout)
    phases = []
    for concurrency in concurrencies:
        phase = await run_phase(daemon, messages, concurrency, args.timeout)
        print(f"  {describe(phase)}", file=sys.stderr, flush=True)
        phases.append(phase)
    return phases


def describe(phase: Phase) -> str:
    errors = sum(phase.errors.values())
    return (
        f"c={phase.concurrency}: {phase.msgs_per_s:.1f} msgs/s, "
        f"p50 {phase.latency_ms(0.5):.1f} ms, p99 {phase.latency_ms(0.99):.1f} ms, "
        f"errors {errors}, RSS peak {phase.rss_peak_mib:.0f} MiB,"
        f" PSS peak {phase.pss_peak_mib:.0f} MiB"
    )


def bench_phishgate(
    messages: Sequence[Transcript],
    concurrencies: Sequence[int],
    args: argparse.Namespace,
    workers: str,
) -> tuple[list[Phase], list[str]]:
    """One run: a fresh daemon, every concurrency level, the daemon's complaints."""
    with tempfile.TemporaryDirectory(prefix="phishgate-bench-") as workdir:
        daemon = Daemon(Path(workdir), workers, args.quarantine)
        daemon.start()
        try:
            phases = asyncio.run(run_phases(daemon, messages, concurrencies, args))
        finally:
            daemon.stop()
        return phases, daemon.log_problems()


# -- The optional rspamd run ------------------------------------------------------


@dataclass(frozen=True)
class PeerPhase:
    """score_peers.py's summary of one rspamd pass."""

    concurrency: int
    msgs_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms_per_msg: float
    pss_peak_mib: float


class Rspamd:
    """rspamd through ../shared/peers, used only with --peers."""

    def __init__(self, peers_dir: Path, args: argparse.Namespace) -> None:
        self.peers_dir = peers_dir
        self.args = args
        self.started_here = False

    def prepare(self) -> str | None:
        """Make sure rspamd answers; return why it cannot, or None."""
        if shutil.which("rspamd") is None:
            return "rspamd is not installed"
        if not (self.peers_dir / "score_peers.py").is_file():
            return f"no score_peers.py in {self.peers_dir}"
        if self.answers():
            return None
        self.started_here = True
        start = subprocess.run(
            ["bash", str(self.peers_dir / "start_peers.sh"), "rspamd"],
            capture_output=True,
            text=True,
        )
        if start.returncode != 0 or not self.answers():
            return f"start_peers.sh rspamd failed: {start.stderr.strip()[-200:]}"
        return None

    @staticmethod
    def answers() -> bool:
        try:
            with urllib.request.urlopen(RSPAMD_PING, timeout=2) as response:
                return bool(response.read().strip() == b"pong")
        except OSError:
            return False

    def score(self, concurrency: int) -> PeerPhase | None:
        """One score_peers.py pass on the sample; None if it failed."""
        with tempfile.TemporaryDirectory(prefix="phishgate-peers-") as workdir:
            summary = Path(workdir) / "summary.jsonl"
            command = [
                sys.executable, str(self.peers_dir / "score_peers.py"),
                self.args.corpora, "auto", "-c", str(concurrency),
                "--systems", "rspamd", "--warmup", str(self.args.warmup),
                "--sample-per-file", str(self.args.per_file),
                "--seed", str(self.args.seed),
                "--out", str(Path(workdir) / "rspamd.jsonl.gz"),
                "--summary-out", str(summary),
            ]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0 or not summary.exists():
                tail = done.stderr[-300:]
                print(f"  rspamd c={concurrency} failed: {tail}", file=sys.stderr)
                return None
            s = json.loads(summary.read_text().splitlines()[-1])
        return PeerPhase(
            concurrency,
            s["msgs_per_s"],
            s["latency_ms"]["p50"],
            s["latency_ms"]["p99"],
            s["errors"],
            s.get("peer_cpu_ms_per_msg") or float("nan"),
            s.get("peak_pss_mib") or float("nan"),
        )

    def stop_if_started(self) -> None:
        if self.started_here:
            stop = self.peers_dir / "stop_peers.sh"
            subprocess.run(["bash", str(stop), "rspamd"], capture_output=True)


def bench_rspamd(rspamd: Rspamd) -> list[PeerPhase]:
    phases = []
    for concurrency in PEER_CONCURRENCY:
        phase = rspamd.score(concurrency)
        if phase is not None:
            print(
                f"  rspamd c={concurrency}: {phase.msgs_per_s:.1f} msgs/s, "
                f"p50 {phase.p50_ms:.1f} ms, p99 {phase.p99_ms:.1f} ms",
                file=sys.stderr,
                flush=True,
            )
            phases.append(phase)
    return phases


# -- Report ----------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report_phishgate(runs: Sequence[Sequence[Phase]]) -> dict[int, float]:
    """Print the table of medians; return the median msgs/s per concurrency."""
    print(
        "conc  msgs/s  p50 ms  p99 ms  max ms  CPU ms/msg  scan ms/msg"
        "  errors  RSS peak MiB  PSS peak MiB"
    )
    rates: dict[int, float] = {}
    for level in zip(*runs, strict=True):
        concurrency = level[0].concurrency
        rates[concurrency] = median([ph.msgs_per_s for ph in level])
        print(
            f"{concurrency:>4}  {rates[concurrency]:6.1f}"
            f"  {median([ph.latency_ms(0.5) for ph in level]):6.1f}"
            f"  {median([ph.latency_ms(0.99) for ph in level]):6.1f}"
            f"  {median([ph.latency_ms(1.0) for ph in level]):6.0f}"
            f"  {median([ph.cpu_ms_per_msg for ph in level]):10.2f}"
            f"  {median([ph.stage_ms.get('total', 0) for ph in level]):11.2f}"
            f"  {sum(sum(ph.errors.values()) for ph in level):6d}"
            f"  {max(ph.rss_peak_mib for ph in level):12.0f}"
            f"  {max(ph.pss_peak_mib for ph in level):12.0f}"
        )
    return rates


def report_scaling(
    settings: Sequence[str], rates: Mapping[str, Mapping[int, float]]
) -> None:
    """Median msgs/s of every setting relative to the first, per concurrency."""
    base = rates[settings[0]]
    for workers in settings[1:]:
        ratios = "  ".join(
            f"c={level}: {rate / base[level]:.2f}x"
            for level, rate in rates[workers].items()
            if base.get(level)
        )
        print(f"throughput, workers={workers} over workers={settings[0]}: {ratios}")


def report_details(runs: Sequence[Sequence[Phase]], problems: Sequence[str]) -> None:
    """Scan stages, actions and errors behind the table."""
    print("daemon scan time per message (its metrics, mean ms, median of runs):")
    for level in zip(*runs, strict=True):
        stages = ("parse", "features", "model", "total")
        means = {s: median([ph.stage_ms.get(s, 0) for ph in level]) for s in stages}
        print(
            f"  c={level[0].concurrency}: "
            + "  ".join(f"{s} {means[s]:.2f}" for s in stages)
        )
    actions = sum((ph.actions for ph in runs[0]), Counter[str]())
    print("actions (run 1, all levels):", dict(actions.most_common()))
    errors = sum((ph.errors for run in runs for ph in run), Counter[str]())
    if errors:
        print("errors:", dict(errors.most_common()))
    print(f"daemon log warnings/errors: {len(problems)}")
    for line in problems[:5]:
        print(f"  {line[:150]}")


def report_peers(
    peer_runs: Sequence[Sequence[PeerPhase]], rates: Mapping[int, float]
) -> dict[int, float]:
    """Print rspamd's medians and the ratios; return its median msgs/s."""
    print("rspamd (HTTP /checkv2 via score_peers.py, same sample, same sitting):")
    print(
        "conc  msgs/s  p50 ms  p99 ms  CPU ms/msg  errors  PSS peak MiB"
        "  phishgate/rspamd"
    )
    by_level: dict[int, list[PeerPhase]] = {}
    peer_rates: dict[int, float] = {}
    for run in peer_runs:
        for phase in run:
            by_level.setdefault(phase.concurrency, []).append(phase)
    for level, phases in sorted(by_level.items()):
        rate = median([ph.msgs_per_s for ph in phases])
        ratio = rates.get(level, float("nan")) / rate if rate else float("nan")
        print(
            f"{level:>4}  {rate:6.1f}  {median([ph.p50_ms for ph in phases]):6.1f}"
            f"  {median([ph.p99_ms for ph in phases]):6.1f}"
            f"  {median([ph.cpu_ms_per_msg for ph in phases]):10.2f}"
            f"  {sum(ph.errors for ph in phases):6d}"
            f"  {max(ph.pss_peak_mib for ph in phases):12.0f}"
            f"  {ratio:16.2f}x"
        )
        peer_rates[level] = rate
    return peer_rates


def report_targets(
    runs: Sequence[Sequence[Phase]],
    rates: Mapping[int, float],
    peer_rates: Mapping[int, float],
) -> None:
    """The targets of issue 3, "Speed", met or not."""
    checks = []
    for level, peer_rate in sorted(peer_rates.items()):
        ours = rates.get(level, 0.0)
        checks.append((f"msgs/s >= rspamd at c={level}", ours >= peer_rate))
    at_8 = [ph for run in runs for ph in run if ph.concurrency == 8]
    if at_8:
        p99 = median([ph.latency_ms(0.99) for ph in at_8])
        checks.append(
            (f"p99 {p99:.1f} ms <= {TARGET_P99_MS:.0f} ms at c=8", p99 <= TARGET_P99_MS)
        )
    errors = sum(sum(ph.errors.values()) for run in runs for ph in run)
    checks.append((f"{errors} errors", errors == 0))
    rss = max(ph.rss_peak_mib for run in runs for ph in run)
    pss = max(ph.pss_peak_mib for run in runs for ph in run)
    checks.append(
        (f"RSS {rss:.0f} MiB <= {TARGET_RSS_MIB:.0f} MiB", rss <= TARGET_RSS_MIB)
    )
    checks.append(
        (f"PSS {pss:.0f} MiB <= {TARGET_RSS_MIB:.0f} MiB", pss <= TARGET_RSS_MIB)
    )
    print(
        "targets: "
        + "; ".join(f"{what}: {'yes' if ok else 'NO'}" for what, ok in checks)
    )


# -- Command line ----------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("corpora", nargs="?", default="../shared/corpora")
    ap.add_argument("--per-file", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--concurrency", default="1,8,32", help="comma list")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=20, help="messages, not timed")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per reply")
    ap.add_argument("--peers", action="store_true", help="rspamd in the same sitting")
    ap.add_argument(
        "--workers", default="1", help="comma list of [daemon] workers values"
    )
    ap.add_argument("--peers-dir", default="../shared/peers")
    ap.add_argument(
        "--quarantine",
        choices=("hold", "store"),
        default="hold",
        help="[policy] quarantine: Postfix's hold queue, or the store as the "
        "proxy uses it (for a like-for-like comparison with bench_proxy.py)",
    )
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    sample = load_sample(Path(args.corpora), args.per_file, args.seed)
    messages = [make_transcript(raw) for raw in sample]
    del sample
    size = sum(m.size for m in messages) / ONE_MIB
    print(
        f"phishgate serve over milter (loopback TCP): {len(messages)} messages "
        f"({size:.1f} MiB), {args.runs} runs, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rspamd = Rspamd(Path(args.peers_dir), args) if args.peers else None
    skip = rspamd.prepare() if rspamd is not None else None
    if skip is not None:
        print(f"peers skipped: {skip}")
        rspamd = None
    settings = args.workers.split(",")
    runs: dict[str, list[list[Phase]]] = {w: [] for w in settings}
    peer_runs: list[list[PeerPhase]] = []
    problems: list[str] = []
    try:
        for number in range(1, args.runs + 1):
            # Alternate the order, so a drift in the machine's load during
            # the sitting does not always favour the same setting.
            order = settings if number % 2 else settings[::-1]
            for workers in order:
                print(
                    f"run {number}/{args.runs}, workers={workers}",
                    file=sys.stderr,
                    flush=True,
                )
                phases, complaints = bench_phishgate(
                    messages, concurrencies, args, workers
                )
                runs[workers].append(phases)
                problems += complaints
            if rspamd is not None:
                peer_runs.append(bench_rspamd(rspamd))
    finally:
        if rspamd is not None:
            rspamd.stop_if_started()
    rates = {}
    for workers in settings:
        print(f"[daemon] workers = {workers}:")
        rates[workers] = report_phishgate(runs[workers])
    report_scaling(settings, rates)
    last = settings[-1]
    report_details(runs[last], problems)
    peer_rates = report_peers(peer_runs, rates[last]) if peer_runs else {}
    report_targets(runs[last], rates[last], peer_rates)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
